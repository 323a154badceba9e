//! Durability under `kill -9`: concurrent gRPC writers record every put the server acknowledged;
//! the server is killed mid-stream and restarted on the same data dir, a few times; after every
//! restart each acknowledged write must be there with its value, and nothing that was never
//! written may appear. Bounded: a fixed number of kills, a cap on writes, timeouts on every call.
//!
//! Runs against concord, plus the same scenario against etcd 3.5.16 as a smoke test of the
//! harness. Kills servers, so nextest runs it in the `serial` group (`.config/nextest.toml`).
//!
//! Also: `--backend-batch-interval` and `--backend-batch-limit` decide how far the state on disk
//! may lag the log, that is, how much a restart after `kill -9` replays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::{PutRequest, RangeRequest, kv_client::KvClient};
use concord_tests::cluster::status;
use concord_tests::ledger::{Ledger, channel, verify, writer};
use concord_tests::{Server, ServerKind, random_u64};

const PREFIX: &str = "durability/";
const WRITERS: usize = 8;
const KILLS: usize = 3;
/// Per-writer cap on attempted puts, so the test is bounded even on a very fast server.
const MAX_PUTS_PER_WRITER: u64 = 3_000;

fn kill9_keeps_acknowledged_writes(kind: ServerKind) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut server = Server::start(kind)?;
    let endpoint = server.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            rt.spawn(writer(
                id,
                PREFIX,
                vec![endpoint.clone()],
                MAX_PUTS_PER_WRITER,
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut last_acked = 0;
    for round in 0..KILLS {
        ensure!(Instant::now() < deadline, "out of time in round {round}");
        // Let the writers run a random while, then kill the server in the middle of the stream.
        std::thread::sleep(Duration::from_millis(400 + random_u64() % 600));
        server.kill9()?;
        std::thread::sleep(Duration::from_millis(100));
        server
            .restart()
            .with_context(|| format!("restart after kill {round}"))?;
        let checked = rt
            .block_on(verify(&endpoint, PREFIX, &ledger))
            .with_context(|| format!("after kill {round}"))?;
        ensure!(
            checked > last_acked,
            "no write was acknowledged before kill {round} ({checked} in all)"
        );
        eprintln!("kill {round}: {checked} acknowledged writes all present");
        last_acked = checked;
    }

    // Writes after the last restart must land too.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w)?;
    }
    let checked = rt.block_on(verify(&endpoint, PREFIX, &ledger))?;
    ensure!(
        checked > last_acked,
        "no write acknowledged after the last restart"
    );
    eprintln!("final: {checked} acknowledged writes all present");
    server.stop()?;
    Ok(())
}

#[test]
fn kill9_keeps_acknowledged_writes_concord() -> Result<()> {
    kill9_keeps_acknowledged_writes(ServerKind::Concord)
}

#[test]
fn kill9_keeps_acknowledged_writes_etcd35() -> Result<()> {
    kill9_keeps_acknowledged_writes(ServerKind::Etcd35)
}

/// The applied index a restarted concord loaded its state at (its "loaded raft log" line).
fn loaded_applied_index(server: &Server) -> Result<u64> {
    let log = std::fs::read_to_string(server.stderr_path())?;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("loaded raft log from data dir"))
        .context("no \"loaded raft log\" line in the server log")?;
    // Plain text (no colour codes: stderr is a file), `applied=N`.
    let digits: String = line
        .split("applied=")
        .nth(1)
        .context("no applied= field")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

/// Puts `PUTS` keys, reads the applied index, kills the server and restarts it: returns how many
/// applied entries the restart had to replay from the log, after checking every key is there.
fn replayed_after_kill9(flags: &[&str]) -> Result<u64> {
    const PUTS: usize = 40;
    let mut server = Server::builder(ServerKind::Concord).args(flags).start()?;
    let endpoint = server.endpoint();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let applied = rt.block_on(async {
        let mut kv = KvClient::new(channel(&endpoint)?);
        for i in 0..PUTS {
            kv.put(PutRequest {
                key: format!("batch/{i:03}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await?;
        }
        // Long enough for an idle 100 ms interval to make the state durable.
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::Ok(status(&endpoint).await?.raft_applied_index)
    })?;
    server.kill9()?;
    server.restart()?;
    let loaded = loaded_applied_index(&server)?;
    let count = rt.block_on(async {
        let mut kv = KvClient::new(channel(&endpoint)?);
        let r = kv
            .range(RangeRequest {
                key: b"batch/".to_vec(),
                range_end: b"batch0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?;
        anyhow::Ok(r.into_inner().count)
    })?;
    ensure!(
        count == PUTS as i64,
        "{count} of {PUTS} keys after the restart"
    );
    server.stop()?;
    ensure!(
        loaded <= applied,
        "loaded {loaded} past the applied {applied}"
    );
    Ok(applied - loaded)
}

#[test]
fn backend_batch_flags_bound_what_a_restart_replays_concord() -> Result<()> {
    // The default: an idle interval of 100 ms makes everything applied durable.
    let replayed = replayed_after_kill9(&[])?;
    ensure!(replayed == 0, "default flags: replayed {replayed} entries");
    // No durable state commit for an hour nor for a million entries: all 40 puts replay.
    let replayed = replayed_after_kill9(&[
        "--backend-batch-interval=1h",
        "--backend-batch-limit=1000000",
    ])?;
    ensure!(
        replayed >= 40,
        "long batches: replayed only {replayed} entries"
    );
    // Every 5 entries, however long the interval.
    let replayed =
        replayed_after_kill9(&["--backend-batch-interval=1h", "--backend-batch-limit=5"])?;
    ensure!(replayed < 5, "batches of 5: replayed {replayed} entries");
    Ok(())
}
