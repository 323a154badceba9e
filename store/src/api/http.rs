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
//! `/health` is etcd 3.5's: unhealthy while an alarm is active (`ALARM NOSPACE`, `ALARM
//! CORRUPT`) unless `?exclude=<alarm>` names it, or without a leader (`RAFT NO LEADER`), or when
//! a one-key range fails (`RANGE ERROR:<error>`). `?serializable=true` skips the leader check
//! and reads serializably: the member's own health, as liveness probes want.
//!
//! Metric names are etcd's where etcd has the metric. Values are read from the server at scrape
//! time, except what the health endpoints answered ([`HealthCounts`], kept by the server).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
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
        .route("/health", any(health))
        .route("/metrics", get(metrics));
    let router = registry_routes(router, "/livez", LIVEZ);
    registry_routes(router, "/readyz", READYZ)
}

/// What the health endpoints answered: etcd's `etcd_server_health_success` and
/// `etcd_server_health_failures` (`/health`), and per registry check (`/livez`, `/readyz`) its
/// last result (`etcd_server_healthcheck`) and how often each result came
/// (`etcd_server_healthchecks_total`).
#[derive(Debug, Default)]
pub struct HealthCounts {
    success: AtomicU64,
    failures: AtomicU64,
    /// Per (registry, check name).
    checks: Mutex<BTreeMap<(&'static str, &'static str), CheckCounts>>,
}

/// One registry check's results so far.
#[derive(Debug, Default, Clone, Copy)]
struct CheckCounts {
    last_ok: bool,
    successes: u64,
    errors: u64,
}

impl HealthCounts {
    fn count_health(&self, healthy: bool) {
        let counter = if healthy {
            &self.success
        } else {
            &self.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count_check(&self, registry: &'static str, check: Check, ok: bool) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = checks.entry((registry, check.name())).or_default();
        entry.last_ok = ok;
        if ok {
            entry.successes += 1;
        } else {
            entry.errors += 1;
        }
    }

    fn register(&self, r: &mut Registry) {
        for (name, help, counter) in [
            (
                "etcd_server_health_success",
                "The total number of successful health checks",
                &self.success,
            ),
            (
                "etcd_server_health_failures",
                "The total number of failed health checks",
                &self.failures,
            ),
        ] {
            // etcd's counters without the `_total` suffix, which this client adds to every
            // counter: the names matter to dashboards more than the declared type.
            gauge(r, name, help, counter.load(Ordering::Relaxed) as i64);
        }
        let last = Family::<Vec<(String, String)>, Gauge>::default();
        let totals = Family::<Vec<(String, String)>, Counter>::default();
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        for (&(registry, name), c) in checks.iter() {
            // Labels in alphabetical order, as etcd's client prints them.
            let labels = |status: Option<&str>| {
                let mut l = vec![("name".to_owned(), name.to_owned())];
                l.extend(status.map(|s| ("status".to_owned(), s.to_owned())));
                l.push(("type".to_owned(), registry.to_owned()));
                l
            };
            last.get_or_create(&labels(None)).set(i64::from(c.last_ok));
            for (status, n) in [("success", c.successes), ("error", c.errors)] {
                if n > 0 {
                    totals.get_or_create(&labels(Some(status))).inc_by(n);
                }
            }
        }
        r.register(
            "etcd_server_healthcheck",
            "The result of each kind of healthcheck.",
            last,
        );
        r.register(
            "etcd_server_healthchecks",
            "The total number of each kind of healthcheck.",
            totals,
        );
    }
}

/// The `exclude` (alarm names) and `serializable` query parameters of `/health`.
fn health_query(query: Option<&str>) -> (Vec<String>, bool) {
    let mut excluded = Vec::new();
    let mut serializable = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "exclude" if !v.is_empty() => excluded.push(v.into_owned()),
            // Go's `Query().Get`: the first value counts.
            "serializable" if serializable.is_none() => serializable = Some(v == "true"),
            _ => {}
        }
    }
    (excluded, serializable.unwrap_or(false))
}

/// etcd's `/health` checks: alarms, then a leader (unless serializable), then a one-key range.
async fn check(server: &EtcdServer, excluded: &[String], serializable: bool) -> Result<(), String> {
    let alarms = server.alarms().map_err(|e| format!("ALARM UNKNOWN: {e}"))?;
    for a in alarms {
        let alarm = AlarmType::try_from(a.alarm).ok();
        let name = alarm.map_or_else(|| a.alarm.to_string(), |t| t.as_str_name().to_owned());
        if excluded.contains(&name) {
            continue;
        }
        tracing::warn!(alarm = %crate::server::alarm_text(&a), "serving /health false due to an alarm");
        return Err(match alarm {
            Some(AlarmType::Nospace) => "ALARM NOSPACE",
            Some(AlarmType::Corrupt) => "ALARM CORRUPT",
            _ => "ALARM UNKNOWN",
        }
        .into());
    }
    if !serializable && server.raft_status().leader == 0 {
        tracing::warn!("serving /health false; no leader");
        return Err("RAFT NO LEADER".into());
    }
    let req = RangeRequest {
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    let read = async {
        if !serializable {
            server.linearizable_read_barrier().await?;
        }
        let view = server.read_view()?;
        crate::apply::range(&view, &req)
    };
    read.await.map(|_| ()).map_err(|e| {
        tracing::warn!(error = %e, "serving /health false; Range fails");
        format!("RANGE ERROR:{e}")
    })
}

/// etcd's `/health` handler: 200 with `{"health":"true","reason":""}`, or 503 with the reason.
async fn health(
    State(server): State<Arc<EtcdServer>>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let (excluded, serializable) = health_query(query.as_deref());
    let result = check(&server, &excluded, serializable).await;
    server.health_counts().count_health(result.is_ok());
    match result {
        // Go sniffs the JSON body as plain text and sets no `nosniff` on success.
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            r#"{"health":"true","reason":""}"#,
        )
            .into_response(),
        Err(reason) => {
            let body = serde_json::json!({"health": "false", "reason": reason}).to_string();
            text((StatusCode::SERVICE_UNAVAILABLE, body + "\n").into_response())
        }
    }
}

/// Go's `http.Error(w, "Method Not Allowed", 405)` with `Allow: GET`, as etcd's health handlers.
fn method_not_allowed() -> Response {
    let mut resp = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    text(resp)
}

fn json(code: StatusCode, body: String) -> impl IntoResponse {
    (code, [(header::CONTENT_TYPE, "application/json")], body)
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
    registry: &'static str,
    checks: &[Check],
    verbose: bool,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let mut report = String::new();
    let mut failed = false;
    for check in checks {
        let result = check.run(server).await;
        server
            .health_counts()
            .count_check(registry, *check, result.is_ok());
        match result {
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
pub(crate) fn text(mut resp: Response) -> Response {
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
    registry: &'static str,
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
    run_checks(server, method, registry, &checks, verbose).await
}

/// A registry's per-check path; 404 for a check it does not have.
async fn registry_one(
    server: &EtcdServer,
    method: &Method,
    registry: &'static str,
    all: &[Check],
    name: &str,
    query: Option<String>,
) -> Response {
    let Some(check) = all.iter().copied().find(|c| c.name() == name) else {
        return not_found().await;
    };
    let (_, verbose) = query_flags(query.as_deref());
    run_checks(server, method, registry, &[check], verbose).await
}

/// A registry's type in the health metrics: its root path without the slash (`livez`).
fn registry_type(root: &'static str) -> &'static str {
    root.trim_start_matches('/')
}

/// Adds a registry's root path (`root`) and its per-check paths (`root/<check>`).
fn registry_routes(
    router: Router<Arc<EtcdServer>>,
    root: &'static str,
    checks: &'static [Check],
) -> Router<Arc<EtcdServer>> {
    router
        .route(
            root,
            any(
                move |State(server): State<Arc<EtcdServer>>,
                      method: Method,
                      RawQuery(query): RawQuery| async move {
                    registry_root(&server, &method, registry_type(root), checks, query).await
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
                    registry_one(&server, &method, registry_type(root), checks, &name, query).await
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
    server.health_counts().register(&mut r);
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
