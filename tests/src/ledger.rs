//! Acknowledged-write bookkeeping for durability tests: writers that put unique values under a
//! prefix and record every attempt and every acknowledgement, and a check that every
//! acknowledged write is stored with its value and nothing stored was never attempted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::kv_client::KvClient;
use concord_store::proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// Every put the writers attempted, and those the server acknowledged.
#[derive(Default)]
pub struct Ledger {
    pub acked: Vec<(Vec<u8>, Vec<u8>)>,
    pub attempted: HashMap<Vec<u8>, Vec<u8>>,
}

/// A lazily connecting channel with short timeouts, so a dead server fails calls quickly.
pub fn channel(endpoint: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// Writes `<prefix><id>/<seq>` = a unique value, one at a time, until `stop` or `max_puts`.
/// Each key is attempted once, so an acknowledged key has exactly one possible value. A failed
/// put (server down, no leader) moves the writer to the next endpoint after a short pause.
pub async fn writer(
    id: usize,
    prefix: &'static str,
    endpoints: Vec<String>,
    max_puts: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let nonce = crate::random_u64();
    let mut at = id % endpoints.len();
    let mut client: Option<KvClient<Channel>> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < max_puts {
        let key = format!("{prefix}{id:02}/{seq:06}").into_bytes();
        let value = format!("v-{id}-{seq}-{nonce:016x}").into_bytes();
        seq += 1;
        let kv = match &mut client {
            Some(c) => c,
            None => match channel(&endpoints[at]) {
                Ok(ch) => client.insert(KvClient::new(ch)),
                Err(_) => {
                    at = (at + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempted
            .insert(key.clone(), value.clone());
        let req = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(_) => ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .acked
                .push((key, value)),
            Err(_) => {
                client = None;
                at = (at + 1) % endpoints.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The range end that covers every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Checks on `endpoint` (linearizable read) that every write acknowledged before the read is
/// stored with its value, and that every stored key under `prefix` was attempted with that
/// value. Returns the number of acknowledged writes checked.
pub async fn verify(endpoint: &str, prefix: &str, ledger: &Mutex<Ledger>) -> Result<usize> {
    // Acknowledged before the range started, so all must be in it.
    let acked = ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acked
        .clone();
    let resp = KvClient::new(channel(endpoint)?)
        .max_decoding_message_size(64 << 20)
        .range(RangeRequest {
            key: prefix.into(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("range over the written keys on {endpoint}"))?
        .into_inner();
    let stored: HashMap<Vec<u8>, Vec<u8>> =
        resp.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    // Attempted before the range ended: anything stored must be among them.
    let attempted = ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .attempted
        .clone();
    let missing: Vec<String> = acked
        .iter()
        .filter(|(k, v)| stored.get(k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{} acked as {:?}, stored {:?}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v),
                stored
                    .get(k)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            )
        })
        .collect();
    ensure!(
        missing.is_empty(),
        "{endpoint}: {} of {} acknowledged writes lost or wrong, e.g.:\n{}",
        missing.len(),
        acked.len(),
        missing[..missing.len().min(20)].join("\n")
    );
    for (k, v) in &stored {
        ensure!(
            attempted.get(k) == Some(v),
            "{endpoint}: stored {} = {:?} was never written",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        );
    }
    Ok(acked.len())
}
