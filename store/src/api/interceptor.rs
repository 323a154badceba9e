//! What etcd's gRPC interceptors do before any service sees a request:
//! - a learner serves only `Status` and serializable `Range` (the serializable check is the
//!   server's, which sees the request); everything else fails with `etcdserver: rpc not
//!   supported for learner`;
//! - a request with the metadata `hasleader: true` (etcd's `clientv3.WithRequireLeader`, which
//!   kube-apiserver sets) fails with Unavailable `etcdserver: no leader` while this member knows
//!   no leader, instead of waiting for one.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

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
    next.run(req).await
}
