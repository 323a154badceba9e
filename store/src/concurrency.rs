//! etcd's concurrency recipes (`client/v3/concurrency`: mutex, election, waitDeletes) run inside
//! the server for the Lock and Election services, as etcd 3.5's `v3lock` and `v3election` do
//! through an in-process client.
//!
//! A lock or a leadership is a key `<name>/<lease id in hex>`, created with the caller's lease in
//! a txn that succeeds only if the key does not exist yet (create revision 0). The holder is the
//! key under `<name>/` with the smallest create revision; every other key waits until each key
//! with a smaller create revision is deleted (unlocked, resigned, or gone with its lease), so
//! waiters are served in creation order. Waiting uses range reads through [`EtcdServer`] and the
//! member's own watch hub, never a network client. A request of lease 0 gets a fresh lease of
//! 60 s (etcd's session default), which nobody keeps alive, exactly as etcd.
//!
//! A waiter whose client goes away removes its key (etcd's cleanup on context cancel), so it
//! never blocks the waiters behind it. Deviation: a watch that meets compacted history re-reads
//! the prefix instead of failing the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse, compare, range_request, request_op, response_op,
};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::proto::v3electionpb::{
    CampaignResponse, LeaderKey, LeaderResponse, ProclaimResponse, ResignResponse,
};
use crate::proto::v3lockpb::{LockResponse, UnlockResponse};
use crate::server::EtcdServer;
use crate::watch::KeyFilter;

/// TTL of the lease granted for a request without one (etcd's `defaultSessionTTL`).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// Resolves when the client that asked for an operation has gone away.
pub type Cancel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `f` on its own task so that it can clean up when its caller is dropped (a gRPC handler
/// whose client disconnected): `f` receives a [`Cancel`] that resolves at that moment.
pub async fn run_detached<T, F>(f: impl FnOnce(Cancel) -> F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let (out_tx, out_rx) = oneshot::channel();
    let fut = f(Box::pin(async move {
        let _ = cancel_rx.await;
    }));
    tokio::spawn(async move {
        let _ = out_tx.send(fut.await);
    });
    let out = out_rx.await.map_err(|_| Error::Stopped)?;
    drop(cancel_tx);
    out
}

/// etcd's `clientv3.GetPrefixRangeEnd`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The lease of a session: `lease`, or a new 60 s lease for 0 (etcd's `NewSession`).
async fn session_lease(server: &EtcdServer, lease: i64) -> Result<i64> {
    if lease != 0 {
        return Ok(lease);
    }
    let r = server
        .lease_grant(LeaseGrantRequest {
            ttl: DEFAULT_SESSION_TTL,
            id: 0,
        })
        .await?;
    Ok(r.id)
}

fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
    }
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn get(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// `clientv3.WithFirstCreate` (or `WithLastCreate`) on a prefix: the oldest (newest) key.
fn first_create(prefix: &[u8], order: range_request::SortOrder) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

fn range_kvs(resp: &TxnResponse, i: usize) -> &[KeyValue] {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

/// The first event from revision `from` on that passes `keep`, read from the watch hub.
async fn next_event(
    server: &EtcdServer,
    from: i64,
    keep: &(dyn Fn(&Event) -> bool + Sync),
) -> Result<Event> {
    let hub = server.hub();
    let mut rx = hub.subscribe();
    let mut next = from;
    loop {
        rx.borrow_and_update();
        let (events, n) = hub.read(next, keep)?;
        if let Some(e) = events.first() {
            return Ok(Event::clone(e));
        }
        next = n;
        if next > hub.current_rev() {
            rx.changed().await.map_err(|_| Error::Stopped)?;
        }
    }
}

/// etcd's `waitDelete`: waits for the deletion of `key`, watching from `rev`.
async fn wait_delete(server: &EtcdServer, key: &[u8], rev: i64) -> Result<()> {
    let filter = KeyFilter::new(key.to_vec(), vec![]);
    let keep = move |e: &Event| {
        e.r#type == EventType::Delete as i32
            && e.kv.as_ref().is_some_and(|kv| filter.matches(&kv.key))
    };
    match next_event(server, rev, &keep).await {
        // History before `rev` is gone: let the caller read the prefix again.
        Ok(_) | Err(Error::Compacted) => Ok(()),
        Err(e) => Err(e),
    }
}

/// etcd's `waitDeletes`: waits until no key under `prefix` has a create revision
/// `<= max_create_rev`.
async fn wait_deletes(server: &EtcdServer, prefix: &[u8], max_create_rev: i64) -> Result<()> {
    loop {
        let mut req = first_create(prefix, range_request::SortOrder::Descend);
        req.max_create_revision = max_create_rev;
        let resp = server.range(req).await?;
        let Some(last) = resp.kvs.first() else {
            return Ok(());
        };
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        wait_delete(server, &last.key, rev).await?;
    }
}

async fn delete(server: &EtcdServer, key: &[u8]) -> Result<ResponseHeader> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    let r = server
        .delete_range(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.header.unwrap_or_default())
}

/// `v3lockpb.Lock`: etcd's `Mutex.Lock` with the caller's lease (see the module docs).
pub async fn lock(
    server: Arc<EtcdServer>,
    name: Vec<u8>,
    lease: i64,
    cancel: Cancel,
) -> Result<LockResponse> {
    let lease = session_lease(&server, lease).await?;
    let prefix = with_slash(&name);
    let my_key = session_key(&prefix, lease);
    let owner = first_create(&prefix, range_request::SortOrder::Ascend);
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_rev_is(&my_key, 0)],
            success: vec![
                op(request_op::Request::RequestPut(PutRequest {
                    key: my_key.clone(),
                    lease,
                    ..Default::default()
                })),
                op(request_op::Request::RequestRange(owner.clone())),
            ],
            failure: vec![
                op(request_op::Request::RequestRange(get(&my_key))),
                op(request_op::Request::RequestRange(owner)),
            ],
        })
        .await?;
    let mut my_rev = resp.header.as_ref().map_or(0, |h| h.revision);
    if !resp.succeeded {
        my_rev = range_kvs(&resp, 0)
            .first()
            .map_or(0, |kv| kv.create_revision);
    }
    let holder = range_kvs(&resp, 1);
    if holder.is_empty() || holder[0].create_revision == my_rev {
        return Ok(LockResponse {
            header: resp.header,
            key: my_key,
        });
    }
    let waited = tokio::select! {
        r = wait_deletes(&server, &prefix, my_rev - 1) => r,
        _ = cancel => Err(Error::Canceled),
    };
    if let Err(e) = waited {
        let _ = delete(&server, &my_key).await;
        return Err(e);
    }
    // The session's key must still exist (its lease may have ended meanwhile).
    let got = match server.range(get(&my_key)).await {
        Ok(g) => g,
        Err(e) => {
            let _ = delete(&server, &my_key).await;
            return Err(e);
        }
    };
    if got.kvs.is_empty() {
        return Err(Error::SessionExpired);
    }
    Ok(LockResponse {
        header: got.header,
        key: my_key,
    })
}

/// `v3lockpb.Unlock`: deletes the lock's key.
pub async fn unlock(server: &EtcdServer, key: &[u8]) -> Result<UnlockResponse> {
    Ok(UnlockResponse {
        header: Some(delete(server, key).await?),
    })
}

/// etcd's `Election.Proclaim` for a resumed election: rewrites the leader key's value if it is
/// still the one created at `rev`.
async fn proclaim_key(
    server: &EtcdServer,
    key: &[u8],
    rev: i64,
    value: &[u8],
) -> Result<ResponseHeader> {
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![op(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ignore_lease: true,
                ..Default::default()
            }))],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(Error::ElectionNotLeader);
    }
    Ok(resp.header.unwrap_or_default())
}

/// etcd's `Election.Resign`: deletes the leader key if it is still the one created at `rev`.
async fn resign_key(server: &EtcdServer, key: &[u8], rev: i64) -> Result<ResponseHeader> {
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            ))],
            failure: vec![],
        })
        .await?;
    Ok(resp.header.unwrap_or_default())
}

/// `v3electionpb.Campaign`: etcd's `Election.Campaign` (see the module docs).
pub async fn campaign(
    server: Arc<EtcdServer>,
    name: Vec<u8>,
    lease: i64,
    value: Vec<u8>,
    cancel: Cancel,
) -> Result<CampaignResponse> {
    let lease = session_lease(&server, lease).await?;
    let prefix = with_slash(&name);
    let key = session_key(&prefix, lease);
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_rev_is(&key, 0)],
            success: vec![op(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease,
                ..Default::default()
            }))],
            failure: vec![op(request_op::Request::RequestRange(get(&key)))],
        })
        .await?;
    let mut rev = resp.header.as_ref().map_or(0, |h| h.revision);
    if !resp.succeeded {
        let existing = range_kvs(&resp, 0).first().cloned().unwrap_or_default();
        rev = existing.create_revision;
        if existing.value != value
            && let Err(e) = proclaim_key(&server, &key, rev, &value).await
        {
            let _ = resign_key(&server, &key, rev).await;
            return Err(e);
        }
    }
    let waited = tokio::select! {
        r = wait_deletes(&server, &prefix, rev - 1) => r,
        _ = cancel => Err(Error::Canceled),
    };
    if let Err(e) = waited {
        if matches!(e, Error::Canceled) {
            let _ = resign_key(&server, &key, rev).await;
        }
        return Err(e);
    }
    Ok(CampaignResponse {
        header: resp.header,
        leader: Some(LeaderKey {
            name,
            key,
            rev,
            lease,
        }),
    })
}

/// `v3electionpb.Proclaim`.
pub async fn proclaim(
    server: &EtcdServer,
    leader: Option<LeaderKey>,
    value: &[u8],
) -> Result<ProclaimResponse> {
    let leader = leader.ok_or(Error::MissingLeaderKey)?;
    session_lease(server, leader.lease).await?;
    let header = proclaim_key(server, &leader.key, leader.rev, value).await?;
    Ok(ProclaimResponse {
        header: Some(header),
    })
}

/// `v3electionpb.Resign`.
pub async fn resign(server: &EtcdServer, leader: Option<LeaderKey>) -> Result<ResignResponse> {
    let leader = leader.ok_or(Error::MissingLeaderKey)?;
    session_lease(server, leader.lease).await?;
    let header = resign_key(server, &leader.key, leader.rev).await?;
    Ok(ResignResponse {
        header: Some(header),
    })
}

/// `v3electionpb.Leader`: the key with the smallest create revision under `<name>/`.
pub async fn leader(server: &EtcdServer, name: &[u8]) -> Result<LeaderResponse> {
    let prefix = with_slash(name);
    let resp = server
        .range(first_create(&prefix, range_request::SortOrder::Ascend))
        .await?;
    let Some(kv) = resp.kvs.into_iter().next() else {
        return Err(Error::ElectionNoLeader);
    };
    Ok(LeaderResponse {
        header: resp.header,
        kv: Some(kv),
    })
}

/// `v3electionpb.Observe`: etcd's `Election.observe`. Sends the leader, every change of its
/// value, and each new leader, until the client goes away (`tx` closes) or a read fails.
pub async fn observe(server: Arc<EtcdServer>, name: Vec<u8>, tx: mpsc::Sender<LeaderResponse>) {
    let prefix = with_slash(&name);
    let run = async {
        loop {
            let resp = server
                .range(first_create(&prefix, range_request::SortOrder::Ascend))
                .await?;
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            let (header, kv) = match resp.kvs.into_iter().next() {
                Some(kv) => (resp.header.unwrap_or_default(), kv),
                None => {
                    // Wait for the first key put under the prefix.
                    let filter = KeyFilter::new(prefix.clone(), prefix_end(&prefix));
                    let keep = move |e: &Event| {
                        e.r#type == EventType::Put as i32
                            && e.kv.as_ref().is_some_and(|kv| filter.matches(&kv.key))
                    };
                    let e = next_event(&server, rev, &keep).await?;
                    let kv = e.kv.unwrap_or_default();
                    (server.header(kv.mod_revision), kv)
                }
            };
            let key = kv.key.clone();
            let mut from = header.revision + 1;
            if tx
                .send(LeaderResponse {
                    header: Some(header),
                    kv: Some(kv),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            // Follow the leader key until it is deleted.
            let filter = KeyFilter::new(key, vec![]);
            let keep = move |e: &Event| e.kv.as_ref().is_some_and(|kv| filter.matches(&kv.key));
            loop {
                let e = next_event(&server, from, &keep).await?;
                let kv = e.kv.unwrap_or_default();
                if e.r#type == EventType::Delete as i32 {
                    break;
                }
                from = kv.mod_revision + 1;
                let header = server.header(server.current_rev());
                if tx
                    .send(LeaderResponse {
                        header: Some(header),
                        kv: Some(kv),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    };
    tokio::select! {
        r = run => {
            let r: Result<()> = r;
            if let Err(e) = r {
                tracing::debug!(error = %e, "election observer ended");
            }
        }
        _ = tx.closed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn session_keys_are_name_slash_hex_lease() {
        assert_eq!(session_key(&with_slash(b"foo"), 100), b"foo/64");
    }
}
