//! `--listen-metrics-urls`: an extra plain-HTTP listener with `/metrics` and the health checks
//! (`/health`, `/livez`, `/readyz`) and nothing else, as etcd's metrics mux; Kubernetes probes
//! use it when the client port requires client certificates. Run against concord and, as the
//! reference, etcd 3.5.16, with the same assertions.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use concord_tests::server::http_get;
use concord_tests::{LoopbackIp, Server, ServerKind};

const METRICS_PORT: u16 = 2381;

fn metrics_listener(kind: ServerKind) -> Result<()> {
    let ip = LoopbackIp::claim()?;
    let addr = SocketAddr::from((ip.ip(), METRICS_PORT));
    let _server = Server::builder(kind)
        .ip(ip)
        .arg(format!("--listen-metrics-urls=http://{addr}"))
        .start()?;
    let get = |path: &str| http_get(addr, path, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/health")?.0 != 200 {
        ensure!(
            Instant::now() < deadline,
            "{kind:?}: /health never became 200"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = get("/health")?;
    ensure!(
        code == 200 && body.contains(r#""health":"true""#),
        "{kind:?}: /health {code} {body}"
    );
    for path in ["/livez", "/readyz"] {
        let (code, body) = get(path)?;
        ensure!(code == 200, "{kind:?}: {path} {code} {body}");
    }
    let (code, body) = get("/metrics")?;
    ensure!(
        code == 200 && body.contains("etcd_server_has_leader 1"),
        "{kind:?}: /metrics {code}"
    );
    // Only metrics and health: no version, no gRPC gateway.
    for path in ["/version", "/v3/kv/range"] {
        let (code, _) = get(path)?;
        ensure!(
            code == 404,
            "{kind:?}: {path} answered {code} on the metrics port"
        );
    }
    Ok(())
}

#[test]
fn metrics_listener_serves_metrics_and_health_concord() -> Result<()> {
    metrics_listener(ServerKind::Concord)
}

#[test]
fn metrics_listener_serves_metrics_and_health_etcd35() -> Result<()> {
    metrics_listener(ServerKind::Etcd35)
}
