//! The operator's Prometheus metrics (all prefixed `concord_operator_`) and the HTTP endpoint
//! serving them (`/metrics`, plus `/healthz` for the Deployment's probes).
//!
//! Metrics are counted by the controller; this module only owns the registry and the server.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error kind (`kube`, `member`, `finalizer`).
    pub kind: String,
}

/// Label of membership changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The planner action (`AddLearner`, `Promote`, ...).
    pub action: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `concord_operator_reconciliations_total`.
    pub reconciliations: Counter,
    /// `concord_operator_reconcile_errors_total{kind}`.
    pub errors: Family<ErrorLabels, Counter>,
    /// `concord_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `concord_operator_membership_changes_total{action}`.
    pub changes: Family<ActionLabels, Counter>,
    /// `concord_operator_leader`: 1 while this replica holds the leader lease (or runs without
    /// leader election).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("concord_operator");
        let reconciliations = Counter::default();
        registry.register(
            "reconciliations",
            "Reconciliations of EtcdCluster resources",
            reconciliations.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            duration.clone(),
        );
        let changes = Family::<ActionLabels, Counter>::default();
        registry.register(
            "membership_changes",
            "Membership and StatefulSet steps carried out",
            changes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica is the active operator",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            changes,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics address (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let m = Metrics::default();
        m.reconciliations.inc();
        m.errors
            .get_or_create(&ErrorLabels {
                kind: "kube".into(),
            })
            .inc();
        m.duration.observe(0.2);
        let text = m.encode();
        assert!(
            text.contains("concord_operator_reconciliations_total 1"),
            "{text}"
        );
        assert!(
            text.contains("concord_operator_reconcile_errors_total{kind=\"kube\"} 1"),
            "{text}"
        );
        assert!(text.contains("concord_operator_reconcile_duration_seconds_count 1"));
    }
}
