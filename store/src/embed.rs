//! Assembles a member from a [`Config`]: opens the data dir, derives ids and the initial
//! membership, starts raft and the server, serves the peer listeners, publishes the member
//! through raft and then serves every client listener until shutdown.
//!
//! `main` stays thin: it parses flags, sets up logging and calls [`start`] and [`serve_all`].
//! Tests call [`start`] and [`serve`] with listeners they bound themselves (port 0).
//!
//! TLS: [`tls`] builds both sides' TLS from the flags (making auto-TLS certificates under
//! `<data-dir>/fixtures/`), [`bind_client_listeners`] and [`bind_peer_listeners`] attach it to
//! every `https` listener (refusing `https` without certificates, with etcd's messages), and
//! [`start_with`] hands the peer side to the transport for `https` peer URLs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::backend::{Backend, META, META_CLUSTER_ID, META_MEMBER_ID};
use crate::compactor::Policy;
use crate::config::{AutoCompactionMode, AutoCompactionRetention, ClusterState, Config};
use crate::error::{Error, Result};
use crate::ids::{cluster_id, member_id, url_string};
use crate::membership;
use crate::raft::RaftConfig;
use crate::server::{EtcdServer, ServerConfig};
use crate::tls::{Side, Tls};

/// Both sides' TLS, from the flags; `None` where a side has no certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsSetup {
    /// For `https` client listeners.
    pub client: Option<Tls>,
    /// For `https` peer listeners and connections to `https` peer URLs.
    pub peer: Option<Tls>,
}

/// A bound listener and, for an `https` URL, its TLS.
#[derive(Debug)]
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Tls>,
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }
}

/// Builds both sides' TLS as etcd's `configurePeerListeners`/`configureClientListeners` do:
/// `--auto-tls`/`--peer-auto-tls` make (or reuse) a self-signed certificate for the listen
/// URLs' hosts under `<data-dir>/fixtures/{client,peer}` when no certificate is given.
pub fn tls(cfg: &Config) -> Result<TlsSetup> {
    let hosts = |urls: &[url::Url]| -> Vec<String> {
        urls.iter()
            .map(|u| match (u.host_str(), u.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => String::new(),
            })
            .collect()
    };
    let fixtures = cfg.data_dir.join("fixtures");
    let peer = Tls::from_config(
        &cfg.peer_tls,
        Side::Peer,
        &fixtures.join("peer"),
        &hosts(&cfg.listen_peer_urls),
    )
    .map_err(|e| Error::DataDir(format!("failed to set up peer TLS: {e}")))?;
    let client = Tls::from_config(
        &cfg.client_tls,
        Side::Client,
        &fixtures.join("client"),
        &hosts(&cfg.listen_client_urls),
    )
    .map_err(|e| Error::DataDir(format!("failed to set up client TLS: {e}")))?;
    Ok(TlsSetup { client, peer })
}

/// Member and cluster ids and the voters: read from the data dir, or derived from the flags on
/// first start, when the initial members are written to the data dir in the same transaction.
/// `snapshot restore` calls it too, so a restored data dir gets the identity a first start
/// with the same flags would give.
pub fn identity(cfg: &Config, backend: &Backend) -> Result<(u64, u64, Vec<u64>)> {
    identity_with(cfg, backend, None)
}

/// [`identity`], joining an existing cluster over `peer_tls` for `https` peer URLs.
pub fn identity_with(
    cfg: &Config,
    backend: &Backend,
    peer_tls: Option<&Tls>,
) -> Result<(u64, u64, Vec<u64>)> {
    let own_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(url_string)
        .collect();
    // Once the data dir holds a member, the bootstrap flags are ignored, as etcd does.
    let stored_member = backend.read_meta(META_MEMBER_ID)?;
    if stored_member != 0 {
        let mut members = membership::list(backend)?;
        if members.is_empty() {
            // Written before the members table existed: always a one-member cluster.
            members = vec![crate::proto::etcdserverpb::Member {
                id: stored_member,
                name: cfg.name.clone(),
                peer_ur_ls: own_urls,
                client_ur_ls: vec![],
                is_learner: false,
            }];
            let wtx = backend.db().begin_write()?;
            membership::write(&wtx, &members)?;
            wtx.commit()?;
        }
        let voters = membership::voters(&members);
        return Ok((stored_member, backend.read_meta(META_CLUSTER_ID)?, voters));
    }
    let own = member_id(&own_urls, &cfg.initial_cluster_token, None);
    if cfg.initial_cluster_state == ClusterState::Existing {
        return join(cfg, backend, own_urls, peer_tls);
    }
    let members = membership::initial_members(&cfg.initial_cluster, &cfg.initial_cluster_token);
    membership::check_local_member(&members, own, &cfg.name, &own_urls, &cfg.initial_cluster)?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cid = cluster_id(&ids);
    let wtx = backend.db().begin_write()?;
    {
        let mut meta = wtx.open_table(META)?;
        meta.insert(META_MEMBER_ID, own)?;
        meta.insert(META_CLUSTER_ID, cid)?;
    }
    membership::write(&wtx, &members)?;
    wtx.commit()?;
    Ok((own, cid, ids))
}

/// Joins a running cluster (`--initial-cluster-state=existing`): asks the other members in
/// `--initial-cluster` for the cluster id and members, finds this member (added by MemberAdd)
/// by its peer URLs and writes both to the data dir. No initial voters: the new member learns
/// the configuration from the leader's log, whose first entries are the bootstrap conf changes.
fn join(
    cfg: &Config,
    backend: &Backend,
    mut own_urls: Vec<String>,
    peer_tls: Option<&Tls>,
) -> Result<(u64, u64, Vec<u64>)> {
    let others: Vec<String> = cfg
        .initial_cluster
        .iter()
        .map(|(_, u)| url_string(u))
        .filter(|u| !own_urls.contains(u))
        .collect();
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Raft("a member must be started inside a tokio runtime".into()))?;
    let fetched = tokio::task::block_in_place(|| {
        rt.block_on(crate::transport::fetch_members(&others, peer_tls))
    });
    let (cid, members) = fetched?;
    own_urls.sort();
    let Some(own) = members.iter().find(|m| {
        let mut urls = m.peer_ur_ls.clone();
        urls.sort();
        urls == own_urls
    }) else {
        return Err(Error::DataDir(format!(
            "this member ({}) is not a member of the cluster it tries to join; add it first \
             with `etcdctl member add {} --peer-urls={}`, then start it with \
             --initial-cluster-state=existing",
            own_urls.join(","),
            cfg.name,
            own_urls.join(",")
        )));
    };
    let own = own.id;
    let wtx = backend.db().begin_write()?;
    {
        let mut meta = wtx.open_table(META)?;
        meta.insert(META_MEMBER_ID, own)?;
        meta.insert(META_CLUSTER_ID, cid)?;
    }
    membership::write(&wtx, &members)?;
    wtx.commit()?;
    tracing::info!(
        local_member_id = format!("{own:x}"),
        cluster_id = format!("{cid:x}"),
        "joining an existing cluster"
    );
    Ok((own, cid, vec![]))
}

/// Derives the server's settings from the flags.
pub fn server_config(
    cfg: &Config,
    member_id: u64,
    cluster_id: u64,
    voters: Vec<u64>,
) -> ServerConfig {
    ServerConfig {
        name: cfg.name.clone(),
        member_id,
        cluster_id,
        peer_urls: cfg
            .initial_advertise_peer_urls
            .iter()
            .map(url_string)
            .collect(),
        client_urls: cfg.advertise_client_urls.iter().map(url_string).collect(),
        max_request_bytes: cfg.max_request_bytes,
        max_txn_ops: cfg.max_txn_ops,
        quota_backend_bytes: cfg.quota_backend_bytes,
        // etcd: 5s plus the time an election may take.
        request_timeout: Duration::from_secs(5) + 2 * cfg.election_timeout,
        cors: cfg.cors.clone(),
        host_whitelist: cfg.host_whitelist.clone(),
        auto_compaction: compaction_policy(cfg),
        strict_reconfig_check: cfg.strict_reconfig_check,
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
        lease_checkpoint: cfg.lease_checkpoint,
        lease_checkpoint_persist: cfg.lease_checkpoint_persist,
        lease_checkpoint_interval: cfg.lease_checkpoint_interval,
        auth: crate::auth::AuthConfig::from_config(cfg),
        peer_tls: None,
        raft: RaftConfig {
            id: member_id,
            initial_voters: voters,
            heartbeat: cfg.heartbeat_interval,
            election_timeout: cfg.election_timeout,
            snapshot_count: cfg.snapshot_count,
            catch_up_entries: match cfg.snapshot_catchup_entries {
                0 => {
                    tracing::warn!(
                        given_snapshot_catchup_entries = 0,
                        updated_snapshot_catchup_entries = crate::raft::DEFAULT_CATCH_UP_ENTRIES,
                        "updated snapshot catch-up entries"
                    );
                    crate::raft::DEFAULT_CATCH_UP_ENTRIES
                }
                n => n,
            },
            state_sync_interval: match cfg.backend_batch_interval {
                Duration::ZERO => crate::raft::DEFAULT_STATE_SYNC_INTERVAL,
                d => d,
            },
            state_sync_entries: match cfg.backend_batch_limit {
                0 => crate::raft::DEFAULT_STATE_SYNC_ENTRIES,
                n => n.max(1) as u64,
            },
        },
    }
}

fn compaction_policy(cfg: &Config) -> Option<Policy> {
    match (cfg.auto_compaction_mode, cfg.auto_compaction_retention) {
        (_, AutoCompactionRetention::Disabled) => None,
        (AutoCompactionMode::Periodic, AutoCompactionRetention::Period(d)) => {
            Some(Policy::Periodic(d))
        }
        (AutoCompactionMode::Revision, AutoCompactionRetention::Revisions(n)) => {
            Some(Policy::Revision(n as i64))
        }
        // The config module pairs mode and retention; a mismatch cannot be parsed.
        _ => None,
    }
}

/// Opens the data dir and starts the member (raft loop included); serves nothing yet.
pub fn start(cfg: &Config) -> Result<Arc<EtcdServer>> {
    start_with(cfg, &tls(cfg)?)
}

/// [`start`] with TLS already built by [`tls`] (its peer side reaches `https` peer URLs).
pub fn start_with(cfg: &Config, tls: &TlsSetup) -> Result<Arc<EtcdServer>> {
    let backend = Arc::new(Backend::open(&cfg.data_dir)?);
    let (member, cluster, voters) = identity_with(cfg, &backend, tls.peer.as_ref())?;
    tracing::info!(
        name = %cfg.name,
        member_id = format!("{member:x}"),
        cluster_id = format!("{cluster:x}"),
        data_dir = %cfg.data_dir.display(),
        "starting member"
    );
    let mut scfg = server_config(cfg, member, cluster, voters);
    scfg.peer_tls = tls.peer.clone();
    EtcdServer::start(scfg, backend)
}

/// Publishes the member through raft (which needs a leader), then serves the client api on
/// every listener until `shutdown`. For a member without peers (tests); see [`serve_all`].
pub async fn serve(
    server: Arc<EtcdServer>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listeners = Listeners {
        client: listeners.into_iter().map(Listener::from).collect(),
        peer: Vec::new(),
        metrics: Vec::new(),
    };
    serve_all(server, listeners, shutdown).await
}

/// Serves the peer listeners (raft needs them to elect a leader) and the metrics listeners
/// (probes ask them from the start) at once, publishes the member through raft, then serves the
/// client api on every client listener until `shutdown`.
pub async fn serve_all(
    server: Arc<EtcdServer>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Listeners {
        client: listeners,
        peer: peer_listeners,
        metrics: metrics_listeners,
    } = listeners;
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    let mut peer_tasks = Vec::new();
    for Listener { tcp: l, tls } in metrics_listeners {
        let addr = l.local_addr().map_err(|e| Error::DataDir(e.to_string()))?;
        let stop = stop_signal(&peer_stop_rx);
        let app = crate::api::http::metrics_router(server.clone());
        peer_tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::api::serve(l, app, tls, stop).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        }));
        tracing::info!(address = %addr, "serving metrics");
    }
    for Listener { tcp: l, tls } in peer_listeners {
        let addr = l.local_addr().map_err(|e| Error::DataDir(e.to_string()))?;
        let stop = stop_signal(&peer_stop_rx);
        let service = server.peer_service();
        peer_tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::transport::serve_peers(l, service, tls, stop).await {
                tracing::error!(error = %e, "peer listener failed");
            }
        }));
        tracing::info!(address = %addr, "serving peer traffic");
    }
    let stop_peers = || {
        let _ = peer_stop_tx.send(true);
    };
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        r = server.publish() => {
            if let Err(e) = r {
                stop_peers();
                return Err(e);
            }
        }
        _ = &mut shutdown => {
            stop_peers();
            return Ok(());
        }
    }
    tracing::info!(cluster_version = "3.5", "enabled capabilities for version");
    let compactor = server.config().auto_compaction.map(|policy| {
        tracing::info!(?policy, "auto compaction enabled");
        tokio::spawn(crate::compactor::run(server.clone(), policy))
    });
    let lessor = tokio::spawn(server.clone().run_lessor());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for Listener { tcp: l, tls } in listeners {
        let addr = l.local_addr().map_err(|e| Error::DataDir(e.to_string()))?;
        let stop = stop_signal(&stop_rx);
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            crate::api::serve_client(l, server, tls, stop).await
        }));
        tracing::info!(address = %addr, "ready to serve client requests");
    }
    let raft_failed = tokio::select! {
        _ = shutdown => false,
        _ = server.raft_stopped() => true,
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    stop_peers();
    for t in peer_tasks {
        let _ = t.await;
    }
    if raft_failed && server.raft_status().removed {
        // As etcd: a removed member stops cleanly.
        tracing::warn!("the member has been permanently removed from the cluster; stopped");
        return Ok(());
    }
    if let Some(c) = compactor {
        c.abort();
    }
    lessor.abort();
    if raft_failed {
        return Err(Error::Raft(
            "the raft loop stopped (see the error logged above); restart the member, and check \
             the data dir's disk if it happens again"
                .into(),
        ));
    }
    Ok(())
}

/// Resolves once `rx` turns true: how a listener's task learns to stop.
fn stop_signal(
    rx: &tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Every listener a member serves on.
#[derive(Debug)]
pub struct Listeners {
    /// `--listen-client-urls`: the client api.
    pub client: Vec<Listener>,
    /// `--listen-peer-urls`: the peer service.
    pub peer: Vec<Listener>,
    /// `--listen-metrics-urls`: `/metrics` and the health checks.
    pub metrics: Vec<Listener>,
}

/// Binds the peer, client and metrics listeners, failing on the first that cannot be bound.
pub async fn bind_listeners(cfg: &Config, tls: &TlsSetup) -> Result<Listeners> {
    Ok(Listeners {
        peer: bind_peer_listeners(cfg, tls).await?,
        client: bind_client_listeners(cfg, tls).await?,
        metrics: bind_metrics_listeners(cfg, tls).await?,
    })
}

/// Binds every `--listen-metrics-urls` address; `https` ones serve with the client TLS, as
/// etcd's do.
pub async fn bind_metrics_listeners(cfg: &Config, tls: &TlsSetup) -> Result<Vec<Listener>> {
    let addrs = cfg
        .listen_metrics_addrs()
        .map_err(|e| Error::DataDir(e.to_string()))?;
    let mut schemes = Vec::new();
    for u in &cfg.listen_metrics_urls {
        let secure = u.scheme() == "https";
        if secure && tls.client.is_none() {
            return Err(Error::DataDir(
                "client TLS key/cert (--cert-file, --key-file) must be provided for metrics \
                 secure url"
                    .into(),
            ));
        }
        schemes.push(secure);
    }
    let bound = bind_all(addrs, "metrics").await?;
    Ok(with_tls(bound, &schemes, tls.client.as_ref()))
}

/// Binds every `--listen-peer-urls` address; `https` ones serve with the peer TLS.
pub async fn bind_peer_listeners(cfg: &Config, tls: &TlsSetup) -> Result<Vec<Listener>> {
    let addrs = cfg
        .listen_peer_addrs()
        .map_err(|e| Error::DataDir(e.to_string()))?;
    let mut schemes = Vec::new();
    for u in &cfg.listen_peer_urls {
        let secure = u.scheme() == "https";
        if !secure && tls.peer.is_some() {
            tracing::warn!(peer_url = %u, "scheme is HTTP while key and cert files are present; ignoring key and cert files");
        }
        if !secure && cfg.peer_tls.client_cert_auth {
            tracing::warn!(peer_url = %u, "scheme is HTTP while --peer-client-cert-auth is enabled; ignoring client cert auth for this URL");
        }
        if secure && tls.peer.is_none() {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            return Err(Error::DataDir(format!(
                "cannot listen on TLS for {host}{port}: KeyFile and CertFile are not presented \
                 (give --peer-cert-file and --peer-key-file, or --peer-auto-tls)"
            )));
        }
        schemes.push(secure);
    }
    let bound = bind_all(addrs, "peer").await?;
    Ok(with_tls(bound, &schemes, tls.peer.as_ref()))
}

/// Binds every `--listen-client-urls` address; `https` ones serve with the client TLS.
pub async fn bind_client_listeners(cfg: &Config, tls: &TlsSetup) -> Result<Vec<Listener>> {
    let addrs = cfg
        .listen_client_addrs()
        .map_err(|e| Error::DataDir(e.to_string()))?;
    let mut schemes = Vec::new();
    for u in &cfg.listen_client_urls {
        let secure = u.scheme() == "https";
        if !secure && tls.client.is_some() {
            tracing::warn!(client_url = %u, "scheme is http or unix while key and cert files are present; ignoring key and cert files");
        }
        if !secure && cfg.client_tls.client_cert_auth {
            tracing::warn!(client_url = %u, "scheme is http or unix while --client-cert-auth is enabled; ignoring client cert auth for this URL");
        }
        if secure && tls.client.is_none() {
            return Err(Error::DataDir(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {} \
                 with HTTPS scheme",
                crate::ids::url_string(u)
            )));
        }
        schemes.push(secure);
    }
    let bound = bind_all(addrs, "client").await?;
    Ok(with_tls(bound, &schemes, tls.client.as_ref()))
}

fn with_tls(bound: Vec<TcpListener>, secure: &[bool], tls: Option<&Tls>) -> Vec<Listener> {
    bound
        .into_iter()
        .zip(secure)
        .map(|(tcp, secure)| Listener {
            tcp,
            tls: if *secure { tls.cloned() } else { None },
        })
        .collect()
}

async fn bind_all(addrs: Vec<std::net::SocketAddr>, what: &str) -> Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let l = TcpListener::bind(addr).await.map_err(|e| {
            Error::DataDir(format!(
                "cannot listen on {what} address {addr}: {e}; is another etcd or concord running there?"
            ))
        })?;
        out.push(l);
    }
    Ok(out)
}
