//! HTTP/1 endpoints on the client port: `/health`, `/livez`, `/readyz`, `/version` and
//! `/metrics`, with etcd 3.5's bodies and status codes; the same but `/version` on each
//! `--listen-metrics-urls` listener ([`metrics_router`]), as etcd's metrics mux.
//!
//! Metric names are etcd's where etcd has the metric. Values are read from the server at scrape
//! time; this module keeps no counters of its own.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::EtcdServer;

/// Routes of the HTTP endpoints on a client listener.
pub fn router(server: Arc<EtcdServer>) -> Router {
    metrics_router(server).route("/version", get(version))
}

/// Routes of a `--listen-metrics-urls` listener: metrics and the health checks.
pub fn metrics_router(server: Arc<EtcdServer>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(server)
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

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn readyz(State(server): State<Arc<EtcdServer>>) -> impl IntoResponse {
    match check(&server).await {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]serializable_read failed: {reason}\nreadyz check failed"),
        ),
    }
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
