//! Bad input gets etcd's exact gRPC code and message, changes nothing, and the member keeps
//! serving. One in-process member on 127.0.0.1:0 per test.

mod common;

use common::{Member, member};
use concord_store::proto::etcdserverpb::{
    CompactionRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, kv_client::KvClient,
    request_op,
};
use tonic::Code;
use tonic::transport::Channel;

/// A member and a KV client to it.
struct Fixture {
    client: KvClient<Channel>,
    _member: Member,
}

async fn fixture() -> Fixture {
    let member = member().await;
    let client = KvClient::new(member.channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Fixture {
        client,
        _member: member,
    }
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn put_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(k, "v"))),
    }
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) {
    let s = r.expect_err("request must fail");
    assert_eq!((s.code(), s.message()), (code, message));
}

async fn still_serves(m: &mut Fixture) {
    m.client
        .put(put("alive", "yes"))
        .await
        .expect("member still serves writes");
    let got = m
        .client
        .range(RangeRequest {
            key: "alive".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().kvs[0].value, b"yes");
}

#[tokio::test]
async fn empty_keys_are_refused() {
    let mut m = fixture().await;
    assert_status(
        m.client.put(put("", "v")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_status(
        m.client.range(RangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    still_serves(&mut m).await;
}

#[tokio::test]
async fn oversized_request_is_too_large() {
    let mut m = fixture().await;
    // Over --max-request-bytes (1.5 MiB) but under gRPC's own limit: etcd's message.
    let big = "x".repeat(1536 * 1024 + 10);
    assert_status(
        m.client.put(put("big", &big)).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Just under the limit is fine.
    let ok = "x".repeat(1536 * 1024 - 100);
    m.client
        .put(put("big", &ok))
        .await
        .expect("a request under the limit is accepted");
    still_serves(&mut m).await;
}

#[tokio::test]
async fn txn_limits_and_duplicates() {
    let mut m = fixture().await;
    let many = TxnRequest {
        success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
        ..Default::default()
    };
    assert_status(
        m.client.txn(many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let exactly = TxnRequest {
        success: (0..128).map(|i| put_op(&format!("k{i}"))).collect(),
        ..Default::default()
    };
    m.client.txn(exactly).await.expect("128 ops are allowed");
    let dup = TxnRequest {
        success: vec![put_op("a"), put_op("a")],
        ..Default::default()
    };
    assert_status(
        m.client.txn(dup).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    still_serves(&mut m).await;
}

#[tokio::test]
async fn compacted_and_future_revisions() {
    let mut m = fixture().await;
    for v in ["1", "2", "3"] {
        m.client.put(put("k", v)).await.unwrap();
    }
    // Revisions 2, 3, 4. Compact to 3.
    m.client
        .compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await
        .unwrap();
    let at = |rev| RangeRequest {
        key: "k".into(),
        revision: rev,
        ..Default::default()
    };
    assert_status(
        m.client.range(at(2)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let got = m.client.range(at(3)).await.unwrap().into_inner();
    assert_eq!(
        got.kvs[0].value, b"2",
        "the compacted revision itself stays readable"
    );
    assert_status(
        m.client.range(at(100)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_status(
        m.client
            .compact(CompactionRequest {
                revision: 3,
                physical: false,
            })
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        m.client
            .compact(CompactionRequest {
                revision: 100,
                physical: false,
            })
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    still_serves(&mut m).await;
}

#[tokio::test]
async fn put_flag_misuse_and_unknown_lease() {
    let mut m = fixture().await;
    let mut p = put("k", "v");
    p.ignore_value = true;
    assert_status(
        m.client.put(p).await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    let mut p = put("k", "");
    p.ignore_lease = true;
    p.lease = 5;
    assert_status(
        m.client.put(p).await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    let mut p = put("missing", "");
    p.ignore_value = true;
    assert_status(
        m.client.put(p).await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    let mut p = put("k", "v");
    p.lease = 12345;
    assert_status(
        m.client.put(p).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let got = m
        .client
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.kvs.is_empty(), "failed requests wrote nothing");
    assert_eq!(
        got.header.unwrap().revision,
        1,
        "failed requests did not bump the revision"
    );
    still_serves(&mut m).await;
}
