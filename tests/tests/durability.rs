//! Durability under `kill -9`: concurrent gRPC writers record every put the server acknowledged;
//! the server is killed mid-stream and restarted on the same data dir, a few times; after every
//! restart each acknowledged write must be there with its value, and nothing that was never
//! written may appear. Bounded: a fixed number of kills, a cap on writes, timeouts on every call.
//!
//! Runs against concord, plus the same scenario against etcd 3.5.16 as a smoke test of the
//! harness. Kills servers, so nextest runs it in the `serial` group (`.config/nextest.toml`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::kv_client::KvClient;
use concord_store::proto::etcdserverpb::{PutRequest, RangeRequest};
use concord_tests::{Server, ServerKind, random_u64};
use tonic::transport::{Channel, Endpoint};

const PREFIX: &[u8] = b"durability/";
const WRITERS: usize = 8;
const KILLS: usize = 3;
/// Per-writer cap on attempted puts, so the test is bounded even on a very fast server.
const MAX_PUTS_PER_WRITER: u64 = 3_000;

/// Every put a writer attempted, and whether the server acknowledged it.
#[derive(Default)]
struct Ledger {
    acked: Vec<(Vec<u8>, Vec<u8>)>,
    attempted: HashMap<Vec<u8>, Vec<u8>>,
}

fn channel(endpoint: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Writes `durability/<writer>/<seq>` = a unique value, one at a time, until `stop`. Each key is
/// attempted exactly once, so an acknowledged key has exactly one possible value.
async fn writer(id: usize, endpoint: String, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let nonce = random_u64();
    let mut client = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < MAX_PUTS_PER_WRITER {
        let key = format!("durability/{id:02}/{seq:06}").into_bytes();
        let value = format!("v-{id}-{seq}-{nonce:016x}").into_bytes();
        seq += 1;
        let kv = match &mut client {
            Some(c) => c,
            None => match channel(&endpoint) {
                Ok(ch) => client.insert(KvClient::new(ch)),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        ledger
            .lock()
            .unwrap()
            .attempted
            .insert(key.clone(), value.clone());
        let req = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(_) => ledger.lock().unwrap().acked.push((key, value)),
            Err(_) => {
                // Server down or restarting: reconnect with a fresh channel after a pause.
                client = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Checks that every write acknowledged so far is present with its value, and that every present
/// key was attempted with that value. Returns the number of acknowledged writes checked.
async fn verify(endpoint: &str, ledger: &Mutex<Ledger>) -> Result<usize> {
    // Acknowledged writes before the range: all were acknowledged before the (linearizable)
    // range started, so all must be in it.
    let acked = ledger.lock().unwrap().acked.clone();
    let mut kv = KvClient::new(channel(endpoint)?);
    let resp = kv
        .range(RangeRequest {
            key: PREFIX.to_vec(),
            range_end: prefix_end(PREFIX),
            ..Default::default()
        })
        .await
        .context("range over the written keys")?
        .into_inner();
    let stored: HashMap<Vec<u8>, Vec<u8>> =
        resp.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    // Attempted writes after the range: anything stored was attempted before the range ended.
    let attempted = ledger.lock().unwrap().attempted.clone();
    let mut missing = Vec::new();
    for (key, value) in &acked {
        match stored.get(key) {
            Some(v) if v == value => {}
            other => missing.push(format!(
                "{} acked as {:?}, stored {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value),
                other.map(|v| String::from_utf8_lossy(v).into_owned())
            )),
        }
    }
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost or wrong, e.g.:\n{}",
        missing.len(),
        acked.len(),
        missing[..missing.len().min(20)].join("\n")
    );
    for (key, value) in &stored {
        ensure!(
            attempted.get(key) == Some(value),
            "stored {} = {:?} was never written",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        );
    }
    Ok(acked.len())
}

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
        .map(|id| rt.spawn(writer(id, endpoint.clone(), ledger.clone(), stop.clone())))
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
            .block_on(verify(&endpoint, &ledger))
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
    let checked = rt.block_on(verify(&endpoint, &ledger))?;
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
