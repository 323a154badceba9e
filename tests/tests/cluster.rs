//! Multi-process clusters on loopback: 3- and 5-member clusters bootstrapped from flags, writes
//! through every member, linearizable reads on one member after a write on another, the leader
//! `kill -9`ed (or frozen with SIGSTOP) while clients write, every member `kill -9`ed and
//! restarted, a member cut off
//! from the majority (no leader: `hasleader` requests and proposals fail with etcd's error), and
//! `etcdctl member list` / `endpoint status --cluster` compared with a real etcd 3.5 cluster, and
//! the learner lifecycle driven by etcdctl (`member add --learner`, join with
//! `--initial-cluster-state=existing`, `member promote`, `member remove`) with etcd's refusals,
//! run against concord and against etcd 3.5 with the same assertions. Also against both, with
//! the same normalised etcdctl output: `move-leader` (to a follower, from a follower's endpoint,
//! to an unknown id, to the leader itself, and the RPC on a follower), `member update` (etcd's
//! refusals, then a follower moved to a new peer URL receiving writes only through it), and a
//! removed member restarted on its old data dir being refused by the others and stopping, and
//! a follower whose data dir is wiped being removed, re-added under the same name and catching
//! up by snapshot (`snapshot_catchup.rs` has the other snapshot cases).
//!
//! Every wait is on a condition with a generous deadline; nothing asserts on timing. Every test
//! name contains `cluster`, so nextest runs them one at a time (`.config/nextest.toml`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::cluster_client::ClusterClient;
use concord_store::proto::etcdserverpb::kv_client::KvClient;
use concord_store::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_store::proto::etcdserverpb::{
    MemberListRequest, MoveLeaderRequest, PutRequest, RangeRequest,
};
use concord_tests::cluster::{status, wait_for};
use concord_tests::ledger::{Ledger, channel, verify, writer};
use concord_tests::{Cluster, Etcdctl, Normalizer, ServerKind, line_diff, random_u64};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn put(endpoint: &str, key: &str, value: &str) -> Result<()> {
    KvClient::new(channel(endpoint)?)
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {key} via {endpoint}"))?;
    Ok(())
}

async fn get(endpoint: &str, key: &str, serializable: bool) -> Result<Option<Vec<u8>>> {
    let resp = KvClient::new(channel(endpoint)?)
        .range(RangeRequest {
            key: key.into(),
            serializable,
            ..Default::default()
        })
        .await
        .with_context(|| format!("get {key} via {endpoint}"))?
        .into_inner();
    Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
}

// ------------------------------------------------------------------------------------------
// Bootstrap, writes through every member, linearizable reads across members
// ------------------------------------------------------------------------------------------

fn bootstrap_writes_and_reads(kind: ServerKind, size: usize) -> Result<()> {
    let mut cluster = Cluster::start(kind, size)?;
    let rt = runtime()?;
    let endpoints = cluster.endpoints();
    rt.block_on(async {
        // Every member lists every member, with the client URLs each one published.
        for ep in &endpoints {
            let resp = wait_for(
                "every member's client URLs",
                Duration::from_secs(20),
                || {
                    let ep = ep.clone();
                    async move {
                        let r = ClusterClient::new(channel(&ep)?)
                            .member_list(MemberListRequest {
                                linearizable: false,
                            })
                            .await?
                            .into_inner();
                        Ok(r.members
                            .iter()
                            .all(|m| !m.client_ur_ls.is_empty())
                            .then_some(r))
                    }
                },
            )
            .await?;
            ensure!(resp.members.len() == size, "{ep}: {:?}", resp.members);
            let mut listed: Vec<(String, Vec<String>, Vec<String>, bool)> = resp
                .members
                .iter()
                .map(|m| {
                    (
                        m.name.clone(),
                        m.peer_ur_ls.clone(),
                        m.client_ur_ls.clone(),
                        m.is_learner,
                    )
                })
                .collect();
            listed.sort();
            let expected: Vec<_> = cluster
                .members
                .iter()
                .map(|s| {
                    (
                        s.name().to_owned(),
                        vec![s.peer_url()],
                        vec![s.endpoint()],
                        false,
                    )
                })
                .collect();
            ensure!(
                listed == expected,
                "{ep} lists {listed:?}, expected {expected:?}"
            );
            let ids: Vec<u64> = resp.members.iter().map(|m| m.id).collect();
            ensure!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "not sorted by id: {ids:x?}"
            );
        }
        // One cluster id, one leader.
        let leader = cluster
            .agreed_leader(&(0..size).collect::<Vec<_>>())
            .await?;
        let mut cluster_ids = HashSet::new();
        for ep in &endpoints {
            let st = status(ep).await?;
            cluster_ids.insert(st.header.map(|h| h.cluster_id).unwrap_or(0));
            ensure!(!st.is_learner && st.raft_term >= 2, "{ep}: {st:?}");
        }
        ensure!(
            cluster_ids.len() == 1,
            "cluster ids differ: {cluster_ids:x?}"
        );
        eprintln!("leader is m{leader}");

        // A write through each member is visible at once to a linearizable read on every member.
        let nonce = random_u64();
        for (i, w) in endpoints.iter().enumerate() {
            let key = format!("via/m{i}");
            let value = format!("v{i}-{nonce:x}");
            put(w, &key, &value).await?;
            for r in &endpoints {
                let got = get(r, &key, false).await?;
                ensure!(
                    got.as_deref() == Some(value.as_bytes()),
                    "linearizable read on {r} after a put via {w}: {got:?}"
                );
            }
        }
        // Serializable reads are local, and catch up.
        for r in &endpoints {
            let key = format!("via/m{}", size - 1);
            let want = format!("v{}-{nonce:x}", size - 1);
            wait_for(
                "a serializable read to catch up",
                Duration::from_secs(10),
                || {
                    let (r, key, want) = (r.clone(), key.clone(), want.clone());
                    async move {
                        Ok(
                            (get(&r, &key, true).await?.as_deref() == Some(want.as_bytes()))
                                .then_some(()),
                        )
                    }
                },
            )
            .await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if kind == ServerKind::Concord {
        no_leader_on_a_lone_member(&mut cluster, &rt)?;
    }
    Ok(())
}

/// Kills every member but the first: once it knows no leader, require-leader requests and
/// proposals fail with Unavailable `etcdserver: no leader`; serializable reads still work.
fn no_leader_on_a_lone_member(cluster: &mut Cluster, rt: &tokio::runtime::Runtime) -> Result<()> {
    for m in &mut cluster.members[1..] {
        m.kill9()?;
    }
    let ep = cluster.members[0].endpoint();
    rt.block_on(async {
        wait_for(
            "the lone member to lose its leader",
            Duration::from_secs(30),
            || {
                let ep = ep.clone();
                async move { Ok((status(&ep).await?.leader == 0).then_some(())) }
            },
        )
        .await?;
        // Require-leader: refused at once.
        let mut req = tonic::Request::new(RangeRequest {
            key: b"via/m0".to_vec(),
            serializable: true,
            ..Default::default()
        });
        req.metadata_mut().insert("hasleader", "true".parse()?);
        let err = KvClient::new(channel(&ep)?)
            .range(req)
            .await
            .err()
            .context("a require-leader read succeeded without a leader")?;
        ensure!(
            err.code() == tonic::Code::Unavailable && err.message() == "etcdserver: no leader",
            "require-leader: {err:?}"
        );
        // Without the metadata a serializable read is served locally.
        ensure!(get(&ep, "via/m0", true).await?.is_some());
        // A proposal waits a little for a leader, then fails with etcd's error.
        let err = KvClient::new(channel(&ep)?)
            .put(PutRequest {
                key: b"no/leader".to_vec(),
                value: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .err()
            .context("a put succeeded without a leader")?;
        ensure!(
            err.code() == tonic::Code::Unavailable && err.message() == "etcdserver: no leader",
            "put without a leader: {err:?}"
        );
        Ok(())
    })
}

#[test]
fn cluster3_bootstrap_writes_and_linearizable_reads_concord() -> Result<()> {
    bootstrap_writes_and_reads(ServerKind::Concord, 3)
}

#[test]
fn cluster5_bootstrap_writes_and_linearizable_reads_concord() -> Result<()> {
    bootstrap_writes_and_reads(ServerKind::Concord, 5)
}

#[test]
fn cluster3_bootstrap_writes_and_linearizable_reads_etcd35() -> Result<()> {
    bootstrap_writes_and_reads(ServerKind::Etcd35, 3)
}

// ------------------------------------------------------------------------------------------
// Writers and the ledger of acknowledged writes
// ------------------------------------------------------------------------------------------

const PREFIX: &str = "cluster/";
const WRITERS: usize = 6;
const MAX_PUTS_PER_WRITER: u64 = 2_000;

/// Every put a writer attempted, and the ones a member acknowledged.
struct Writers {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts writers spread over `endpoints`; a writer whose member fails moves to the next.
    fn start(rt: &tokio::runtime::Runtime, endpoints: &[String]) -> Writers {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..WRITERS)
            .map(|id| {
                rt.spawn(writer(
                    id,
                    PREFIX,
                    endpoints.to_vec(),
                    MAX_PUTS_PER_WRITER,
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Writers {
            ledger,
            stop,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    /// Waits until at least `n` writes are acknowledged.
    fn wait_acked(&self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while self.acked() < n {
            ensure!(
                start.elapsed() < timeout,
                "only {} of {n} writes acknowledged after {timeout:?}",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> Result<Arc<Mutex<Ledger>>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            rt.block_on(t)?;
        }
        Ok(self.ledger)
    }
}

// ------------------------------------------------------------------------------------------
// Failures
// ------------------------------------------------------------------------------------------

#[test]
fn cluster3_leader_kill9_while_writing_elects_a_new_leader_concord() -> Result<()> {
    let mut cluster = Cluster::start(ServerKind::Concord, 3)?;
    let rt = runtime()?;
    let all: Vec<usize> = (0..cluster.len()).collect();
    let old = rt.block_on(cluster.agreed_leader(&all))?;
    let old_id = rt
        .block_on(status(&cluster.members[old].endpoint()))?
        .header
        .map(|h| h.member_id)
        .unwrap_or(0);
    let writers = Writers::start(&rt, &cluster.endpoints());
    writers.wait_acked(200, Duration::from_secs(60))?;

    cluster.members[old].kill9()?;
    let at_kill = writers.acked();
    eprintln!("killed leader m{old} after {at_kill} acknowledged writes");
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let new = rt.block_on(cluster.agreed_leader(&survivors))?;
    let new_id = rt
        .block_on(status(&cluster.members[new].endpoint()))?
        .header
        .map(|h| h.member_id)
        .unwrap_or(0);
    ensure!(new_id != old_id, "the killed member is still the leader");
    eprintln!("m{new} leads now");
    // Writes resume under the new leader.
    writers.wait_acked(writers.acked() + 200, Duration::from_secs(60))?;

    // The old leader comes back as a follower and catches up.
    cluster.members[old].restart_no_wait()?;
    cluster.members[old].wait_ready()?;
    writers.wait_acked(writers.acked() + 100, Duration::from_secs(60))?;
    let ledger = writers.finish(&rt)?;
    for ep in cluster.endpoints() {
        let n = rt.block_on(verify(&ep, PREFIX, &ledger))?;
        eprintln!("{ep}: all {n} acknowledged writes present");
    }
    Ok(())
}

#[test]
fn cluster3_paused_leader_is_replaced_and_catches_up_concord() -> Result<()> {
    let cluster = Cluster::start(ServerKind::Concord, 3)?;
    let rt = runtime()?;
    let all: Vec<usize> = (0..cluster.len()).collect();
    let old = rt.block_on(cluster.agreed_leader(&all))?;
    let writers = Writers::start(&rt, &cluster.endpoints());
    writers.wait_acked(100, Duration::from_secs(60))?;

    // A frozen leader is, to the others, a partitioned one.
    cluster.members[old].pause()?;
    eprintln!(
        "paused leader m{old} after {} acknowledged writes",
        writers.acked()
    );
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let new = rt.block_on(cluster.agreed_leader(&survivors))?;
    ensure!(new != old, "the paused member still leads");
    writers.wait_acked(writers.acked() + 200, Duration::from_secs(60))?;

    // Back, it follows the new leader and catches up.
    cluster.members[old].resume()?;
    let leader = rt.block_on(cluster.agreed_leader(&all))?;
    ensure!(leader != old, "the resumed member took over again at once");
    writers.wait_acked(writers.acked() + 100, Duration::from_secs(60))?;
    let ledger = writers.finish(&rt)?;
    for ep in cluster.endpoints() {
        let n = rt.block_on(verify(&ep, PREFIX, &ledger))?;
        eprintln!("{ep}: all {n} acknowledged writes present");
    }
    Ok(())
}

#[test]
fn cluster3_kill9_every_member_and_restart_loses_nothing_concord() -> Result<()> {
    let mut cluster = Cluster::start(ServerKind::Concord, 3)?;
    let rt = runtime()?;
    let writers = Writers::start(&rt, &cluster.endpoints());
    for round in 0..2 {
        writers.wait_acked(writers.acked() + 200, Duration::from_secs(60))?;
        for m in &mut cluster.members {
            m.kill9()?;
        }
        let acked = writers.acked();
        eprintln!("round {round}: killed every member after {acked} acknowledged writes");
        for m in &mut cluster.members {
            m.restart_no_wait()?;
        }
        for m in &mut cluster.members {
            m.wait_ready()
                .with_context(|| format!("restarting {} in round {round}", m.name()))?;
        }
        for ep in cluster.endpoints() {
            let n = rt.block_on(verify(&ep, PREFIX, &writers.ledger))?;
            ensure!(n >= acked, "{ep}: {n} < {acked}");
        }
    }
    writers.wait_acked(writers.acked() + 100, Duration::from_secs(60))?;
    let ledger = writers.finish(&rt)?;
    for ep in cluster.endpoints() {
        let n = rt.block_on(verify(&ep, PREFIX, &ledger))?;
        eprintln!("{ep}: all {n} acknowledged writes present");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// etcdctl against a 3-member concord cluster and a 3-member etcd 3.5 cluster
// ------------------------------------------------------------------------------------------

/// (command, columns blanked in table/fields output, `-w simple` headers and blanked columns).
struct CtlCase {
    args: &'static [&'static str],
    simple: Option<(&'static [&'static str], &'static [&'static str])>,
}

const MEMBER_COLUMNS: &[&str] = &[
    "ID",
    "STATUS",
    "NAME",
    "PEER ADDRS",
    "CLIENT ADDRS",
    "IS LEARNER",
];
const STATUS_COLUMNS: &[&str] = &[
    "ENDPOINT",
    "ID",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "IS LEARNER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "ERRORS",
];
/// Inherent to a run: ids (derived from addresses), sizes, raft positions, which member leads,
/// and the term (how many election rounds bootstrapping took).
const BLANKED: &[&str] = &[
    "ID",
    "DB SIZE",
    "IS LEADER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
];

fn ctl_cases() -> Vec<CtlCase> {
    vec![
        CtlCase {
            args: &["member", "list"],
            simple: Some((MEMBER_COLUMNS, &["ID"])),
        },
        CtlCase {
            args: &["member", "list", "-w", "table"],
            simple: None,
        },
        CtlCase {
            args: &["endpoint", "status", "--cluster"],
            simple: Some((STATUS_COLUMNS, BLANKED)),
        },
        CtlCase {
            args: &["endpoint", "status", "--cluster", "-w", "table"],
            simple: None,
        },
        CtlCase {
            args: &["endpoint", "health", "--cluster", "-w", "table"],
            simple: None,
        },
        CtlCase {
            args: &["endpoint", "health", "--cluster"],
            simple: None,
        },
    ]
}

/// Runs every case against `cluster` (through its first member), normalised: each member's
/// address replaced by its name, inherent columns blanked, rows sorted (etcd lists members by
/// id, and ids derive from the addresses).
fn ctl_outputs(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    let mut n = Normalizer::new()
        .blank(BLANKED)
        .blank(&["took", "TOOK"])
        .blank_after("took = ");
    for m in &cluster.members {
        n = n.replace(
            format!("http://{}:", m.ip()),
            format!("http://<{}>:", m.name()),
        );
    }
    let ep = cluster.members[0].endpoint();
    // Both columns of `endpoint status` may differ, so count leaders separately.
    let leaders = Etcdctl::V35.run(&ep, ["endpoint", "status", "--cluster"], None)?;
    let lines = leaders.stdout_text();
    let count = lines
        .lines()
        .filter(|l| l.split(", ").nth(4) == Some("true"))
        .count();
    ensure!(count == 1, "leaders in endpoint status: {lines}");
    let mut out = Vec::new();
    for case in ctl_cases() {
        let mut n = n.clone();
        if let Some((headers, blank)) = case.simple {
            n = n.blank_simple_columns(headers, blank);
        }
        let o = Etcdctl::V35.run(&ep, case.args, None)?;
        let mut lines: Vec<String> = n
            .apply(&o.stdout_text())
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        out.push((
            format!("etcdctl {}", case.args.join(" ")),
            format!(
                "exit {:?}\n{}\nstderr: {}",
                o.code,
                lines.join("\n"),
                n.apply(&o.stderr_text())
            ),
        ));
    }
    Ok(out)
}

#[test]
fn cluster3_etcdctl_member_list_and_endpoint_status_match_etcd35() -> Result<()> {
    let expected = {
        let etcd = Cluster::start(ServerKind::Etcd35, 3)?;
        ctl_outputs(&etcd)?
    };
    let concord = Cluster::start(ServerKind::Concord, 3)?;
    let actual = ctl_outputs(&concord)?;
    let mut diffs = Vec::new();
    for ((cmd, e), (_, a)) in expected.iter().zip(&actual) {
        if e != a {
            diffs.push(format!("{cmd}:\n{}", line_diff(e, a)));
        }
    }
    ensure!(
        diffs.is_empty(),
        "concord differs from etcd 3.5 (- etcd, + concord):\n{}",
        diffs.join("\n")
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Membership changes driven by etcdctl: learner lifecycle, etcd's refusals
// ------------------------------------------------------------------------------------------

/// Runs etcdctl 3.5 against `endpoint`; returns (success, stdout, stderr).
fn ctl(endpoint: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let o = Etcdctl::V35.run(endpoint, args, None)?;
    Ok((o.success(), o.stdout_text(), o.stderr_text()))
}

/// etcdctl must fail with `message` (etcd's error text) on stderr.
fn ctl_fails(endpoint: &str, args: &[&str], message: &str) -> Result<()> {
    let (ok, out, err) = ctl(endpoint, args)?;
    ensure!(
        !ok && err.contains(&format!("Error: {message}")),
        "etcdctl {} should fail with {message:?}; stdout {out:?}, stderr {err:?}",
        args.join(" ")
    );
    Ok(())
}

/// Runs a membership change, retrying while etcd's strict reconfiguration check answers
/// `unhealthy cluster` (members must have been connected for 5 s).
fn ctl_reconfig(endpoint: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let start = Instant::now();
    loop {
        let r = ctl(endpoint, args)?;
        if r.0 || !r.2.contains("etcdserver: unhealthy cluster") {
            return Ok(r);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "still unhealthy: etcdctl {}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The value of `KEY="value"` in etcdctl's `member add` output.
fn env_line(out: &str, key: &str) -> Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=\"")))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .with_context(|| format!("no {key} in {out:?}"))
}

fn learner_lifecycle(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    let ep = cluster.members[0].endpoint();
    let ip = concord_tests::LoopbackIp::claim()?;
    let peer = format!("http://{}:{}", ip.ip(), concord_tests::PEER_PORT);

    // Add a learner; etcdctl prints the new member's environment.
    let (ok, out, err) = ctl_reconfig(
        &ep,
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={peer}"),
        ],
    )?;
    ensure!(ok, "member add --learner: {out} {err}");
    let first = out.lines().next().unwrap_or_default();
    ensure!(
        first.starts_with("Member ") && first.contains(" added to cluster "),
        "member add: {out}"
    );
    let id = first
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let initial_cluster = env_line(&out, "ETCD_INITIAL_CLUSTER")?;
    ensure!(
        env_line(&out, "ETCD_INITIAL_CLUSTER_STATE")? == "existing",
        "{out}"
    );
    ensure!(
        initial_cluster.contains(&format!("m3={peer}")),
        "{initial_cluster}"
    );

    // etcd's refusals.
    let other = concord_tests::LoopbackIp::claim()?;
    let other_peer = format!("http://{}:{}", other.ip(), concord_tests::PEER_PORT);
    ctl_fails(
        &ep,
        &[
            "member",
            "add",
            "m4",
            "--learner",
            &format!("--peer-urls={other_peer}"),
        ],
        "etcdserver: too many learner members in cluster",
    )?;
    ctl_fails(
        &ep,
        // Another URL too, so the id (from the URLs and the second) differs from the learner's.
        &[
            "member",
            "add",
            "dup",
            &format!("--peer-urls={peer},{other_peer}"),
        ],
        "etcdserver: Peer URLs already exists",
    )?;
    ctl_fails(
        &ep,
        &["member", "promote", &id],
        "etcdserver: can only promote a learner member which is in sync with leader",
    )?;
    ctl_fails(
        &ep,
        &["member", "remove", "1234"],
        "etcdserver: member not found",
    )?;
    let voter = ctl(&ep, &["member", "list"])?
        .1
        .lines()
        .find(|l| l.contains(", m0, "))
        .and_then(|l| l.split(", ").next())
        .map(str::to_owned)
        .context("m0 in member list")?;
    ctl_fails(
        &ep,
        &["member", "promote", &voter],
        "etcdserver: can only promote a learner member",
    )?;

    // Start the learner; it joins, catches up and publishes itself.
    let mut learner = concord_tests::Server::builder(kind)
        .name("m3")
        .ip(ip)
        .initial_cluster(initial_cluster)
        .arg("--initial-cluster-state=existing")
        .arg(format!("--initial-cluster-token={}", cluster.token))
        .no_wait()
        .start()?;
    learner.wait_ready()?;
    let rt = runtime()?;
    let lep = learner.endpoint();
    rt.block_on(wait_for(
        "the learner to publish itself",
        Duration::from_secs(30),
        || {
            let ep = ep.clone();
            async move {
                let (_, out, _) = ctl(&ep, &["member", "list"])?;
                Ok(out
                    .lines()
                    .any(|l| l.contains(", started, m3, ") && l.ends_with(", true"))
                    .then_some(()))
            }
        },
    ))?;
    // A learner serves serializable reads only.
    let (ok, _, err) = ctl(&lep, &["get", "k", "--consistency=s"])?;
    ensure!(ok, "serializable get on the learner: {err}");
    ctl_fails(
        &lep,
        &["get", "k"],
        "etcdserver: rpc not supported for learner",
    )?;
    ctl_fails(
        &lep,
        &["put", "k", "v"],
        "etcdserver: rpc not supported for learner",
    )?;

    // Promote once it has caught up, through a follower: only the leader knows the learner's
    // progress, so the follower forwards the request.
    let leader = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    let via = cluster.members[(leader + 1) % 3].endpoint();
    let promoted = rt.block_on(wait_for(
        "the learner's promotion",
        Duration::from_secs(30),
        || {
            let (ep, id) = (via.clone(), id.clone());
            async move {
                let (ok, out, err) = ctl(&ep, &["member", "promote", &id])?;
                if ok {
                    return Ok(Some(out));
                }
                ensure!(err.contains("in sync with leader"), "promote: {err}");
                Ok(None)
            }
        },
    ))?;
    ensure!(
        // etcdctl pads ids to 16 columns (`%16x`): compare words, not columns.
        promoted
            .split_whitespace()
            .take(3)
            .eq(["Member", &id, "promoted"]),
        "{promoted}"
    );
    let (ok, _, err) = ctl(&lep, &["put", "via-m3", "v"])?;
    ensure!(ok, "put via the promoted member: {err}");
    let (_, out, _) = ctl(&ep, &["get", "via-m3", "--print-value-only"])?;
    ensure!(out == "v\n", "read via m0: {out:?}");

    // Remove it: the removed member stops itself.
    let (ok, out, err) = ctl_reconfig(&ep, &["member", "remove", &id])?;
    ensure!(
        ok && out
            .split_whitespace()
            .take(3)
            .eq(["Member", &id, "removed"]),
        "{out} {err}"
    );
    let start = Instant::now();
    while learner.is_running() {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the removed member keeps running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, out, _) = ctl(&ep, &["member", "list"])?;
    ensure!(out.lines().count() == 3 && !out.contains(", m3, "), "{out}");
    let (ok, _, err) = ctl(&ep, &["put", "after-remove", "v"])?;
    ensure!(ok, "put after remove: {err}");
    cluster.members.push(learner);
    Ok(())
}

#[test]
fn cluster3_learner_add_promote_remove_with_etcdctl_concord() -> Result<()> {
    learner_lifecycle(ServerKind::Concord)
}

#[test]
fn cluster3_learner_add_promote_remove_with_etcdctl_etcd35() -> Result<()> {
    learner_lifecycle(ServerKind::Etcd35)
}

// ------------------------------------------------------------------------------------------
// Leadership transfer: `etcdctl move-leader` and `Maintenance.MoveLeader`
// ------------------------------------------------------------------------------------------

/// Moves leadership with etcdctl and gRPC on a 3-member cluster of `kind`; returns the
/// transcript (exit status, stdout and etcdctl's `Error:` line of each step) with member ids
/// replaced by roles (`<leader>`, `<target>`, `<other>`) and addresses by member names.
fn move_leader(kind: ServerKind) -> Result<Vec<String>> {
    let cluster = Cluster::start(kind, 3)?;
    let rt = runtime()?;
    let endpoints = cluster.endpoints();
    let all = endpoints.join(",");
    let leader = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    let (target, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut ids = Vec::new();
    for ep in &endpoints {
        let st = rt.block_on(status(ep))?;
        ids.push(st.header.context("status without header")?.member_id);
    }
    let hex = |i: usize| format!("{:x}", ids[i]);
    let roles = [
        (leader, "<leader>"),
        (target, "<target>"),
        (other, "<other>"),
    ];
    let norm = |s: &str| {
        let mut s = s.to_owned();
        for (i, role) in roles {
            s = s.replace(&hex(i), role);
            s = s.replace(
                &format!("{}:", cluster.members[i].ip()),
                &format!("{role}:"),
            );
        }
        s
    };
    let mut transcript = Vec::new();
    let step = |transcript: &mut Vec<String>, endpoint: &str, args: &[&str]| -> Result<bool> {
        let (ok, out, err) = ctl(endpoint, args)?;
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("Error:")).collect();
        transcript.push(norm(&format!(
            "etcdctl {}: ok={ok}\n{out}{}",
            args.join(" "),
            errors.join("\n")
        )));
        Ok(ok)
    };

    // To a chosen follower: the leader changes to it.
    ensure!(step(&mut transcript, &all, &["move-leader", &hex(target)])?);
    let now = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    ensure!(now == target, "leader is m{now}, expected m{target}");
    // etcdctl sends it to the leader only; a follower's endpoint alone is refused by etcdctl,
    // and the RPC itself on a follower fails with etcd's error.
    step(
        &mut transcript,
        &endpoints[leader],
        &["move-leader", &hex(other)],
    )?;
    let refused = rt.block_on(async {
        MaintenanceClient::new(channel(&endpoints[leader])?)
            .move_leader(MoveLeaderRequest {
                target_id: ids[other],
            })
            .await
            .err()
            .context("MoveLeader on a follower succeeded")
    })?;
    transcript.push(format!(
        "MoveLeader on a follower: {:?} {}",
        refused.code(),
        refused.message()
    ));
    // Unknown transferee; transfer to the leader itself.
    step(&mut transcript, &all, &["move-leader", "1234"])?;
    // A learner (added, never started) is no transferee either.
    let learner_ip = concord_tests::LoopbackIp::claim()?;
    let learner_peer = format!("http://{}:{}", learner_ip.ip(), concord_tests::PEER_PORT);
    let (ok, out, err) = ctl_reconfig(
        &all,
        &[
            "member",
            "add",
            "learner",
            "--learner",
            &format!("--peer-urls={learner_peer}"),
        ],
    )?;
    ensure!(ok, "member add --learner: {out} {err}");
    let learner = out
        .split_whitespace()
        .nth(1)
        .context("no id in member add's output")?
        .to_owned();
    let (ok, out, err) = ctl(&all, &["move-leader", &learner])?;
    ensure!(
        !ok && err.contains("Error: etcdserver: bad leader transferee"),
        "move-leader to a learner: {out} {err}"
    );
    ensure!(step(&mut transcript, &all, &["move-leader", &hex(target)])?);
    // And back to the first leader.
    ensure!(step(&mut transcript, &all, &["move-leader", &hex(leader)])?);
    let now = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    ensure!(now == leader, "leader is m{now}, expected m{leader}");
    Ok(transcript)
}

#[test]
fn cluster3_move_leader_matches_etcd35() -> Result<()> {
    let expected = move_leader(ServerKind::Etcd35)?;
    let actual = move_leader(ServerKind::Concord)?;
    ensure!(
        expected == actual,
        "concord differs from etcd 3.5 (- etcd, + concord):\n{}",
        line_diff(&expected.join("\n"), &actual.join("\n"))
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// `etcdctl member update`: new peer URLs, used by every member's transport
// ------------------------------------------------------------------------------------------

/// A server process started by hand (a member moved to a new peer URL); killed on drop.
struct Moved(std::process::Child);

impl Drop for Moved {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// On a 3-member cluster of `kind`: etcd's refusals, then a follower's peer URL updated to a
/// new address and the follower restarted there on its data dir; it must receive new writes,
/// which only reach it through the new URL. Returns the normalised etcdctl transcript.
fn member_update(kind: ServerKind) -> Result<Vec<String>> {
    let mut cluster = Cluster::start(kind, 3)?;
    let rt = runtime()?;
    let endpoints = cluster.endpoints();
    let leader = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    let (f, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let ep = endpoints[leader].clone();
    let mut ids = Vec::new();
    let mut cluster_id = 0;
    for e in &endpoints {
        let h = rt
            .block_on(status(e))?
            .header
            .context("status without header")?;
        ids.push(h.member_id);
        cluster_id = h.cluster_id;
    }
    let new_ip = concord_tests::LoopbackIp::claim()?;
    let new_peer = format!("http://{}:{}", new_ip.ip(), concord_tests::PEER_PORT);
    let norm = |s: &str| {
        // etcdctl prints `member update`'s ids with `%16x`, space-padded when an id has fewer
        // than 16 hex digits: the ids are replaced unpadded and runs of spaces collapsed below.
        // (Replacing the padded form would also eat the space before an id in an argument list.)
        let mut s = s
            .replace(&format!("{cluster_id:x}"), "<cluster>")
            .replace(&new_peer, "<new-peer-url>");
        for (i, role) in [(leader, "<leader>"), (f, "<f>"), (other, "<other>")] {
            s = s.replace(&format!("{:x}", ids[i]), role);
            s = s.replace(
                &format!("{}:", cluster.members[i].ip()),
                &format!("{role}:"),
            );
            s = s.replace(
                &format!(", {}, ", cluster.members[i].name()),
                &format!(", {role}, "),
            );
        }
        s.lines()
            .map(|l| {
                l.split(' ')
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut transcript = Vec::new();
    let fid = format!("{:x}", ids[f]);
    let other_peer = cluster.members[other].peer_url();
    for args in [
        vec![
            "member".to_owned(),
            "update".to_owned(),
            "1234".to_owned(),
            format!("--peer-urls={new_peer}"),
        ],
        vec![
            "member".to_owned(),
            "update".to_owned(),
            fid.clone(),
            format!("--peer-urls={other_peer}"),
        ],
        vec![
            "member".to_owned(),
            "update".to_owned(),
            fid.clone(),
            format!("--peer-urls={new_peer}"),
        ],
        vec!["member".to_owned(), "list".to_owned()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = ctl(&ep, &args)?;
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("Error:")).collect();
        let mut out: Vec<String> = norm(&out).lines().map(str::to_owned).collect();
        out.sort();
        transcript.push(format!(
            "etcdctl {}: ok={ok}\n{}\n{}",
            norm(&args.join(" ")),
            out.join("\n"),
            errors.join("\n")
        ));
    }

    // Move the follower: same data dir and client URL, the new peer URL.
    let old_peer = cluster.members[f].peer_url();
    cluster.members[f].kill9()?;
    let args: Vec<String> = cluster.members[f]
        .args()
        .iter()
        .map(|a| a.to_string_lossy().replace(&old_peer, &new_peer))
        .collect();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(cluster.members[f].stderr_path())?;
    let _moved = Moved(
        std::process::Command::new(kind.binary()?)
            .args(&args)
            .env_remove("ETCD_UNSUPPORTED_ARCH")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("restarting the moved member")?,
    );
    let fep = endpoints[f].clone();
    rt.block_on(async {
        put(&ep, "after-update", "v").await?;
        wait_for(
            "the moved member to receive a new write",
            Duration::from_secs(30),
            || {
                let fep = fep.clone();
                async move { Ok(get(&fep, "after-update", true).await?.filter(|v| v == b"v")) }
            },
        )
        .await
    })?;
    Ok(transcript)
}

#[test]
fn cluster3_member_update_matches_etcd35() -> Result<()> {
    let expected = member_update(ServerKind::Etcd35)?;
    let actual = member_update(ServerKind::Concord)?;
    ensure!(
        expected == actual,
        "concord differs from etcd 3.5 (- etcd, + concord):\n{}",
        line_diff(&expected.join("\n"), &actual.join("\n"))
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// A removed member restarted on its old data dir is refused by the others and stops
// ------------------------------------------------------------------------------------------

fn removed_member_restart(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    let rt = runtime()?;
    let endpoints = cluster.endpoints();
    let leader = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    let f = (leader + 1) % 3;
    let fid = format!(
        "{:x}",
        rt.block_on(status(&endpoints[f]))?
            .header
            .context("status without header")?
            .member_id
    );
    let ep = endpoints[leader].clone();
    // Removed while down, so it never applies its own removal.
    cluster.members[f].kill9()?;
    let (ok, out, err) = ctl_reconfig(&ep, &["member", "remove", &fid])?;
    ensure!(ok, "member remove: {out} {err}");
    cluster.members[f].restart_no_wait()?;
    let start = Instant::now();
    while cluster.members[f].is_running() {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the removed member keeps running after a restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(cluster.members[f].stderr_path())?;
    ensure!(
        log.contains("the member has been permanently removed from the cluster"),
        "the removed member did not say why it stopped:\n{}",
        cluster.members[f].stderr_tail(20)
    );
    let refused = cluster.members.iter().enumerate().any(|(i, m)| {
        i != f
            && std::fs::read_to_string(m.stderr_path()).is_ok_and(|l| {
                l.contains("rejected stream from remote peer because it was removed")
            })
    });
    ensure!(refused, "no member logged refusing the removed member");
    let (ok, _, err) = ctl(&ep, &["put", "after-removed-restart", "v"])?;
    ensure!(ok, "put after the removed member's restart: {err}");
    Ok(())
}

#[test]
fn cluster3_removed_member_restart_is_refused_and_stops_concord() -> Result<()> {
    removed_member_restart(ServerKind::Concord)
}

#[test]
fn cluster3_removed_member_restart_is_refused_and_stops_etcd35() -> Result<()> {
    removed_member_restart(ServerKind::Etcd35)
}

/// A member whose data dir is lost: removed, re-added under the same name and peer URL, and
/// restarted empty with `--initial-cluster-state=existing`; it catches up with every write, by
/// snapshot (the log is kept short, so the writes compact it).
fn wiped_member_rejoins(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start_with(
        kind,
        3,
        &[
            "--snapshot-count=100",
            "--experimental-snapshot-catchup-entries=20",
        ],
    )?;
    let eps = cluster.endpoints();
    let rt = runtime()?;
    rt.block_on(async {
        for i in 0..300 {
            put(&eps[i % 3], &format!("/wipe/{i:03}"), "before").await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // A follower loses its data (removing a dead leader would race the election).
    let leader = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    let v = (leader + 1) % 3;
    let name = format!("m{v}");
    let ep = eps[leader].clone();
    let (_, list, _) = ctl(&ep, &["member", "list"])?;
    let id = list
        .lines()
        .find(|l| l.contains(&format!(", {name}, ")))
        .and_then(|l| l.split(", ").next())
        .context("victim in member list")?
        .to_owned();

    let victim = &mut cluster.members[v];
    victim.kill9()?;
    std::fs::remove_dir_all(victim.data_dir())?;
    let peer = victim.peer_url();
    let (ok, out, err) = ctl_reconfig(&ep, &["member", "remove", &id])?;
    ensure!(ok, "member remove: {out} {err}");
    rt.block_on(async { put(&ep, "/wipe/while-gone", "v").await })?;
    let (ok, out, err) = ctl_reconfig(
        &ep,
        &["member", "add", &name, &format!("--peer-urls={peer}")],
    )?;
    ensure!(ok, "member add: {out} {err}");
    let initial_cluster = env_line(&out, "ETCD_INITIAL_CLUSTER")?;

    let victim = &mut cluster.members[v];
    victim.set_flag("--initial-cluster", &initial_cluster);
    victim.set_flag("--initial-cluster-state", "existing");
    victim.restart()?;
    let ep2 = victim.endpoint();
    rt.block_on(async {
        wait_for(
            "the re-added member to serve every key",
            Duration::from_secs(60),
            || {
                let ep2 = ep2.clone();
                async move {
                    let n = KvClient::new(channel(&ep2)?)
                        .range(RangeRequest {
                            key: b"/wipe/".to_vec(),
                            range_end: concord_tests::ledger::prefix_end(b"/wipe/"),
                            count_only: true,
                            ..Default::default()
                        })
                        .await?
                        .into_inner()
                        .count;
                    Ok((n == 301).then_some(()))
                }
            },
        )
        .await?;
        // A voter again: writes through it commit.
        put(&ep2, "/wipe/after", "v").await?;
        ensure!(
            get(&ep, "/wipe/after", false).await?.as_deref() == Some(&b"v"[..]),
            "a write through the re-added member is not visible on the leader"
        );
        Ok(())
    })?;
    let log = std::fs::read_to_string(cluster.members[v].stderr_path())?;
    ensure!(
        log.contains("applied snapshot"),
        "the re-added member caught up without a snapshot: the log was not compacted"
    );
    let (_, list, _) = ctl(&ep, &["member", "list"])?;
    ensure!(
        list.lines().filter(|l| l.contains(", started, ")).count() == 3 && !list.contains(&id),
        "member list after the rejoin: {list}"
    );
    Ok(())
}

#[test]
fn cluster3_wiped_member_removed_readded_and_caught_up_concord() -> Result<()> {
    wiped_member_rejoins(ServerKind::Concord)
}

#[test]
fn cluster3_wiped_member_removed_readded_and_caught_up_etcd35() -> Result<()> {
    wiped_member_rejoins(ServerKind::Etcd35)
}
