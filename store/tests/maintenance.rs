//! Maintenance, Lock and Election over gRPC against an in-process member: alarms raised and
//! cleared through raft with etcd's capped writes, the quota raising NOSPACE, defragmentation
//! shrinking the file, Hash and HashKV, the snapshot stream and its digest, and the Lock and
//! Election services (creation-order waiters, release on lease revoke, observe, errors).

mod common;

use std::time::Duration;

use common::{member, member_with};
use concord_store::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    HashKvRequest, HashRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    SnapshotRequest, StatusRequest, TxnRequest, alarm_request::AlarmAction, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient,
};
use concord_store::proto::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest, election_client::ElectionClient,
};
use concord_store::proto::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

fn put(k: &str, v: Vec<u8>) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v,
        ..Default::default()
    }
}

async fn alarm(
    m: &mut MaintenanceClient<Channel>,
    action: AlarmAction,
    member_id: u64,
    alarm: AlarmType,
) -> Vec<AlarmMember> {
    m.alarm(AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    })
    .await
    .unwrap()
    .into_inner()
    .alarms
}

#[tokio::test]
async fn alarms_cap_writes_until_disarmed() {
    let s = member().await;
    let mut kv = KvClient::new(s.channel.clone());
    let mut lease = LeaseClient::new(s.channel.clone());
    let mut m = MaintenanceClient::new(s.channel.clone());
    kv.put(put("k", b"v".to_vec())).await.unwrap();
    assert!(
        alarm(&mut m, AlarmAction::Get, 0, AlarmType::None)
            .await
            .is_empty()
    );
    // Raising: the response names the alarm; Status lists it as etcd words it.
    let raised = alarm(&mut m, AlarmAction::Activate, 42, AlarmType::Nospace).await;
    assert_eq!(raised.len(), 1);
    let st = m.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.errors, vec!["memberID:42 alarm:NOSPACE ".to_string()]);
    // Capped: puts, txns with puts and lease grants fail; reads, deletes and read-only txns work.
    let err = kv.put(put("k2", b"v".to_vec())).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
    let err = lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
    let txn_put = TxnRequest {
        compare: vec![],
        success: vec![concord_store::proto::etcdserverpb::RequestOp {
            request: Some(
                concord_store::proto::etcdserverpb::request_op::Request::RequestPut(put(
                    "t",
                    vec![],
                )),
            ),
        }],
        failure: vec![],
    };
    assert_eq!(
        kv.txn(txn_put.clone()).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    let got = kv
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    kv.delete_range(DeleteRangeRequest {
        key: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // GET filters by type; disarming answers with what it cleared, then writes work again.
    assert!(
        alarm(&mut m, AlarmAction::Get, 0, AlarmType::Corrupt)
            .await
            .is_empty()
    );
    assert_eq!(
        alarm(&mut m, AlarmAction::Get, 0, AlarmType::Nospace).await,
        raised
    );
    assert!(
        alarm(&mut m, AlarmAction::Deactivate, 7, AlarmType::Nospace)
            .await
            .is_empty()
    );
    assert_eq!(
        alarm(&mut m, AlarmAction::Deactivate, 42, AlarmType::Nospace).await,
        raised
    );
    kv.txn(txn_put).await.unwrap();
    assert!(
        m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .errors
            .is_empty()
    );
}

#[tokio::test]
async fn quota_raises_nospace_and_defrag_shrinks_the_file() {
    let s = member_with(|c| c.quota_backend_bytes = 2 << 20).await;
    let mut kv = KvClient::new(s.channel.clone());
    let mut m = MaintenanceClient::new(s.channel.clone());
    let big = vec![b'x'; 100 * 1024];
    let mut failed = None;
    for i in 0..100 {
        if let Err(e) = kv.put(put(&format!("big/{i:03}"), big.clone())).await {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("the quota must stop the writes");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
    let own = m.status(StatusRequest {}).await.unwrap().into_inner();
    let member_id = own.header.unwrap().member_id;
    assert_eq!(
        alarm(&mut m, AlarmAction::Get, 0, AlarmType::None).await,
        vec![AlarmMember {
            member_id,
            alarm: AlarmType::Nospace as i32
        }]
    );
    // etcd's recovery: delete, compact, defragment, disarm.
    let del = kv
        .delete_range(DeleteRangeRequest {
            key: "big/".into(),
            range_end: "big0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    kv.compact(CompactionRequest {
        revision: del.header.unwrap().revision,
        physical: true,
    })
    .await
    .unwrap();
    let before = own.db_size;
    m.defragment(DefragmentRequest {}).await.unwrap();
    let after = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .db_size;
    assert!(after < before / 4, "defragment: {before} -> {after} bytes");
    alarm(
        &mut m,
        AlarmAction::Deactivate,
        member_id,
        AlarmType::Nospace,
    )
    .await;
    kv.put(put("small", b"v".to_vec())).await.unwrap();
}

#[tokio::test]
async fn hashes_and_snapshot_stream() {
    let s = member().await;
    let mut kv = KvClient::new(s.channel.clone());
    let mut m = MaintenanceClient::new(s.channel.clone());
    for i in 0..5 {
        kv.put(put(&format!("k{i}"), vec![b'v'; 10])).await.unwrap();
    }
    let h = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.header.unwrap().revision, 6);
    assert_eq!(h.compact_revision, -1);
    let h4 = m
        .hash_kv(HashKvRequest { revision: 4 })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(h4.hash, h.hash);
    let err = m.hash_kv(HashKvRequest { revision: 99 }).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let whole = m.hash(HashRequest {}).await.unwrap().into_inner();
    assert_eq!(whole.header.unwrap().revision, 6);
    // The stream: chunks counting down `remaining_bytes`, then the SHA-256 of all of them.
    let mut stream = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        chunks.push(r);
    }
    let (digest, data) = chunks.split_last().unwrap();
    assert_eq!(data.last().unwrap().remaining_bytes, 0);
    let bytes: Vec<u8> = data.iter().flat_map(|c| c.blob.clone()).collect();
    assert_eq!(bytes.len() % 512, 0);
    assert_eq!(digest.blob, Sha256::digest(&bytes).to_vec());
    // The hash is unchanged by taking a snapshot.
    let again = m
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.hash, h.hash);
}

async fn grant(l: &mut LeaseClient<Channel>, ttl: i64) -> i64 {
    l.lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test]
async fn lock_waiters_are_served_in_creation_order() {
    let s = member().await;
    let mut lease = LeaseClient::new(s.channel.clone());
    let mut lock = LockClient::new(s.channel.clone());
    let (l1, l2, l3) = (
        grant(&mut lease, 60).await,
        grant(&mut lease, 60).await,
        grant(&mut lease, 60).await,
    );
    let first = lock
        .lock(LockRequest {
            name: "L".into(),
            lease: l1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.key, format!("L/{l1:x}").into_bytes());
    // Re-locking with the same lease answers at once with the same key.
    let again = lock
        .lock(LockRequest {
            name: "L".into(),
            lease: l1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.key, first.key);
    let spawn_lock = |lease_id: i64| {
        let mut c = LockClient::new(s.channel.clone());
        tokio::spawn(async move {
            c.lock(LockRequest {
                name: "L".into(),
                lease: lease_id,
            })
            .await
            .map(|r| r.into_inner().key)
        })
    };
    let second = spawn_lock(l2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = spawn_lock(l3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished() && !third.is_finished());
    lock.unlock(UnlockRequest { key: first.key }).await.unwrap();
    let k2 = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(k2, format!("L/{l2:x}").into_bytes());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !third.is_finished(),
        "the third waiter must wait for the second"
    );
    // A lease's revoke releases what it holds.
    lease
        .lease_revoke(LeaseRevokeRequest { id: l2 })
        .await
        .unwrap();
    let k3 = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(k3, format!("L/{l3:x}").into_bytes());
    // etcd's errors through its internal client: code Unknown, etcd's text.
    let err = lock
        .lock(LockRequest {
            name: "L".into(),
            lease: 12345,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "etcdserver: requested lease not found")
    );
}

#[tokio::test]
async fn abandoned_lock_waiter_leaves_no_key() {
    let s = member().await;
    let mut lease = LeaseClient::new(s.channel.clone());
    let mut lock = LockClient::new(s.channel.clone());
    let mut kv = KvClient::new(s.channel.clone());
    let (l1, l2) = (grant(&mut lease, 60).await, grant(&mut lease, 60).await);
    lock.lock(LockRequest {
        name: "A".into(),
        lease: l1,
    })
    .await
    .unwrap();
    let waiter = {
        let mut c = LockClient::new(s.channel.clone());
        tokio::spawn(async move {
            c.lock(LockRequest {
                name: "A".into(),
                lease: l2,
            })
            .await
        })
    };
    let count = |kv: &mut KvClient<Channel>| {
        let mut kv = kv.clone();
        async move {
            kv.range(RangeRequest {
                key: "A/".into(),
                range_end: "A0".into(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&mut kv).await, 2);
    waiter.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count(&mut kv).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiter key not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn election_campaign_observe_proclaim_resign() {
    let s = member().await;
    let mut lease = LeaseClient::new(s.channel.clone());
    let mut e = ElectionClient::new(s.channel.clone());
    let err = e
        .leader(LeaderRequest { name: "E".into() })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "election: no leader")
    );
    let err = e
        .proclaim(ProclaimRequest {
            leader: None,
            value: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "\"leader\" field must be provided");
    let mut observer = e
        .observe(LeaderRequest { name: "E".into() })
        .await
        .unwrap()
        .into_inner();
    let (l1, l2) = (grant(&mut lease, 60).await, grant(&mut lease, 60).await);
    let won = e
        .campaign(CampaignRequest {
            name: "E".into(),
            lease: l1,
            value: "one".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let leader = won.leader.unwrap();
    assert_eq!(leader.key, format!("E/{l1:x}").into_bytes());
    assert_eq!(leader.rev, won.header.unwrap().revision);
    assert_eq!(
        next_leader(&mut observer).await,
        (format!("E/{l1:x}"), "one".into())
    );
    // A second candidate waits; proclaiming changes the value everybody observes.
    let second = {
        let mut c = ElectionClient::new(s.channel.clone());
        tokio::spawn(async move {
            c.campaign(CampaignRequest {
                name: "E".into(),
                lease: l2,
                value: "two".into(),
            })
            .await
        })
    };
    e.proclaim(ProclaimRequest {
        leader: Some(leader.clone()),
        value: "uno".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        next_leader(&mut observer).await,
        (format!("E/{l1:x}"), "uno".into())
    );
    let got = e
        .leader(LeaderRequest { name: "E".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kv.unwrap().value, b"uno");
    assert!(!second.is_finished());
    // Proclaiming with a stale leader key fails as etcd's.
    let mut stale = leader.clone();
    stale.rev += 100;
    let err = e
        .proclaim(ProclaimRequest {
            leader: Some(stale),
            value: "no".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "election: not leader");
    e.resign(ResignRequest {
        leader: Some(leader),
    })
    .await
    .unwrap();
    let won2 = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(won2.leader.unwrap().key, format!("E/{l2:x}").into_bytes());
    assert_eq!(
        next_leader(&mut observer).await,
        (format!("E/{l2:x}"), "two".into())
    );
}

async fn next_leader(
    o: &mut tonic::Streaming<concord_store::proto::v3electionpb::LeaderResponse>,
) -> (String, String) {
    let kv = tokio::time::timeout(Duration::from_secs(5), o.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .kv
        .unwrap();
    (
        String::from_utf8(kv.key).unwrap(),
        String::from_utf8(kv.value).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defragment_under_concurrent_writes_and_reads() {
    let s = member().await;
    let mut m = MaintenanceClient::new(s.channel.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut kv = KvClient::new(s.channel.clone());
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                kv.put(put(&format!("w{w}/{}", n % 50), vec![b'v'; 1000]))
                    .await
                    .unwrap();
                kv.range(RangeRequest {
                    key: format!("w{w}/").into(),
                    range_end: format!("w{w}0").into(),
                    ..Default::default()
                })
                .await
                .unwrap();
                n += 1;
            }
            n
        }));
    }
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(30), m.defragment(DefragmentRequest {}))
            .await
            .expect("defragment finishes")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        assert!(w.await.unwrap() > 0);
    }
    // The hash is still computable and a snapshot can still be taken.
    m.hash_kv(HashKvRequest { revision: 0 }).await.unwrap();
}
