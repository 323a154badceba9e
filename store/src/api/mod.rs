//! The client-facing api: etcd's gRPC services and the HTTP endpoints, served together on
//! each client listener (gRPC over HTTP/2, the rest over HTTP/1).
//!
//! One file per etcd service. Services validate input, call `server`, and let
//! `Error -> Status` (in `error`) produce etcd's codes and texts. Nothing here touches raft or
//! storage directly. HTTP requests to a client listener (not gRPC, not the metrics listener)
//! pass etcd's access controller ([`router`]'s `access_control` layer): `--host-whitelist` on
//! plain HTTP, and CORS headers for `--cors` on every answer.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod coalesce;
pub mod election;
pub mod gateway;
pub mod http;
pub mod interceptor;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::server::EtcdServer;

/// gRPC's framing overhead that etcd allows on top of `--max-request-bytes`.
pub(crate) const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The full router of a client listener; `plain` for an `http` (not TLS) one.
pub fn router(server: Arc<EtcdServer>, plain: bool) -> axum::Router {
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
    )))
    .add_service(
        AuthServer::new(auth::AuthService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LockServer::new(lock::LockService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        ElectionServer::new(election::ElectionService::new(server.clone()))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
    );
    let gateway = gateway::router(grpc.clone(), max_recv);
    // The access controller wraps the HTTP routes and the fallback, not the gRPC routes: it
    // would only pass their calls through, at a cost on every one.
    let access = axum::middleware::from_fn_with_state((server.clone(), plain), access_control);
    let http = http::router(server.clone())
        .merge(gateway)
        .layer(access.clone());
    let fallback = axum::Router::new().fallback(not_found).layer(access);
    grpc.into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            server,
            interceptor::require_leader,
        ))
        .merge(http)
        .fallback_service(fallback)
}

/// etcd's access controller for HTTP requests to a client listener (gRPC calls pass untouched).
///
/// On plain HTTP, a `Host` name `--host-whitelist` does not list is refused with 421 and etcd's
/// explanation (DNS rebinding, CVE-2018-5702). Every answer carries CORS headers for `--cors`,
/// and `OPTIONS` (a browser's preflight) is answered 200 at once. `*`, or nothing listed,
/// allows any host or origin; otherwise the request's `Origin` must be listed, and is echoed.
async fn access_control(
    axum::extract::State((server, plain)): axum::extract::State<(Arc<EtcdServer>, bool)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, Method, StatusCode, header};
    use axum::response::IntoResponse;
    if is_grpc(&req) {
        return next.run(req).await;
    }
    let cfg = server.config();
    if plain {
        let host = request_hostname(&req);
        if !allows_any(&cfg.host_whitelist) && !cfg.host_whitelist.contains(&host) {
            tracing::warn!(
                host,
                "rejecting HTTP request to prevent DNS rebinding attacks"
            );
            let body = format!(
                "\netcd received your request, but the Host header was unrecognized.\n\n\
                 To fix this, choose one of the following options:\n\
                 - Enable TLS, then any HTTPS request will be allowed.\n\
                 - Add the hostname you want to use to the whitelist in settings.\n  \
                 - e.g. etcd --host-whitelist {host:?}\n\n\
                 This requirement has been added to help prevent \"DNS Rebinding\" attacks \
                 (CVE-2018-5702).\n\n"
            );
            return http::text((StatusCode::MISDIRECTED_REQUEST, body).into_response());
        }
    }
    let allowed = &cfg.cors;
    let origin = if allows_any(allowed) {
        Some(HeaderValue::from_static("*"))
    } else {
        req.headers()
            .get(header::ORIGIN)
            .filter(|o| allowed.iter().any(|a| a.as_bytes() == o.as_bytes()))
            .cloned()
    };
    let mut resp = if req.method() == Method::OPTIONS {
        axum::http::StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
    resp
}

/// Whether a `--cors` or `--host-whitelist` list allows anything: `*`, or nothing listed.
fn allows_any(list: &[String]) -> bool {
    list.is_empty() || list.iter().any(|x| x == "*")
}

/// The host name a request was sent to (its `Host`, or its URI's authority), without the
/// port, as Go's `httputil.GetHostname`.
fn request_hostname(req: &axum::extract::Request) -> String {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // Go's `net.SplitHostPort`: `[v6]:port` or `name:port`; anything else is the host itself.
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, port)) = rest.split_once("]:")
        && !port.contains(':')
    {
        return h.to_owned();
    }
    match host.rsplit_once(':') {
        Some((h, _)) if !h.contains(':') && !h.contains('[') => h.to_owned(),
        _ => host,
    }
}

/// Whether `req` is a gRPC call (by its content type).
fn is_grpc(req: &axum::extract::Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// What etcd answers for a path it does not serve: gRPC's Unimplemented to a gRPC request, the
/// gateway's JSON 404 under `/v3/` (and `/v3beta/`, which etcd rewrites to it), and Go's
/// plain-text 404 to any other HTTP request.
async fn not_found(req: axum::extract::Request) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;
    if is_grpc(&req) {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    let path = req.uri().path();
    if path.starts_with("/v3/") || path.starts_with("/v3beta/") {
        return (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            r#"{"code":5, "message":"Not Found"}"#,
        )
            .into_response();
    }
    http::not_found().await
}

/// How long a shutdown waits for open connections (watch streams never end by themselves).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the client api on `listener` until `shutdown` resolves; see [`serve`].
pub async fn serve_client(
    listener: TcpListener,
    server: Arc<EtcdServer>,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let plain = tls.is_none();
    serve(listener, router(server, plain), tls, shutdown).await
}

/// Serves `app` on `listener` until `shutdown` resolves.
///
/// HTTP/1 and HTTP/2 share the port. HTTP/2 allows unlimited concurrent streams per connection,
/// as etcd's `--max-concurrent-streams` default does: clients such as kube-apiserver open many
/// watch streams on one connection. Every connection is read through
/// [`authority::FixAuthority`] (etcdctl 3.4 sends `http://` authorities) and written through
/// [`coalesce::CoalesceWrites`] (answers ready together leave in one write).
///
/// With `tls` (an `https` listener) each connection's handshake runs in its own task, and every
/// request carries the verified client certificate's common name
/// ([`crate::tls::ClientCertCommonName`]) when client certificates are required.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    use coalesce::CoalesceWrites;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(u32::MAX);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "failed to accept a client connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if let Some(tls) = &tls {
                    let (tls, app, builder) = (tls.clone(), app.clone(), builder.clone());
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let (stream, cn) = match tls.accept(tcp).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "client TLS handshake failed");
                                return;
                            }
                        };
                        let io = TokioIo::new(CoalesceWrites::new(authority::FixAuthority::new(stream)));
                        let svc = TowerToHyperService::new(crate::tls::WithCommonName::new(app, cn));
                        let conn = builder.serve_connection_with_upgrades(io, svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    });
                    continue;
                }
                let io = TokioIo::new(CoalesceWrites::new(authority::FixAuthority::new(tcp)));
                let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
