//! The peer transport in one process: a [`Transport`] delivers raft messages to a member's
//! [`PeerService`] over gRPC; the service refuses envelopes from another cluster or meant for
//! another member with etcd-style explanations; a member that cannot be reached is reported
//! unreachable to raft.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use concord_store::backend::Backend;
use concord_store::proto::concordpb::RaftEnvelope;
use concord_store::proto::concordpb::peer_client::PeerClient;
use concord_store::proto::etcdserverpb::{
    LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberPromoteResponse,
};
use concord_store::raft::Msg;
use concord_store::transport::{LeaderCalls, PeerService, Transport, serve_peers};
use raft::eraftpb::{Message, MessageType};
use tokio::net::TcpListener;

const CLUSTER: u64 = 0xc1;

/// A member that never leads.
struct NoLessor;

#[tonic::async_trait]
impl LeaderCalls for NoLessor {
    async fn renew_as_leader(
        &self,
        _: i64,
    ) -> concord_store::error::Result<LeaseKeepAliveResponse> {
        Err(concord_store::error::Error::NotLeader)
    }
    async fn time_to_live_as_leader(
        &self,
        _: LeaseTimeToLiveRequest,
    ) -> concord_store::error::Result<LeaseTimeToLiveResponse> {
        Err(concord_store::error::Error::NotLeader)
    }
    async fn promote_as_leader(
        &self,
        _: u64,
    ) -> concord_store::error::Result<MemberPromoteResponse> {
        Err(concord_store::error::Error::NotLeader)
    }
}

/// A member's peer service on a port of its own; keep the temp dir alive while it serves.
async fn member(id: u64) -> (String, mpsc::Receiver<Msg>, tempfile::TempDir) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Backend::open(dir.path()).unwrap());
    tokio::spawn(serve_peers(
        listener,
        PeerService::new(id, CLUSTER, tx, backend, Arc::new(NoLessor)),
        None,
        std::future::pending(),
    ));
    (url, rx, dir)
}

fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// Waits (off the async threads) for the next message stepped into a member.
async fn next_step(rx: mpsc::Receiver<Msg>) -> (Message, mpsc::Receiver<Msg>) {
    tokio::task::spawn_blocking(move || match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Msg::Step(m)) => (m, rx),
        Ok(_) => panic!("expected a raft message"),
        Err(e) => panic!("no raft message arrived: {e}"),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_peer_in_order() {
    let (url, rx, _dir) = member(2).await;
    let t = Transport::new(1, CLUSTER, None, tokio::runtime::Handle::current());
    t.add_peer(2, vec![url]);
    t.send(vec![heartbeat(1, 2, 7), heartbeat(1, 2, 8)]);
    let (m, rx) = next_step(rx).await;
    assert_eq!((m.from, m.to, m.term), (1, 2, 7));
    assert_eq!(m.get_msg_type(), MessageType::MsgHeartbeat);
    let (m, _) = next_step(rx).await;
    assert_eq!(m.term, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_member_is_refused() {
    let (url, _rx, _dir) = member(2).await;
    let mut client = PeerClient::connect(url).await.unwrap();
    let env = RaftEnvelope {
        cluster_id: 0xbad,
        from: 9,
        to: 2,
        messages: vec![],
    };
    let err = client
        .stream(tokio_stream::iter(vec![env]))
        .await
        .expect_err("a foreign cluster's stream was accepted");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().starts_with(
            "cluster ID mismatch: member 2 belongs to cluster c1, but the sender 9 belongs to \
             cluster bad"
        ),
        "{}",
        err.message()
    );
    let env = RaftEnvelope {
        cluster_id: CLUSTER,
        from: 9,
        to: 3,
        messages: vec![],
    };
    let err = client
        .stream(tokio_stream::iter(vec![env]))
        .await
        .expect_err("a stream for another member was accepted");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().starts_with("member ID mismatch"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_member_is_reported() {
    // A port nothing listens on: bind, note the address, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t = Transport::new(1, CLUSTER, None, tokio::runtime::Handle::current());
    t.add_peer(3, vec![format!("http://{addr}")]);
    // A member the transport does not know is reported at once.
    t.send(vec![heartbeat(1, 4, 1)]);
    assert_eq!(t.take_unreachable(), vec![4]);
    let start = Instant::now();
    loop {
        t.send(vec![heartbeat(1, 3, 1)]);
        if t.take_unreachable().contains(&3) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reported unreachable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
