//! Helpers shared by the multi-process tests that drive clusters through the `etcd-client`
//! crate: a tokio runtime, a client of one member, acknowledged puts, and watch event checks.
//! Each test file includes it as `mod support;` and uses what it needs.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_tests::ServerKind;
use etcd_client::{Client, ConnectOptions, WatchStream};

/// Runs `test` against concord, then against etcd 3.5 as the reference; panics naming the
/// server that failed.
pub fn on_both(test: fn(ServerKind) -> Result<()>) {
    for kind in [ServerKind::Concord, ServerKind::Etcd35] {
        test(kind).unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A client of one member only, with short per-call timeouts so a dead leader fails calls
/// instead of hanging them.
pub async fn client(endpoint: &str) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(opts))
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// Puts `key` until one attempt is acknowledged (an election may fail a few), returning the
/// revision of the acknowledged put.
pub async fn put_acked(c: &mut Client, key: &str, value: &str) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.put(key, value, None).await {
            Ok(r) => return Ok(r.header().context("put without header")?.revision()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("failover: put {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context(format!("put {key} never acknowledged")),
        }
    }
}

/// `(revision, key)` of every event `stream` delivers until one at `end` or later arrives.
pub async fn events_until(stream: &mut WatchStream, end: i64) -> Result<Vec<(i64, String)>> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(rev, _)| *rev < end) {
        let r = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("no watch response in 60 s")??
            .context("watch stream closed")?;
        ensure!(!r.canceled(), "watch canceled: {}", r.cancel_reason());
        for e in r.events() {
            let kv = e.kv().context("event without kv")?;
            seen.push((kv.mod_revision(), kv.key_str()?.to_owned()));
        }
    }
    Ok(seen)
}

/// Events until the stream fails (its member died); what arrived before is returned.
pub async fn events_until_broken(stream: &mut WatchStream) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    while let Ok(Ok(Some(r))) =
        tokio::time::timeout(Duration::from_secs(60), stream.message()).await
    {
        for e in r.events() {
            if let Some(kv) = e.kv() {
                seen.push((kv.mod_revision(), kv.key_str().unwrap_or("?").to_owned()));
            }
        }
    }
    seen
}

/// Every revision from `start` to `end` exactly once, in order (each put under the watched
/// prefix is one revision, and nothing else writes there).
pub fn check_gapless(who: &str, seen: &[(i64, String)], start: i64, end: i64) -> Result<()> {
    let revs: Vec<i64> = seen.iter().map(|(r, _)| *r).collect();
    ensure!(
        revs == (start..=end).collect::<Vec<_>>(),
        "{who} saw revisions {revs:?}, expected every one of {start}..={end} once, in order"
    );
    Ok(())
}
