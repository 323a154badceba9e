//! Lease checkpointing across a full restart (`kill -9`, then the same data dir): with
//! `--experimental-enable-lease-checkpoint-persist` the checkpointed remaining TTL survives and
//! the lease does not get its full TTL back; without it (etcd 3.5's default) a restart starts
//! the lease again from its granted TTL. Concord only: etcd 3.5.16's binary has no flag for the
//! checkpoint interval, and with its 5 minute default the test would take too long. Bounds are
//! several seconds wide. Kills servers, so the names contain `kill9` (nextest's serial group).
//!
//! A 30 s lease with a 6 s interval is checkpointed at 6, 12, 18 and 24 s (remaining 24, 18, 12,
//! 6 s), then no more (its remaining TTL no longer exceeds the interval). A put before the kill
//! makes the last checkpoint's apply durable, so the restart does not replay it from the log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use concord_tests::{Etcdctl, Server, ServerKind};

const GRANTED: i64 = 30;

fn ctl(server: &Server, args: &[&str]) -> Result<String> {
    let out = Etcdctl::V35.run(&server.endpoint(), args, None)?;
    ensure!(
        out.success(),
        "etcdctl {args:?} failed: {}",
        out.stderr_text()
    );
    Ok(out.stdout_text())
}

/// `lease timetolive`: "lease <id> granted with TTL(30s), remaining(5s)".
fn remaining(server: &Server, id: &str) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ctl(server, &["lease", "timetolive", id]) {
            Ok(text) => {
                ensure!(
                    text.contains(&format!("granted with TTL({GRANTED}s)")),
                    "unexpected output {text:?}"
                );
                let rest = text
                    .split("remaining(")
                    .nth(1)
                    .with_context(|| format!("no remaining TTL in {text:?}"))?;
                let secs = rest.split('s').next().unwrap_or_default();
                return secs
                    .parse()
                    .with_context(|| format!("remaining TTL in {text:?}"));
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Grants a lease, lets its checkpoints land, kills and restarts the server;
/// returns the remaining TTL before the kill and after the restart.
fn remaining_across_restart(persist: bool) -> Result<(i64, i64)> {
    let mut b = Server::builder(ServerKind::Concord)
        .arg("--experimental-enable-lease-checkpoint")
        .env("CONCORD_LEASE_CHECKPOINT_INTERVAL", "6s");
    if persist {
        b = b.arg("--experimental-enable-lease-checkpoint-persist");
    }
    let mut server = b.start()?;
    let granted = ctl(&server, &["lease", "grant", &GRANTED.to_string()])?;
    // "lease 694d77aa9e38260f granted with TTL(100s)"
    let Some(id) = granted.split_whitespace().nth(1).map(str::to_owned) else {
        bail!("unexpected grant output {granted:?}");
    };
    std::thread::sleep(Duration::from_secs(25));
    let before = remaining(&server, &id)?;
    ctl(&server, &["put", "checkpoint-test", "v"])?;
    server.kill9()?;
    std::thread::sleep(Duration::from_millis(100));
    server.restart()?;
    let after = remaining(&server, &id)?;
    server.stop()?;
    Ok((before, after))
}

#[test]
fn lease_checkpoint_persist_survives_kill9_concord() -> Result<()> {
    let (before, after) = remaining_across_restart(true)?;
    eprintln!("remaining before kill {before}s, after restart {after}s");
    ensure!(before <= 10, "remaining before the kill: {before}s");
    // The last checkpoint (6 s) plus the election timeout a promotion adds (1 s).
    ensure!(
        after <= 12,
        "remaining after restart {after}s (before the kill {before}s)"
    );
    Ok(())
}

#[test]
fn lease_checkpoint_without_persist_restarts_from_granted_ttl_kill9_concord() -> Result<()> {
    let (before, after) = remaining_across_restart(false)?;
    eprintln!("remaining before kill {before}s, after restart {after}s");
    ensure!(before <= 10, "remaining before the kill: {before}s");
    ensure!(
        after >= GRANTED - 8,
        "remaining after restart {after}s: expected about the granted {GRANTED}s"
    );
    Ok(())
}
