//! Watch guarantees through an independent client (the `etcd-client` crate), each test run
//! against concord and, as the reference, against etcd 3.5.16: history replay across a
//! compaction, progress requests, a txn's events in one response, 1,000 watchers on one prefix
//! each seeing every event exactly once and in order, and a watcher that never reads not
//! stalling writers.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use concord_tests::{Server, ServerKind};
use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions, WatchStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn client(server: &Server) -> Result<Client> {
    Ok(Client::connect([server.endpoint()], None).await?)
}

/// The next response of `stream` within `secs` seconds.
async fn next(stream: &mut WatchStream, secs: u64) -> Result<etcd_client::WatchResponse> {
    tokio::time::timeout(Duration::from_secs(secs), stream.message())
        .await
        .context("no watch response in time")??
        .context("watch stream closed")
}

/// Mod revisions of the events in `r`.
fn revs(r: &etcd_client::WatchResponse) -> Vec<i64> {
    r.events()
        .iter()
        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
        .collect()
}

fn on_both(test: fn(ServerKind) -> Result<()>) {
    for kind in [ServerKind::Concord, ServerKind::Etcd35] {
        test(kind).unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
    }
}

fn history_replay_across_compaction(kind: ServerKind) -> Result<()> {
    let server = Server::start(kind)?;
    runtime().block_on(async {
        let mut c = client(&server).await?;
        for i in 0..10 {
            c.put("k", format!("v{i}"), None).await?; // revisions 2..=11
        }
        c.compact(6, None).await?;
        // Older than the compaction: the watch is canceled with the compact revision.
        let mut s = c
            .watch("k", Some(WatchOptions::new().with_start_revision(3)))
            .await?;
        let mut r = next(&mut s, 5).await?;
        if r.created() && !r.canceled() {
            r = next(&mut s, 5).await?;
        }
        ensure!(
            r.canceled() && r.compact_revision() == 6,
            "expected a compaction cancel, got {r:?}"
        );
        // From the compaction revision on: every version, in order.
        let mut s = c
            .watch("k", Some(WatchOptions::new().with_start_revision(6)))
            .await?;
        let mut seen = Vec::new();
        while seen.len() < 6 {
            seen.extend(revs(&next(&mut s, 5).await?));
        }
        ensure!(
            seen == (6..=11).collect::<Vec<_>>(),
            "replayed revisions {seen:?}"
        );
        Ok(())
    })
}

fn progress_request_reports_a_caught_up_revision(kind: ServerKind) -> Result<()> {
    let server = Server::start(kind)?;
    runtime().block_on(async {
        let mut c = client(&server).await?;
        let mut s = c.watch("p", None).await?;
        ensure!(next(&mut s, 5).await?.created());
        let rev = c
            .put("p", "1", None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        ensure!(revs(&next(&mut s, 5).await?) == vec![rev]);
        s.request_progress().await?;
        let p = next(&mut s, 5).await?;
        ensure!(
            p.events().is_empty(),
            "a progress response carries no events: {p:?}"
        );
        ensure!(
            p.watch_id() == -1,
            "progress responses use watch id -1: {p:?}"
        );
        ensure!(
            p.header().map(|h| h.revision()) == Some(rev),
            "progress revision: {p:?}"
        );
        Ok(())
    })
}

fn txn_events_arrive_in_one_response(kind: ServerKind) -> Result<()> {
    let server = Server::start(kind)?;
    runtime().block_on(async {
        let mut c = client(&server).await?;
        let mut s = c
            .watch("t/", Some(WatchOptions::new().with_prefix()))
            .await?;
        ensure!(next(&mut s, 5).await?.created());
        c.put("t/gone", "x", None).await?;
        ensure!(revs(&next(&mut s, 5).await?).len() == 1);
        let txn = Txn::new()
            .when([Compare::version("t/gone", CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put("t/a", "1", None),
                TxnOp::put("t/b", "2", None),
                TxnOp::delete("t/gone", None),
            ]);
        let rev = c
            .txn(txn)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        let r = next(&mut s, 5).await?;
        ensure!(
            revs(&r) == vec![rev, rev, rev],
            "one response with all three events: {r:?}"
        );
        ensure!(r.events()[2].event_type() == EventType::Delete);
        Ok(())
    })
}

fn thousand_watchers_see_every_event_once_in_order(kind: ServerKind) -> Result<()> {
    const WATCHERS: usize = 1000;
    const PUTS: i64 = 100;
    let server = Server::start(kind)?;
    runtime().block_on(async {
        let mut c = client(&server).await?;
        let start_rev = c
            .put("fan/start", "", None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        // All watchers share one client connection, as kube-apiserver's do. Each is read by
        // its own task from the start, as a real consumer would.
        let want: Vec<i64> = (start_rev + 1..=start_rev + PUTS).collect();
        let mut tasks = Vec::with_capacity(WATCHERS);
        for _ in 0..WATCHERS {
            let mut s = c
                .watch(
                    "fan/k",
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(start_rev + 1),
                    ),
                )
                .await?;
            ensure!(next(&mut s, 20).await?.created());
            let want = want.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < want.len() {
                    got.extend(revs(&next(&mut s, 60).await?));
                }
                ensure!(got == want, "a watcher saw {got:?}");
                Ok::<_, anyhow::Error>(())
            }));
        }
        for i in 0..PUTS {
            c.put(format!("fan/k{i:03}"), "v", None).await?;
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

fn watcher_that_never_reads_does_not_stall_writers(kind: ServerKind) -> Result<()> {
    const PUTS: usize = 2000;
    let server = Server::start(kind)?;
    runtime().block_on(async {
        let mut c = client(&server).await?;
        let mut stalled = c
            .watch("slow/", Some(WatchOptions::new().with_prefix()))
            .await?;
        ensure!(next(&mut stalled, 5).await?.created());
        let value = "x".repeat(1024);
        // ~2 MB of events pile up behind a watcher that reads nothing; writes must go on.
        let writes = async {
            for i in 0..PUTS {
                c.put(format!("slow/{i:05}"), value.clone(), None).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(120), writes)
            .await
            .context("writers stalled behind a slow watcher")??;
        // The slow watcher then gets everything, in order, exactly once.
        let mut got = 0usize;
        let mut last = 0;
        while got < PUTS {
            for rev in revs(&next(&mut stalled, 30).await?) {
                ensure!(rev > last, "out of order: {rev} after {last}");
                last = rev;
                got += 1;
            }
        }
        ensure!(got == PUTS);
        Ok(())
    })
}

#[test]
fn history_replay_across_compaction_matches_etcd() {
    on_both(history_replay_across_compaction);
}

#[test]
fn progress_request_matches_etcd() {
    on_both(progress_request_reports_a_caught_up_revision);
}

#[test]
fn txn_events_in_one_response_matches_etcd() {
    on_both(txn_events_arrive_in_one_response);
}

#[test]
fn thousand_watchers_on_one_prefix() {
    on_both(thousand_watchers_see_every_event_once_in_order);
}

#[test]
fn slow_watcher_does_not_stall_writers() {
    on_both(watcher_that_never_reads_does_not_stall_writers);
}

/// Fragment flags and event counts of the responses carrying one revision's events (through
/// the generated gRPC client: the `etcd-client` crate hides the fragment flag).
fn fragmented_delete(kind: ServerKind) -> Result<Vec<(bool, usize)>> {
    use concord_store::proto::etcdserverpb::watch_client::WatchClient;
    use concord_store::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};

    let server = Server::start(kind)?;
    runtime().block_on(async {
        let mut c = client(&server).await?;
        let value = "v".repeat(300 << 10);
        for i in 0..8 {
            c.put(format!("f/{i}"), value.as_str(), None).await?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"f/".to_vec(),
                    range_end: b"f0".to_vec(),
                    prev_kv: true,
                    fragment: true,
                    ..Default::default()
                },
            )),
        })
        .await?;
        let mut s = WatchClient::new(concord_tests::ledger::channel(&server.endpoint())?)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let created = s.message().await?.context("watch closed")?;
        ensure!(created.created, "{created:?}");
        // One revision, eight deletes carrying 300 KiB previous values: 2.4 MiB, over etcd's
        // limit of --max-request-bytes (1.5 MiB) plus 512 KiB of gRPC overhead.
        c.delete("f/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await?;
        let mut parts = Vec::new();
        let mut events = 0;
        while events < 8 {
            let r = tokio::time::timeout(Duration::from_secs(5), s.message())
                .await??
                .context("watch closed")?;
            events += r.events.len();
            parts.push((r.fragment, r.events.len()));
        }
        drop(tx);
        Ok(parts)
    })
}

#[test]
fn fragmented_watch_response_matches_etcd() {
    let concord = fragmented_delete(ServerKind::Concord).expect("concord");
    let etcd = fragmented_delete(ServerKind::Etcd35).expect("etcd 3.5");
    assert!(etcd.len() > 1, "etcd did not fragment: {etcd:?}");
    assert_eq!(concord, etcd, "fragments (flag, events) of concord vs etcd");
}
