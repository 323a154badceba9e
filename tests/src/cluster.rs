//! Multi-member clusters of one server kind, each member a [`Server`] on its own loopback
//! address with etcd's standard ports, bootstrapped from flags (`--initial-cluster`,
//! `--initial-cluster-state=new`, `--initial-cluster-token`).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_store::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_store::proto::etcdserverpb::{StatusRequest, StatusResponse};

use crate::ledger::channel;
use crate::server::{LoopbackIp, PEER_PORT, Server, ServerBuilder, ServerKind};

/// A running cluster. Members are named `m0`, `m1`, ... in start order; dropping the cluster
/// kills every member.
pub struct Cluster {
    /// The members, in start order.
    pub members: Vec<Server>,
    /// `--initial-cluster-token` (unique per cluster, so clusters of concurrent tests never mix).
    pub token: String,
    /// With [`Cluster::start_partitionable`]: the directory of the members' peer fault files
    /// (`CONCORD_PEER_FAULTS`, concord only).
    faults: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts a cluster of `size` members of `kind` and waits until every member is healthy.
    pub fn start(kind: ServerKind, size: usize) -> Result<Cluster> {
        Cluster::start_with(kind, size, &[])
    }

    /// Like [`Cluster::start`], with extra flags for every member.
    pub fn start_with(kind: ServerKind, size: usize, extra_args: &[&str]) -> Result<Cluster> {
        Cluster::start_configured(kind, size, false, |_, _, b| Ok(b.args(extra_args)))
    }

    /// Like [`Cluster::start`], with `https` peer URLs when `peer_https`, and each member's
    /// builder passed through `configure(member index, its address, builder)` (e.g. for
    /// per-member certificates).
    pub fn start_configured(
        kind: ServerKind,
        size: usize,
        peer_https: bool,
        configure: impl Fn(usize, Ipv4Addr, ServerBuilder) -> Result<ServerBuilder>,
    ) -> Result<Cluster> {
        Cluster::launch(kind, size, peer_https, None, configure)
    }

    /// A concord cluster whose network can be cut with [`Cluster::partition`]: every member
    /// reads its peer fault file (see `concord_store::fault`).
    pub fn start_partitionable(size: usize) -> Result<Cluster> {
        Cluster::start_partitionable_with(size, &[])
    }

    /// Like [`Cluster::start_partitionable`], with extra flags for every member.
    pub fn start_partitionable_with(size: usize, extra_args: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("concord-test-faults-")
            .tempdir()?;
        Cluster::launch(ServerKind::Concord, size, false, Some(dir), |_, _, b| {
            Ok(b.args(extra_args))
        })
    }

    fn fault_file(dir: &Path, member: usize) -> PathBuf {
        dir.join(format!("m{member}"))
    }

    /// Cuts the network between the groups of members: each member stops talking to every
    /// member outside its group. Members in no group keep talking to everyone.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<()> {
        let dir = self
            .faults
            .as_ref()
            .context("not started with Cluster::start_partitionable")?;
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != g)
                .flat_map(|(_, other)| other.iter().map(|&m| self.members[m].peer_url()))
                .collect();
            for &m in *group {
                std::fs::write(Cluster::fault_file(dir.path(), m), others.join("\n"))?;
            }
        }
        Ok(())
    }

    /// Undoes [`Cluster::partition`].
    pub fn heal(&self) -> Result<()> {
        let dir = self.faults.as_ref().context("not partitionable")?;
        for m in 0..self.members.len() {
            std::fs::write(Cluster::fault_file(dir.path(), m), "")?;
        }
        Ok(())
    }

    fn launch(
        kind: ServerKind,
        size: usize,
        peer_https: bool,
        faults: Option<tempfile::TempDir>,
        configure: impl Fn(usize, Ipv4Addr, ServerBuilder) -> Result<ServerBuilder>,
    ) -> Result<Cluster> {
        let ips = (0..size)
            .map(|_| LoopbackIp::claim())
            .collect::<Result<Vec<_>>>()?;
        let scheme = if peer_https { "https" } else { "http" };
        let initial_cluster = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}={scheme}://{}:{PEER_PORT}", ip.ip()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("concord-test-{:016x}", crate::random_u64());
        let mut members = Vec::with_capacity(size);
        for (i, ip) in ips.into_iter().enumerate() {
            let mut builder = Server::builder(kind);
            if let Some(dir) = &faults {
                builder = builder.env(
                    concord_store::fault::ENV,
                    Cluster::fault_file(dir.path(), i),
                );
            }
            if peer_https {
                builder = builder.peer_https();
            }
            let addr = ip.ip();
            let builder = builder
                .name(format!("m{i}"))
                .ip(ip)
                .initial_cluster(initial_cluster.clone())
                .arg("--initial-cluster-state=new")
                .arg(format!("--initial-cluster-token={token}"))
                .no_wait();
            let server = configure(i, addr, builder)?
                .start()
                .with_context(|| format!("starting member m{i}"))?;
            members.push(server);
        }
        for m in &mut members {
            let name = m.name().to_owned();
            m.wait_ready()
                .with_context(|| format!("member {name} did not become healthy"))?;
        }
        Ok(Cluster {
            members,
            token,
            faults,
        })
    }

    /// Client endpoints of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Server::endpoint).collect()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The index of the member that every member in `among` names as leader, once they agree
    /// (waits up to 30 s).
    pub async fn agreed_leader(&self, among: &[usize]) -> Result<usize> {
        let endpoints = self.endpoints();
        wait_for(
            "one leader all members agree on",
            Duration::from_secs(30),
            || {
                let endpoints = endpoints.clone();
                async move {
                    let mut leaders = HashSet::new();
                    let mut ids = HashMap::new();
                    for &i in among {
                        let st = status(&endpoints[i]).await?;
                        leaders.insert(st.leader);
                        ids.insert(st.header.context("status without header")?.member_id, i);
                    }
                    if leaders.len() != 1 {
                        return Ok(None);
                    }
                    let leader = leaders.into_iter().next().unwrap_or(0);
                    Ok(ids.get(&leader).copied())
                }
            },
        )
        .await
    }
}

/// `Maintenance.Status` of the member at `endpoint`.
pub async fn status(endpoint: &str) -> Result<StatusResponse> {
    Ok(MaintenanceClient::new(channel(endpoint)?)
        .status(StatusRequest {})
        .await
        .with_context(|| format!("status of {endpoint}"))?
        .into_inner())
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`; the error names
/// `what` and the last failure.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
