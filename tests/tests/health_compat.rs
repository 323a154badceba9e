//! `/livez` and `/readyz`: etcd 3.5's check registries (`serializable_read` for liveness;
//! `data_corruption`, `serializable_read` and `linearizable_read` for readiness), their
//! per-check paths, `?exclude=` and `?verbose`, 404 for a check a registry lacks, 405 for other
//! methods, and a 503 listing every result when quorum is lost; and what a path no route takes
//! gets. Each case runs against concord
//! and, as the reference, etcd 3.5.16 with the same assertions. etcd lists the checks in Go map
//! order, so the verbose lines are compared as sets.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use concord_store::proto::etcdserverpb::{RangeRequest, RangeResponse};
use concord_tests::server::{http_get, http_request};
use concord_tests::{Cluster, Server, ServerKind};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The result lines of a verbose or failed answer, as a set.
fn lines(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn registries_on_a_healthy_member(kind: ServerKind) -> Result<()> {
    let server = Server::start(kind)?;
    let addr = server.client_addr();
    let get = |path: &str| http_get(addr, path, TIMEOUT);
    for path in [
        "/livez",
        "/readyz",
        "/livez/serializable_read",
        "/readyz/data_corruption",
        "/readyz/serializable_read",
        "/readyz/linearizable_read",
    ] {
        let (code, body) = get(path)?;
        ensure!(
            code == 200 && body == "ok\n",
            "{kind:?}: {path}: {code} {body:?}"
        );
    }
    let cases: &[(&str, &[&str])] = &[
        ("/livez?verbose", &["[+]serializable_read ok", "ok"]),
        (
            "/readyz?verbose",
            &[
                "[+]data_corruption ok",
                "[+]serializable_read ok",
                "[+]linearizable_read ok",
                "ok",
            ],
        ),
        (
            "/readyz?exclude=linearizable_read&verbose",
            &["[+]data_corruption ok", "[+]serializable_read ok", "ok"],
        ),
        (
            "/readyz?exclude=data_corruption&exclude=serializable_read&verbose",
            &["[+]linearizable_read ok", "ok"],
        ),
        // A check the registry lacks cannot be excluded: everything runs.
        (
            "/livez?exclude=no_such_check&verbose",
            &["[+]serializable_read ok", "ok"],
        ),
        (
            "/readyz/linearizable_read?verbose",
            &["[+]linearizable_read ok", "ok"],
        ),
    ];
    for (path, want) in cases {
        let (code, body) = get(path)?;
        ensure!(
            code == 200 && body.ends_with("ok\n") && lines(&body) == set(want),
            "{kind:?}: {path}: {code} {body:?}"
        );
    }
    for path in ["/livez/linearizable_read", "/livez/data_corruption"] {
        let (code, body) = get(path)?;
        ensure!(
            code == 404 && body == "404 page not found\n",
            "{kind:?}: {path}: {code} {body:?}"
        );
    }
    // Every check's last result and how often each result came, as etcd's metrics name them.
    let (_, metrics) = get("/metrics")?;
    for want in [
        r#"etcd_server_healthcheck{name="serializable_read",type="livez"} 1"#,
        r#"etcd_server_healthcheck{name="linearizable_read",type="readyz"} 1"#,
        r#"etcd_server_healthchecks_total{name="data_corruption",status="success",type="readyz"} "#,
    ] {
        ensure!(
            metrics.lines().any(|l| l.starts_with(want)),
            "{kind:?}: no {want} in /metrics"
        );
    }
    for path in ["/livez", "/readyz/linearizable_read"] {
        let r = http_request(addr, "POST", path, TIMEOUT)?;
        ensure!(
            r.code == 405
                && r.head.to_ascii_lowercase().contains("\r\nallow: get")
                && r.body == "Method Not Allowed\n",
            "{kind:?}: POST {path}: {r:?}"
        );
    }
    Ok(())
}

/// Paths no server route takes: Go's plain-text 404, the gateway's JSON 404 under `/v3/`, and
/// gRPC's Unimplemented for an unknown method.
fn unknown_paths(kind: ServerKind) -> Result<()> {
    let server = Server::start(kind)?;
    let addr = server.client_addr();
    for path in ["/foo", "/readyz/", "/health/x"] {
        let (code, body) = http_get(addr, path, TIMEOUT)?;
        ensure!(
            code == 404 && body == "404 page not found\n",
            "{kind:?}: {path}: {code} {body:?}"
        );
    }
    for path in ["/v3/foo", "/v3/kv/foo"] {
        let (code, body) = http_get(addr, path, TIMEOUT)?;
        ensure!(
            code == 404 && body == r#"{"code":5, "message":"Not Found"}"#,
            "{kind:?}: {path}: {code} {body:?}"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(server.endpoint())?
            .connect()
            .await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/NoSuchMethod");
        let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
        let got = grpc
            .unary(tonic::Request::new(RangeRequest::default()), path, codec)
            .await;
        anyhow::Ok(got.err())
    })?;
    ensure!(
        status.as_ref().map(|s| s.code()) == Some(tonic::Code::Unimplemented),
        "{kind:?}: an unknown gRPC method answered {status:?}"
    );
    Ok(())
}

#[test]
fn unknown_paths_get_etcds_not_found_concord() -> Result<()> {
    unknown_paths(ServerKind::Concord)
}

#[test]
fn unknown_paths_get_etcds_not_found_etcd35() -> Result<()> {
    unknown_paths(ServerKind::Etcd35)
}

#[test]
fn livez_and_readyz_registries_concord() -> Result<()> {
    registries_on_a_healthy_member(ServerKind::Concord)
}

#[test]
fn livez_and_readyz_registries_etcd35() -> Result<()> {
    registries_on_a_healthy_member(ServerKind::Etcd35)
}

/// With two of three members gone, the survivor is alive (`/livez` 200) but not ready:
/// `/readyz` answers 503 with every check's result, the linearizable read timed out.
fn quorum_lost(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    cluster.members[1].kill9()?;
    cluster.members[2].kill9()?;
    let addr = cluster.members[0].client_addr();
    let (code, body) = http_get(addr, "/livez", TIMEOUT)?;
    ensure!(
        code == 200 && body == "ok\n",
        "{kind:?}: /livez {code} {body:?}"
    );
    let (code, body) = http_get(addr, "/readyz", TIMEOUT)?;
    ensure!(
        code == 503
            && body.ends_with("\n\n")
            && lines(&body)
                == set(&[
                    "[+]data_corruption ok",
                    "[+]serializable_read ok",
                    "[-]linearizable_read failed: etcdserver: request timed out",
                ]),
        "{kind:?}: /readyz {code} {body:?}"
    );
    let (code, body) = http_get(addr, "/readyz?exclude=linearizable_read", TIMEOUT)?;
    ensure!(
        code == 200 && body == "ok\n",
        "{kind:?}: /readyz without linearizable_read {code} {body:?}"
    );
    Ok(())
}

#[test]
fn cluster3_quorum_lost_member_is_live_not_ready_concord() -> Result<()> {
    quorum_lost(ServerKind::Concord)
}

#[test]
fn cluster3_quorum_lost_member_is_live_not_ready_etcd35() -> Result<()> {
    quorum_lost(ServerKind::Etcd35)
}
