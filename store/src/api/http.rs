//! HTTP/1 endpoints on the client port: `/health`, `/livez`, `/readyz`, `/version` and
//! `/metrics`, with etcd 3.5's bodies and status codes; the same but `/version` on each
//! `--listen-metrics-urls` listener ([`metrics_router`]), as etcd's metrics mux.
//!
//! `/livez` and `/readyz` are etcd 3.5's check registries: `/livez` runs `serializable_read`,
//! `/readyz` runs `data_corruption`, `serializable_read` and `linearizable_read`. Each check
//! also has its own path (`/readyz/linearizable_read`); `?exclude=<check>` skips one and
//! `?verbose` lists every result (`[+]name ok`) before `ok`. A failure answers 503 with every
//! result (`[-]name failed: <error>`); methods other than GET answer 405.
//!
//! Metric names are etcd's where etcd has the metric. Values are read from the server at scrape
//! time; this module keeps no counters of its own.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};
use crate::server::EtcdServer;

/// Routes of the HTTP endpoints on a client listener (the client router adds the fallback:
/// it also serves gRPC).
pub fn router(server: Arc<EtcdServer>) -> Router {
    health_and_metrics()
        .route("/version", get(version))
        .with_state(server)
}

/// Routes of a `--listen-metrics-urls` listener: metrics and the health checks.
pub fn metrics_router(server: Arc<EtcdServer>) -> Router {
    health_and_metrics().fallback(not_found).with_state(server)
}

fn health_and_metrics() -> Router<Arc<EtcdServer>> {
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    let router = registry_routes(router, "/livez", LIVEZ);
    registry_routes(router, "/readyz", READYZ)
}

/// etcd's health check: a leader exists and a linearizable read succeeds.
async fn check(server: &EtcdServer) -> Result<(), String> {
    if server.raft_status().leader == 0 {
        return Err("RAFT NO LEADER".into());
    }
    let read = tokio::time::timeout(Duration::from_secs(1), server.linearizable_read_barrier());
    match read.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("QGET ERROR:{e} ")),
        Err(_) => Err("QGET ERROR:etcdserver: request timed out ".into()),
    }
}

fn json(code: StatusCode, body: String) -> impl IntoResponse {
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn health(State(server): State<Arc<EtcdServer>>) -> impl IntoResponse {
    match check(&server).await {
        Ok(()) => json(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Err(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}).to_string(),
        ),
    }
}

/// One of etcd's named health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
}

/// `/livez`'s checks.
const LIVEZ: &[Check] = &[Check::SerializableRead];
/// `/readyz`'s checks.
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }

    /// Runs the check: etcd's `activeAlarmCheck(CORRUPT)` or `readCheck` (a keys-only range of
    /// one key, as root).
    async fn run(self, server: &EtcdServer) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                let alarms = server.alarms().map_err(|e| e.to_string())?;
                if alarms.iter().any(|a| a.alarm == AlarmType::Corrupt as i32) {
                    return Err("alarm activated: CORRUPT".into());
                }
                Ok(())
            }
            Check::SerializableRead | Check::LinearizableRead => {
                let serializable = self == Check::SerializableRead;
                if !serializable {
                    if server.raft_status().is_learner {
                        return Err(Error::NotSupportedForLearner.to_string());
                    }
                    server
                        .linearizable_read_barrier()
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let req = RangeRequest {
                    keys_only: true,
                    limit: 1,
                    serializable,
                    ..Default::default()
                };
                let view = server.read_view().map_err(|e| e.to_string())?;
                crate::apply::range(&view, &req).map_err(|e| e.to_string())?;
                Ok(())
            }
        }
    }
}

/// The `exclude` and `verbose` query parameters.
fn query_flags(query: Option<&str>) -> (Vec<String>, bool) {
    let mut excluded = Vec::new();
    let mut verbose = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "exclude" => excluded.push(v.into_owned()),
            "verbose" => verbose = true,
            _ => {}
        }
    }
    (excluded, verbose)
}

/// Runs `checks` and answers as etcd's `newHealthHandler`.
async fn run_checks(
    server: &EtcdServer,
    method: &Method,
    checks: &[Check],
    verbose: bool,
) -> Response {
    if method != Method::GET {
        let mut resp = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return text(resp);
    }
    let mut report = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(server).await {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        tracing::error!(reason = %report, "Health check error");
        report.push('\n');
        return text((StatusCode::SERVICE_UNAVAILABLE, report).into_response());
    }
    let body = if verbose {
        report + "ok\n"
    } else {
        "ok\n".into()
    };
    text((StatusCode::OK, body).into_response())
}

/// Go's `http.Error` and the success path both answer plain text with `nosniff`.
fn text(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Go's `http.NotFound`: what etcd's HTTP mux answers for a path it does not serve.
pub async fn not_found() -> Response {
    text((StatusCode::NOT_FOUND, "404 page not found\n").into_response())
}

/// A registry's root path: every check not excluded.
async fn registry_root(
    server: &EtcdServer,
    method: &Method,
    all: &[Check],
    query: Option<String>,
) -> Response {
    let (excluded, verbose) = query_flags(query.as_deref());
    let missing: Vec<&String> = excluded
        .iter()
        .filter(|x| !all.iter().any(|c| c.name() == x.as_str()))
        .collect();
    if !missing.is_empty() {
        tracing::warn!(missing_health_checks = ?missing, "some health checks cannot be excluded");
    }
    let checks: Vec<Check> = all
        .iter()
        .copied()
        .filter(|c| !excluded.iter().any(|x| x == c.name()))
        .collect();
    run_checks(server, method, &checks, verbose).await
}

/// A registry's per-check path; 404 for a check it does not have.
async fn registry_one(
    server: &EtcdServer,
    method: &Method,
    all: &[Check],
    name: &str,
    query: Option<String>,
) -> Response {
    let Some(check) = all.iter().copied().find(|c| c.name() == name) else {
        return not_found().await;
    };
    let (_, verbose) = query_flags(query.as_deref());
    run_checks(server, method, &[check], verbose).await
}

/// Adds a registry's root path (`root`) and its per-check paths (`root/<check>`).
fn registry_routes(
    router: Router<Arc<EtcdServer>>,
    root: &str,
    checks: &'static [Check],
) -> Router<Arc<EtcdServer>> {
    router
        .route(
            root,
            any(
                move |State(server): State<Arc<EtcdServer>>,
                      method: Method,
                      RawQuery(query): RawQuery| async move {
                    registry_root(&server, &method, checks, query).await
                },
            ),
        )
        .route(
            &format!("{root}/{{check}}"),
            any(
                move |State(server): State<Arc<EtcdServer>>,
                      method: Method,
                      axum::extract::Path(name): axum::extract::Path<String>,
                      RawQuery(query): RawQuery| async move {
                    registry_one(&server, &method, checks, &name, query).await
                },
            ),
        )
}

async fn version() -> impl IntoResponse {
    json(
        StatusCode::OK,
        serde_json::json!({"etcdserver": crate::ETCD_VERSION, "etcdcluster": crate::ETCD_CLUSTER_VERSION})
            .to_string(),
    )
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

async fn metrics(State(server): State<Arc<EtcdServer>>) -> impl IntoResponse {
    let st = server.raft_status();
    let mut r = Registry::default();
    gauge(
        &mut r,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        i64::from(st.leader != 0),
    );
    gauge(
        &mut r,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        i64::from(st.is_leader),
    );
    gauge(
        &mut r,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        st.commit as i64,
    );
    gauge(
        &mut r,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        st.applied as i64,
    );
    let ids = Family::<Vec<(String, String)>, Gauge>::default();
    ids.get_or_create(&vec![(
        "server_id".to_string(),
        format!("{:x}", server.config().member_id),
    )])
    .set(1);
    r.register(
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        ids,
    );
    gauge(
        &mut r,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        server.status().map(|s| s.db_size).unwrap_or(0),
    );
    if let Ok(view) = server.read_view() {
        let revs = crate::mvcc::KvRead::revs(&view);
        gauge(
            &mut r,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            revs.current,
        );
        gauge(
            &mut r,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            revs.compact,
        );
    }
    let mut body = String::new();
    match encode(&mut body, &r) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}
