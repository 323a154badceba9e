//! The client-facing api: etcd's gRPC services and the HTTP endpoints, served together on
//! each client listener (gRPC over HTTP/2, the rest over HTTP/1).
//!
//! One file per etcd service. Services validate input, call `server`, and let
//! `Error -> Status` (in `error`) produce etcd's codes and texts. Nothing here touches raft or
//! storage directly.

pub mod authority;
pub mod cluster;
pub mod http;
pub mod interceptor;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::server::EtcdServer;

/// gRPC's framing overhead that etcd allows on top of `--max-request-bytes`.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The full router of a client listener.
pub fn router(server: Arc<EtcdServer>) -> axum::Router {
    let max_recv = server.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    let grpc = tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        server.clone(),
    )));
    grpc.into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            interceptor::require_leader,
        ))
        .merge(http::router(server))
}

/// Serves the client api on `listener` until `shutdown` resolves.
pub async fn serve_client(
    listener: TcpListener,
    server: Arc<EtcdServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Every connection is read through `FixAuthority` (etcdctl 3.4's `http://` authorities).
    let listener = authority::FixAuthorityListener(listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    }));
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
}
