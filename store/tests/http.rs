//! The HTTP endpoints on the client port, next to gRPC: `/health`, `/livez`, `/readyz`,
//! `/version` and `/metrics` with etcd 3.5's bodies and metric names.

mod common;

use std::io::{Read, Write};

use common::member;

/// A plain HTTP/1.1 GET; returns (status code, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_version_and_metrics() {
    let m = member().await;
    let addr = m.addr;
    let results = tokio::task::spawn_blocking(move || {
        // Unhealthy (503, "RAFT NO LEADER") until the member has elected itself.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while get(addr, "/health").0 != 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        ["/health", "/livez", "/readyz", "/version", "/metrics"].map(|p| get(addr, p))
    })
    .await
    .unwrap();
    let [health, livez, readyz, version, metrics] = results;
    assert_eq!(
        health,
        (200, r#"{"health":"true","reason":""}"#.to_string())
    );
    assert_eq!(livez.0, 200);
    assert_eq!(readyz.0, 200);
    assert_eq!(
        version,
        (
            200,
            r#"{"etcdcluster":"3.5.0","etcdserver":"3.5.16"}"#.to_string()
        )
    );
    assert_eq!(metrics.0, 200);
    for name in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_server_proposals_committed_total ",
        "etcd_server_proposals_applied_total ",
        "etcd_server_id{server_id=\"",
        "etcd_mvcc_db_total_size_in_bytes ",
        "etcd_debugging_mvcc_current_revision 1",
    ] {
        assert!(
            metrics.1.contains(name),
            "/metrics lacks {name:?}:\n{}",
            metrics.1
        );
    }
}
