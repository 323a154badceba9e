//! The servers `concord-bench` drives, started and stopped only through the test harness
//! ([`Server`], [`Cluster`]); this module never touches a process it did not start:
//! - fresh one-member servers for the workloads (all kinds at once, taking turns per workload,
//!   or one after the other);
//! - a fresh one for the memory rows: load `--mem-keys` keys, read its resident memory, data dir
//!   size and reported db size, `kill -9` it and time its restart until a linearizable read
//!   answers;
//! - a fresh 3-member cluster of every kind for the `put3` rows, all at once, taking turns per
//!   load;
//! - or endpoints that are already running (`--endpoints`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_store::proto::etcdserverpb::{RangeRequest, kv_client::KvClient};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::load::channels;
use super::report::Row;
use super::workloads::{
    Ctx, ONE_CLIENT_ROUNDS, Step, key, one_client_rounds, prefill, put_load, put1_rows, run_step,
    steps,
};
use crate::{Cluster, Server, ServerKind};

/// Flags every benchmarked server (and cluster member) gets: a quota the runs cannot reach.
pub const SERVER_FLAGS: &[&str] = &["--quota-backend-bytes=8589934592"];

/// A field of `/proc/<pid>/status` in kB (`VmRSS:`, `VmHWM:`), 0 if unreadable.
pub fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Total length of the files under `p`.
pub fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Pins process (or, for 0, the calling thread) `pid` to `cpu`.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)?;
    Ok(())
}

/// With `--pin`, pins every thread of `server` to CPU 0. A process's affinity is per thread, so
/// setting it on the pid alone would pin only the main thread and leave the runtime's threads
/// (started before the server answered) free to run beside the load generator; threads started
/// later inherit it from their pinned creators.
fn pin_server(ctx: &Ctx<'_>, server: &Server) -> Result<()> {
    if !ctx.args.pin {
        return Ok(());
    }
    let pid = server.pid().context("server pid")?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of server pid {pid}"))?;
    for task in tasks.flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        {
            // A thread may end between the listing and here.
            let _ = pin(tid, 0);
        }
    }
    Ok(())
}

/// The one-member workloads on fresh servers of `kinds` (one [`Ctx`] each), all started at
/// once: each step runs on every server in turn, so all see the same machine state. Then each
/// server's footprint row.
pub async fn run_servers(
    ctxs: &[Ctx<'_>],
    kinds: &[ServerKind],
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut running = Vec::new();
    for (ctx, &kind) in ctxs.iter().zip(kinds) {
        let server = Server::builder(kind).args(SERVER_FLAGS).start()?;
        pin_server(ctx, &server)?;
        let chans = channels(&[server.endpoint()], ctx.args.conns).await?;
        running.push((server, chans));
    }
    let t0 = Instant::now();
    if let Some(ctx) = ctxs.first() {
        for step in steps(ctx.args) {
            if step == Step::Put1 {
                eprintln!("put1 ({ONE_CLIENT_ROUNDS} rounds)...");
                put1_rows(&first_conns(ctxs, &running), rows).await?;
                continue;
            }
            for (ctx, (_, chans)) in ctxs.iter().zip(&running) {
                eprintln!("{} {step:?}...", ctx.server);
                run_step(ctx, chans, step, t0, rows).await?;
            }
        }
    }
    for (ctx, (server, _)) in ctxs.iter().zip(&running) {
        let pid = server.pid().context("server pid")?;
        let (peak, now, dir) = (
            proc_kb(pid, "VmHWM:") * 1024,
            proc_kb(pid, "VmRSS:") * 1024,
            dir_bytes(server.data_dir()),
        );
        rows.push(Row::text(
            "footprint",
            "memory and disk after the workloads above".to_owned(),
            &ctx.server,
            format!(
                "peak RSS {} MB, RSS now {} MB, data dir {} MB",
                peak >> 20,
                now >> 20,
                dir >> 20
            ),
            json!({
                "peak_rss_bytes": peak,
                "rss_bytes": now,
                "data_dir_bytes": dir,
            }),
        ));
    }
    Ok(())
}

/// Every server's context with the first of its connections, for the one-client loads.
fn first_conns<'c, 'a, T>(
    ctxs: &'c [Ctx<'a>],
    running: &'c [(T, Vec<Channel>)],
) -> Vec<(&'c Ctx<'a>, &'c Channel)> {
    ctxs.iter()
        .zip(running)
        .map(|(ctx, (_, chans))| (ctx, &chans[0]))
        .collect()
}

/// The memory rows on a fresh server of `kind`: load `--mem-keys` keys of `--val-size` bytes,
/// read its resident memory and data dir size, then `kill -9` it, start it on the same data dir
/// and time until a linearizable read of the last key loaded answers.
pub async fn run_memory(ctx: &Ctx<'_>, kind: ServerKind, rows: &mut Vec<Row>) -> Result<()> {
    let args = ctx.args;
    let keys = args.mem_keys;
    let mut server = Server::builder(kind).args(SERVER_FLAGS).start()?;
    pin_server(ctx, &server)?;
    let chans = channels(&[server.endpoint()], args.conns).await?;
    let load = prefill(ctx, &chans, keys, "memory load").await?;
    drop(chans);
    let pid = server.pid().context("server pid")?;
    let (rss, peak) = (proc_kb(pid, "VmRSS:") * 1024, proc_kb(pid, "VmHWM:") * 1024);
    let dir = dir_bytes(server.data_dir());
    let status = crate::cluster::status(&server.endpoint()).await?;
    let what = format!("{keys} keys ({}-byte values)", args.val_size);
    rows.push(Row::load(
        "mem-load",
        format!("put of {what} into an empty server"),
        &ctx.server,
        &load,
    ));
    rows.push(Row::amount(
        "mem-rss",
        format!("resident memory after loading {what}"),
        &ctx.server,
        rss as f64 / (1 << 20) as f64,
        "MB",
        json!({ "keys": keys, "rss_bytes": rss, "peak_rss_bytes": peak }),
    ));
    rows.push(Row::amount(
        "mem-disk",
        format!("data dir size on disk after loading {what}"),
        &ctx.server,
        dir as f64 / (1 << 20) as f64,
        "MB",
        json!({ "keys": keys, "data_dir_bytes": dir }),
    ));
    rows.push(Row::amount(
        "mem-db",
        format!("db size after loading {what} (Status dbSize, as etcdctl endpoint status)"),
        &ctx.server,
        status.db_size as f64 / (1 << 20) as f64,
        "MB",
        json!({
            "keys": keys,
            "db_size_bytes": status.db_size,
            "db_size_in_use_bytes": status.db_size_in_use,
        }),
    ));

    let last = key(args, keys - 1);
    server.kill9()?;
    let start = Instant::now();
    server.restart_no_wait()?;
    pin_server(ctx, &server)?;
    wait_linearizable_read(&mut server, &last, Duration::from_secs(600)).await?;
    let elapsed = start.elapsed();
    let rss_after = proc_kb(server.pid().context("server pid")?, "VmRSS:") * 1024;
    rows.push(Row::amount(
        "restart",
        format!("restart with {what} (kill -9, then until a linearizable read answers)"),
        &ctx.server,
        elapsed.as_secs_f64() * 1000.0,
        "ms",
        json!({
            "keys": keys,
            "restart_secs": elapsed.as_secs_f64(),
            "rss_after_restart_bytes": rss_after,
        }),
    ));
    Ok(())
}

/// Polls with linearizable ranges of `key` on fresh connections until one returns it. Fails if
/// the server exits or `timeout` passes.
async fn wait_linearizable_read(server: &mut Server, key: &[u8], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let endpoint = Endpoint::from_shared(server.endpoint())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    loop {
        let attempt = async {
            let ch: Channel = endpoint.connect().await?;
            let r = KvClient::new(ch)
                .range(RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::Ok(!r.kvs.is_empty())
        };
        let last = match attempt.await {
            Ok(true) => return Ok(()),
            Ok(false) => bail!("after the restart, the last key loaded is missing"),
            Err(e) => format!("{e:#}"),
        };
        if !server.is_running() {
            bail!(
                "{:?} exited during the restart; stderr tail:\n{}",
                server.kind(),
                server.stderr_tail(30)
            );
        }
        if start.elapsed() > timeout {
            bail!("no linearizable read answered {timeout:?} after the restart (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The member of `endpoints` that they name as leader (`Maintenance.Status`).
pub async fn leader_of(endpoints: &[String]) -> Result<String> {
    for ep in endpoints {
        let st = crate::cluster::status(ep).await?;
        let id = st.header.context("status without header")?.member_id;
        if st.leader != 0 && st.leader == id {
            return Ok(ep.clone());
        }
    }
    bail!("none of {endpoints:?} is the leader")
}

/// The `put3` rows: a fresh 3-member cluster of every kind, all running at once, taking turns at
/// each load (the one-client load in [`ONE_CLIENT_ROUNDS`] rounds), against the leader or, with
/// `--target-leader=false`, spread over all members.
pub async fn run_clusters(
    ctxs: &[Ctx<'_>],
    kinds: &[ServerKind],
    rows: &mut Vec<Row>,
) -> Result<()> {
    let Some(args) = ctxs.first().map(|c| c.args) else {
        return Ok(());
    };
    let mut running = Vec::new();
    for (ctx, &kind) in ctxs.iter().zip(kinds) {
        eprintln!("starting a 3-member {} cluster...", ctx.server);
        let cluster = Cluster::start_with(kind, 3, SERVER_FLAGS)?;
        for m in &cluster.members {
            pin_server(ctx, m)?;
        }
        let leader = cluster.agreed_leader(&[0, 1, 2]).await?;
        let endpoints = if args.target_leader {
            vec![cluster.members[leader].endpoint()]
        } else {
            cluster.endpoints()
        };
        let chans = channels(&endpoints, args.conns.max(endpoints.len())).await?;
        running.push((cluster, chans));
    }
    let to = if args.target_leader {
        "to the leader"
    } else {
        "to all members"
    };
    for (ctx, (_, chans)) in ctxs.iter().zip(&running) {
        eprintln!("{} put3 ({} clients)...", ctx.server, args.clients);
        let s = put_load(ctx, chans, args.clients, ctx.limit(args.total), "put3").await?;
        rows.push(ctx.row(
            "put3",
            format!("put, 3 members, {to} ({} clients)", args.clients),
            &s,
        ));
    }
    let targets = first_conns(ctxs, &running);
    let merged = one_client_rounds(&targets, args.total / 10, "put3 1 client").await?;
    for (ctx, s) in ctxs.iter().zip(merged) {
        rows.push(ctx.row("put3-1", format!("put, 3 members, {to} (1 client)"), &s));
    }
    Ok(())
}
