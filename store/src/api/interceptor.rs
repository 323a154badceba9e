//! What etcd's gRPC interceptors do before any service sees a request:
//! - a learner serves only `Status` and serializable `Range` (the serializable check is the
//!   server's, which sees the request); everything else fails with `etcdserver: rpc not
//!   supported for learner`;
//! - a request with the metadata `hasleader: true` (etcd's `clientv3.WithRequireLeader`, which
//!   kube-apiserver sets) fails with Unavailable `etcdserver: no leader` while this member knows
//!   no leader, instead of waiting for one. Such a request's response stream (a watch, a
//!   keep-alive) is ended with that error once the member has known no leader at
//!   [`NO_LEADER_CHECKS`] election-timeout checks in a row, as etcd's `monitorLeader` does, so
//!   the client reconnects to a member that has one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::error::Error;
use crate::server::EtcdServer;

/// etcd's `rpctypes.MetadataRequireLeaderKey`.
pub const REQUIRE_LEADER_KEY: &str = "hasleader";
/// etcd's `rpctypes.MetadataHasLeader`.
pub const HAS_LEADER: &str = "true";

/// The rpcs a learner serves (etcd's `isRPCSupportedForLearner`).
const LEARNER_RPCS: &[&str] = &["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

/// Middleware for the gRPC routes: refuses require-leader requests while there is no leader.
pub async fn require_leader(
    State(server): State<Arc<EtcdServer>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if server.raft_status().is_learner && !LEARNER_RPCS.contains(&path) {
        return tonic::Status::from(Error::NotSupportedForLearner).into_http();
    }
    let required = req
        .headers()
        .get(REQUIRE_LEADER_KEY)
        .is_some_and(|v| v.as_bytes() == HAS_LEADER.as_bytes());
    if required && server.raft_status().leader == 0 {
        return tonic::Status::from(Error::NoLeader).into_http();
    }
    let resp = next.run(req).await;
    if !required {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let lost = Box::pin(leader_lost(server));
    Response::from_parts(
        parts,
        Body::new(EndOnLeaderLoss {
            inner: body,
            lost: Some(lost),
        }),
    )
}

/// Consecutive election-timeout checks without a leader that end require-leader streams
/// (etcd's `maxNoLeaderCnt`).
pub const NO_LEADER_CHECKS: u32 = 3;

/// Resolves once `server` has known no leader at [`NO_LEADER_CHECKS`] checks in a row, one
/// check per election timeout.
async fn leader_lost(server: Arc<EtcdServer>) {
    let every = server.config().raft.election_timeout;
    let mut without = 0;
    while without < NO_LEADER_CHECKS {
        tokio::time::sleep(every).await;
        if server.raft_status().leader == 0 {
            without += 1;
        } else {
            without = 0;
        }
    }
}

/// A require-leader response body: the inner body until [`leader_lost`], then gRPC trailers
/// with Unavailable `etcdserver: no leader`.
struct EndOnLeaderLoss {
    inner: Body,
    /// `None` once the trailers went out.
    lost: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl http_body::Body for EndOnLeaderLoss {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(lost) = self.lost.as_mut() else {
            return Poll::Ready(None);
        };
        if lost.as_mut().poll(cx).is_ready() {
            self.lost = None;
            tracing::warn!(
                "ending a require-leader stream: no leader for {NO_LEADER_CHECKS} election timeouts"
            );
            let status = tonic::Status::from(Error::NoLeader);
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_ok() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.lost = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.lost.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
