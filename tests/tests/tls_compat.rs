//! Client and peer TLS with etcd's flags, each case run against concord and etcd 3.5.16 with
//! the same assertions and the same certificates (rcgen, ECDSA P-256, see `concord_tests::tls`):
//!
//! - `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth`: etcdctl with the CA and
//!   a client certificate works; without a client certificate, with one from an unrelated CA, or
//!   without trusting the server's CA, it fails; plain HTTP to the TLS port fails;
//! - `--auto-tls`: a self-signed server that etcdctl reaches with `--insecure-skip-tls-verify`;
//! - 3-member clusters over `https` peer URLs, with CA-signed certificates and
//!   `--peer-client-cert-auth`, and with `--peer-auto-tls`: writes on one member are read on
//!   another, and `member list` shows every member's `https` peer URL.

use std::time::Duration;

use anyhow::{Result, ensure};
use concord_tests::server::LoopbackIp;
use concord_tests::tls::{ClientTls, TestPki};
use concord_tests::{Cluster, Etcdctl, Server, ServerKind};

fn on_both(test: fn(ServerKind) -> Result<()>) {
    for kind in [ServerKind::Concord, ServerKind::Etcd35] {
        test(kind).unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
    }
}

/// etcdctl 3.5 against `endpoint` with `tls`, bounded so a refused handshake fails quickly:
/// (success, stdout); stderr goes to the test's output.
fn ctl(endpoint: &str, tls: &ClientTls, args: &[&str]) -> Result<(bool, String)> {
    let mut all = vec![
        "--dial-timeout=2s".to_owned(),
        "--command-timeout=4s".to_owned(),
    ];
    all.extend(tls.etcdctl_args());
    all.extend(args.iter().map(|a| a.to_string()));
    let out = Etcdctl::V35.run_with_timeout(endpoint, &all, None, Duration::from_secs(30))?;
    eprintln!("etcdctl {}: {}", all.join(" "), out.stderr_text());
    Ok((out.success(), out.stdout_text()))
}

fn client_cert_auth(kind: ServerKind) -> Result<()> {
    let pki = TestPki::new()?;
    let ip = LoopbackIp::claim()?;
    let cert = pki.server_cert("server", &[ip.ip()])?;
    let good = pki.client("root")?;
    let server = Server::builder(kind)
        .ip(ip)
        .https(good.clone())
        .arg(format!("--cert-file={}", cert.cert.display()))
        .arg(format!("--key-file={}", cert.key.display()))
        .arg(format!("--trusted-ca-file={}", pki.ca.display()))
        .arg("--client-cert-auth")
        .start()?;
    let ep = server.endpoint();
    ensure!(ep.starts_with("https://"), "endpoint {ep}");

    let (ok, out) = ctl(&ep, &good, &["put", "k", "v"])?;
    ensure!(
        ok && out == "OK\n",
        "put with a client certificate: {ok} {out:?}"
    );
    let (ok, out) = ctl(&ep, &good, &["get", "k", "--print-value-only"])?;
    ensure!(
        ok && out == "v\n",
        "get with a client certificate: {ok} {out:?}"
    );

    let no_cert = ClientTls {
        cacert: Some(pki.ca.clone()),
        ..Default::default()
    };
    ensure!(
        !ctl(&ep, &no_cert, &["get", "k"])?.0,
        "a client without a certificate was served"
    );
    let foreign = ClientTls {
        cacert: Some(pki.ca.clone()),
        cert: Some(pki.other_client_cert("root")?),
        insecure: false,
    };
    ensure!(
        !ctl(&ep, &foreign, &["get", "k"])?.0,
        "a certificate from an unrelated CA was accepted"
    );
    let distrusting = ClientTls {
        cacert: Some(pki.other_ca.clone()),
        cert: good.cert.clone(),
        insecure: false,
    };
    ensure!(
        !ctl(&ep, &distrusting, &["get", "k"])?.0,
        "the client accepted a server certificate it should not trust"
    );
    let plain = ep.replacen("https://", "http://", 1);
    ensure!(
        !ctl(&plain, &ClientTls::default(), &["get", "k"])?.0,
        "plain HTTP to the TLS client port was served"
    );
    // The health endpoint over TLS too.
    let (code, body) =
        concord_tests::tls::https_get(&format!("{ep}/health"), &good, Duration::from_secs(5))?;
    ensure!(
        code == 200 && body.contains("\"health\":\"true\""),
        "/health over TLS: {code} {body}"
    );
    Ok(())
}

#[test]
fn tls_client_cert_auth_like_etcd() {
    on_both(client_cert_auth);
}

fn auto_tls(kind: ServerKind) -> Result<()> {
    let insecure = ClientTls {
        insecure: true,
        ..Default::default()
    };
    let server = Server::builder(kind)
        .https(insecure.clone())
        .arg("--auto-tls")
        .start()?;
    let ep = server.endpoint();
    let (ok, out) = ctl(&ep, &insecure, &["put", "k", "v"])?;
    ensure!(
        ok && out == "OK\n",
        "put to an auto-TLS server: {ok} {out:?}"
    );
    let pki = TestPki::new()?;
    let verifying = ClientTls {
        cacert: Some(pki.ca.clone()),
        ..Default::default()
    };
    ensure!(
        !ctl(&ep, &verifying, &["get", "k"])?.0,
        "a self-signed auto-TLS certificate passed verification"
    );
    Ok(())
}

#[test]
fn tls_auto_tls_like_etcd() {
    on_both(auto_tls);
}

fn peer_tls(kind: ServerKind) -> Result<()> {
    let pki = TestPki::new()?;
    let cluster = Cluster::start_configured(kind, 3, true, |i, ip, b| {
        let cert = pki.server_cert(&format!("m{i}"), &[ip])?;
        Ok(b.arg(format!("--peer-cert-file={}", cert.cert.display()))
            .arg(format!("--peer-key-file={}", cert.key.display()))
            .arg(format!("--peer-trusted-ca-file={}", pki.ca.display()))
            .arg("--peer-client-cert-auth"))
    })?;
    serves_over_tls_peers(&cluster)
}

fn peer_auto_tls(kind: ServerKind) -> Result<()> {
    let cluster = Cluster::start_configured(kind, 3, true, |_, _, b| Ok(b.arg("--peer-auto-tls")))?;
    serves_over_tls_peers(&cluster)
}

/// A write on one member is read on another, and every member lists `https` peer URLs.
fn serves_over_tls_peers(cluster: &Cluster) -> Result<()> {
    let members = &cluster.members;
    let plain = ClientTls::default();
    let (ok, out) = ctl(&members[0].endpoint(), &plain, &["put", "k", "over-tls"])?;
    ensure!(ok && out == "OK\n", "put: {ok} {out:?}");
    let (ok, out) = ctl(
        &members[2].endpoint(),
        &plain,
        &["get", "k", "--print-value-only"],
    )?;
    ensure!(
        ok && out == "over-tls\n",
        "get on another member: {ok} {out:?}"
    );
    let (ok, out) = ctl(
        &members[1].endpoint(),
        &plain,
        &["member", "list", "-w", "simple"],
    )?;
    ensure!(
        ok && out.lines().count() == 3 && out.lines().all(|l| l.contains("https://")),
        "member list: {out}"
    );
    Ok(())
}

#[test]
fn cluster3_peer_tls_with_client_cert_auth_like_etcd() {
    on_both(peer_tls);
}

#[test]
fn cluster3_peer_auto_tls_like_etcd() {
    on_both(peer_auto_tls);
}
