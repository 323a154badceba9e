//! Assembles a member from a [`Config`]: opens the data dir, derives ids, starts raft and the
//! server, and serves every client listener until shutdown.
//!
//! `main` stays thin: it parses flags, sets up logging and calls [`run`]. Tests call
//! [`start`] with listeners they bound themselves (port 0).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::backend::{Backend, META, META_CLUSTER_ID, META_MEMBER_ID};
use crate::compactor::Policy;
use crate::config::{AutoCompactionMode, AutoCompactionRetention, Config};
use crate::error::{Error, Result};
use crate::ids::{cluster_id, member_id, url_string};
use crate::raft::RaftConfig;
use crate::server::{EtcdServer, ServerConfig};

/// Member and cluster ids: read from the data dir, or derived from the flags on first start.
fn identity(cfg: &Config, backend: &Backend) -> Result<(u64, u64, Vec<u64>)> {
    let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, url) in &cfg.initial_cluster {
        by_name
            .entry(name.as_str())
            .or_default()
            .push(url_string(url));
    }
    let ids: Vec<u64> = by_name
        .values()
        .map(|urls| member_id(urls, &cfg.initial_cluster_token, None))
        .collect();
    let own_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(url_string)
        .collect();
    let own = member_id(&own_urls, &cfg.initial_cluster_token, None);
    let stored_member = backend.read_meta(META_MEMBER_ID)?;
    if stored_member != 0 {
        return Ok((
            stored_member,
            backend.read_meta(META_CLUSTER_ID)?,
            vec![stored_member],
        ));
    }
    if !ids.contains(&own) {
        return Err(Error::DataDir(format!(
            "couldn't find local name {:?} in the initial cluster configuration: --initial-cluster \
             must list this member with its --initial-advertise-peer-urls ({})",
            cfg.name,
            own_urls.join(",")
        )));
    }
    let cid = cluster_id(&ids);
    let wtx = backend.db().begin_write()?;
    {
        let mut meta = wtx.open_table(META)?;
        meta.insert(META_MEMBER_ID, own)?;
        meta.insert(META_CLUSTER_ID, cid)?;
    }
    wtx.commit()?;
    Ok((own, cid, ids))
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
        auto_compaction: compaction_policy(cfg),
        raft: RaftConfig {
            id: member_id,
            initial_voters: voters,
            heartbeat: cfg.heartbeat_interval,
            election_timeout: cfg.election_timeout,
            snapshot_count: cfg.snapshot_count,
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
    let backend = Arc::new(Backend::open(&cfg.data_dir)?);
    let (member, cluster, voters) = identity(cfg, &backend)?;
    tracing::info!(
        name = %cfg.name,
        member_id = format!("{member:x}"),
        cluster_id = format!("{cluster:x}"),
        data_dir = %cfg.data_dir.display(),
        "starting member"
    );
    EtcdServer::start(server_config(cfg, member, cluster, voters), backend)
}

/// Waits for a leader, then serves the client api on every listener until `shutdown`.
pub async fn serve(
    server: Arc<EtcdServer>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    while server.raft_status().leader == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(
        local_member_id = format!("{:x}", server.config().member_id),
        "published local member to cluster through raft"
    );
    tracing::info!(cluster_version = "3.5", "enabled capabilities for version");
    let compactor = server.config().auto_compaction.map(|policy| {
        tracing::info!(?policy, "auto compaction enabled");
        tokio::spawn(crate::compactor::run(server.clone(), policy))
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for l in listeners {
        let addr = l.local_addr().map_err(|e| Error::DataDir(e.to_string()))?;
        let mut rx = stop_rx.clone();
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            crate::api::serve_client(l, server, stop).await
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
    if let Some(c) = compactor {
        c.abort();
    }
    if raft_failed {
        return Err(Error::Raft(
            "the raft loop stopped (see the error logged above); restart the member, and check \
             the data dir's disk if it happens again"
                .into(),
        ));
    }
    Ok(())
}

/// Binds every `--listen-client-urls` address.
pub async fn bind_client_listeners(cfg: &Config) -> Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in cfg
        .listen_client_addrs()
        .map_err(|e| Error::DataDir(e.to_string()))?
    {
        let l = TcpListener::bind(addr).await.map_err(|e| {
            Error::DataDir(format!(
                "cannot listen on client address {addr}: {e}; is another etcd or concord running there?"
            ))
        })?;
        out.push(l);
    }
    Ok(out)
}
