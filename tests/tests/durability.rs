//! Durability under `kill -9`: concurrent gRPC writers record every put the server acknowledged;
//! the server is killed mid-stream and restarted on the same data dir, a few times; after every
//! restart each acknowledged write must be there with its value, and nothing that was never
//! written may appear. Bounded: a fixed number of kills, a cap on writes, timeouts on every call.
//!
//! Runs against concord, plus the same scenario against etcd 3.5.16 as a smoke test of the
//! harness. Kills servers, so nextest runs it in the `serial` group (`.config/nextest.toml`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_tests::ledger::{Ledger, verify, writer};
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
