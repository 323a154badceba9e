//! Leases over gRPC against an in-process member: grant (chosen, assigned, minimum and maximum
//! TTL), keys attached and deleted in one revision on revoke or expiry, keep-alive, time-to-live
//! and listing, and etcd's answers for unknown leases. With lease checkpointing on, checkpoints
//! go through raft and a keep-alive of a checkpointed lease resets it (restarts are covered by
//! `tests/tests/lease_checkpoint.rs`).

mod common;

use std::time::{Duration, Instant};

use common::member;
use concord_store::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

async fn grant(
    l: &mut LeaseClient<Channel>,
    ttl: i64,
    id: i64,
) -> Result<(i64, i64), tonic::Status> {
    let r = l
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await?
        .into_inner();
    Ok((r.id, r.ttl))
}

async fn put_with_lease(kv: &mut KvClient<Channel>, k: &str, lease: i64) -> i64 {
    let r = kv
        .put(PutRequest {
            key: k.into(),
            value: "v".into(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap();
    r.into_inner().header.unwrap().revision
}

async fn keys(kv: &mut KvClient<Channel>, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let r = kv
        .range(RangeRequest {
            key: prefix.into(),
            range_end: end,
            ..Default::default()
        })
        .await
        .unwrap();
    r.into_inner()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
}

#[tokio::test]
async fn grant_rules() {
    let m = member().await;
    let mut l = LeaseClient::new(m.channel.clone());
    // The minimum TTL with default flags is 2s (1.5 election timeouts, rounded up).
    let (id, ttl) = grant(&mut l, 1, 0).await.unwrap();
    assert!(id > 0);
    assert_eq!(ttl, 2);
    assert_eq!(grant(&mut l, 60, 42).await.unwrap(), (42, 60));
    let dup = grant(&mut l, 60, 42).await.unwrap_err();
    assert_eq!(
        (dup.code(), dup.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let big = grant(&mut l, 9_000_000_001, 0).await.unwrap_err();
    assert_eq!(
        (big.code(), big.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let listed = l
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|s| s.id).collect();
    ids.sort();
    let mut want = vec![id, 42];
    want.sort();
    assert_eq!(ids, want);
    let unknown = l
        .lease_revoke(LeaseRevokeRequest { id: 7 })
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let ttl = l
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 7, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1, "an unknown lease has TTL -1");
}

#[tokio::test]
async fn revoke_deletes_attached_keys_in_one_revision() {
    let m = member().await;
    let mut l = LeaseClient::new(m.channel.clone());
    let mut kv = KvClient::new(m.channel.clone());
    let (id, _) = grant(&mut l, 60, 0).await.unwrap();
    put_with_lease(&mut kv, "lk/a", id).await;
    let rev = put_with_lease(&mut kv, "lk/b", id).await;
    // Moving a key to no lease detaches it.
    put_with_lease(&mut kv, "lk/c", id).await;
    put_with_lease(&mut kv, "lk/c", 0).await;
    let ttl = l
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.keys, vec![b"lk/a".to_vec(), b"lk/b".to_vec()]);
    assert_eq!(ttl.granted_ttl, 60);
    assert!(ttl.ttl > 55 && ttl.ttl <= 60, "{}", ttl.ttl);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut w = WatchClient::new(m.channel.clone());
    let mut events = w.watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "lk/".into(),
            range_end: "lk0".into(),
            start_revision: rev + 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    assert!(events.message().await.unwrap().unwrap().created);
    let r = l
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner();
    let revoke_rev = r.header.unwrap().revision;
    assert_eq!(keys(&mut kv, "lk/").await, vec!["lk/c"]);
    // Events after `rev`: the two puts of lk/c, then both deletes in one response.
    let mut last = None;
    while last.is_none() {
        let resp = events.message().await.unwrap().unwrap();
        if resp.events.iter().any(|e| e.r#type == 1) {
            last = Some(resp);
        }
    }
    let deletes = last.unwrap().events;
    assert_eq!(deletes.len(), 2, "a revoke's deletes arrive together");
    assert!(
        deletes
            .iter()
            .all(|e| e.kv.as_ref().unwrap().mod_revision == revoke_rev)
    );
}

#[tokio::test]
async fn expiry_revokes_through_raft_and_keep_alive_extends() {
    let m = member().await;
    let mut l = LeaseClient::new(m.channel.clone());
    let mut kv = KvClient::new(m.channel.clone());
    let (short, _) = grant(&mut l, 2, 0).await.unwrap();
    let (kept, _) = grant(&mut l, 2, 0).await.unwrap();
    put_with_lease(&mut kv, "exp/short", short).await;
    put_with_lease(&mut kv, "exp/kept", kept).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut ka = l
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let start = Instant::now();
    // Keep `kept` alive every 500 ms; `short` must go within its TTL plus the 500 ms check.
    while keys(&mut kv, "exp/")
        .await
        .contains(&"exp/short".to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the expired lease was never revoked"
        );
        tx.send(LeaseKeepAliveRequest { id: kept }).await.unwrap();
        let r = ka.message().await.unwrap().unwrap();
        assert_eq!((r.id, r.ttl), (kept, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "deleted too early: {:?}",
        start.elapsed()
    );
    assert_eq!(keys(&mut kv, "exp/").await, vec!["exp/kept"]);
    // Keep-alive of a lease that is gone answers TTL 0.
    tx.send(LeaseKeepAliveRequest { id: short }).await.unwrap();
    assert_eq!(ka.message().await.unwrap().unwrap().ttl, 0);
    let put = kv
        .put(PutRequest {
            key: "x".into(),
            lease: short,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (put.code(), put.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
}

async fn raft_index(ch: &Channel) -> u64 {
    use concord_store::proto::etcdserverpb::{
        StatusRequest, maintenance_client::MaintenanceClient,
    };
    MaintenanceClient::new(ch.clone())
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .raft_index
}

#[tokio::test]
async fn checkpoints_go_through_raft_and_keep_alive_resets_them() {
    let m = common::member_with(|c| {
        c.lease_checkpoint = true;
        c.lease_checkpoint_persist = true;
        // Longer than the election timeout that promotion adds, or the first checkpoint after
        // a promotion finds nothing to checkpoint (remaining >= TTL), as in etcd.
        c.lease_checkpoint_interval = Duration::from_secs(2);
    })
    .await;
    let mut l = LeaseClient::new(m.channel.clone());
    let (id, _) = grant(&mut l, 30, 0).await.unwrap();
    // Wait for leadership, the lessor's promotion and a checkpoint or two (each a raft entry
    // that changes no revision).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = raft_index(&m.channel).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while raft_index(&m.channel).await < before + 2 {
        assert!(Instant::now() < deadline, "no lease checkpoint was applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ttl = l
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 15 && ttl.ttl < 30, "remaining {}", ttl.ttl);
    // A keep-alive of a checkpointed lease proposes a reset, then renews to the full TTL.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut resp = l
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    assert_eq!(resp.message().await.unwrap().unwrap().ttl, 30);
    let ttl = l
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner();
    // Renewing restarts from the remaining TTL (etcd's `refresh`), so only an applied reset
    // gives the full TTL back.
    assert!(ttl.ttl >= 28, "remaining {}", ttl.ttl);
}

#[tokio::test]
async fn no_checkpoints_without_the_flag() {
    let m = common::member_with(|c| c.lease_checkpoint_interval = Duration::from_secs(1)).await;
    let mut l = LeaseClient::new(m.channel.clone());
    grant(&mut l, 30, 0).await.unwrap();
    // Let the grant (and the member's own startup entries) show in the status first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = raft_index(&m.channel).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(raft_index(&m.channel).await, before);
}
