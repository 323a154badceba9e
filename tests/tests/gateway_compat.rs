//! The gRPC-JSON gateway against etcd 3.5.16 (the reference) and concord: the `curl` requests of
//! etcd's gateway documentation (base64 keys, proto and lowerCamel field names, 64-bit integers
//! as strings or numbers, enum names), plus errors, the old `/v3beta/` prefix and a streaming
//! watch, each sent with curl to both servers. HTTP status codes and JSON bodies must match,
//! with the header fields that differ between two servers (cluster and member ids) and database
//! sizes blanked; JSON is compared as values (key order and whitespace are free).
//!
//! Run against etcd itself (validates the test): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use concord_tests::{Server, ServerKind, line_diff};
use serde_json::Value;

const KINDS: [ServerKind; 2] = [ServerKind::Etcd35, ServerKind::Concord];

/// Blanks the fields that legitimately differ between two servers, at any depth.
fn normalize(v: &mut Value) {
    const BLANKED: [&str; 7] = [
        "cluster_id",
        "member_id",
        "dbSize",
        "dbSizeInUse",
        "leader",
        "raftIndex",
        "raftAppliedIndex",
    ];
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if BLANKED.contains(&k.as_str()) {
                    *x = Value::String("<blanked>".into());
                } else {
                    normalize(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// `curl -X <method> -d <body> <endpoint><path>`: HTTP status and body.
fn curl(method: &str, endpoint: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(["-d", body])
        .arg(format!("{endpoint}{path}"))
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// One exchange, rendered for comparison.
fn exchange(method: &str, endpoint: &str, path: &str, body: &str) -> Result<String> {
    let (code, text) = curl(method, endpoint, path, body)?;
    let shown = match serde_json::from_str::<Value>(&text) {
        Ok(mut v) => {
            // Parse errors are Go's and serde's own words; the code is what clients check.
            if path.ends_with("range") && body == "garbage" {
                v["message"] = "<parse error>".into();
            }
            normalize(&mut v);
            serde_json::to_string_pretty(&v)?
        }
        Err(_) => text,
    };
    Ok(format!(
        "$ curl -X {method} {path} -d '{body}'\nHTTP {code}\n{shown}\n"
    ))
}

fn session(kind: ServerKind) -> Result<String> {
    let server = Server::start(kind)?;
    let ep = server.endpoint();
    let steps: &[(&str, &str, &str)] = &[
        ("POST", "/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#),
        ("POST", "/v3/kv/range", r#"{"key": "Zm9v"}"#),
        (
            "POST",
            "/v3/kv/put",
            r#"{"key": "Zm9vMg==", "value": "YmF6", "prev_kv": true}"#,
        ),
        (
            "POST",
            "/v3/kv/range",
            r#"{"key": "Zm9v", "range_end": "Zm9w", "sort_order": "DESCEND", "limit": "1"}"#,
        ),
        (
            "POST",
            "/v3/kv/range",
            r#"{"key": "Zm9v", "rangeEnd": "Zm9w", "sortTarget": 3, "keys_only": true}"#,
        ),
        (
            "POST",
            "/v3/kv/txn",
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#,
        ),
        (
            "POST",
            "/v3/kv/txn",
            r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"bm8="}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        ("POST", "/v3/lease/grant", r#"{"TTL": 30, "ID": 100}"#),
        (
            "POST",
            "/v3/kv/put",
            r#"{"key": "bGVhc2Vk", "value": "eA==", "lease": "100"}"#,
        ),
        (
            "POST",
            "/v3/lease/timetolive",
            r#"{"ID": 100, "keys": true}"#,
        ),
        ("POST", "/v3/kv/lease/leases", "{}"),
        ("POST", "/v3/lease/revoke", r#"{"ID": 100}"#),
        ("POST", "/v3/lease/revoke", r#"{"ID": 100}"#),
        (
            "POST",
            "/v3/kv/deleterange",
            r#"{"key": "Zm9vMg==", "prev_kv": true}"#,
        ),
        ("POST", "/v3/kv/compaction", r#"{"revision": "3"}"#),
        ("POST", "/v3/kv/compaction", r#"{"revision": 1000}"#),
        ("POST", "/v3/kv/range", r#"{"key": "Zm9v", "revision": 2}"#),
        ("POST", "/v3/kv/range", r#"{"key": ""}"#),
        ("POST", "/v3/kv/range", "garbage"),
        ("GET", "/v3/kv/range", ""),
        ("POST", "/v3/maintenance/status", "{}"),
        ("POST", "/v3/maintenance/alarm", r#"{"action": "GET"}"#),
        (
            "POST",
            "/v3/lock/lock",
            r#"{"name": "bG9jaw==", "lease": "12345"}"#,
        ),
        ("POST", "/v3/election/leader", r#"{"name": "ZWxlY3Rpb24="}"#),
        // etcd rewrites the old prefix to /v3/ before its mux.
        ("POST", "/v3beta/kv/range", r#"{"key": "Zm9v"}"#),
        ("POST", "/v3beta/kv/nothing", "{}"),
    ];
    let mut t = String::new();
    for (method, path, body) in steps {
        t.push_str(&exchange(method, &ep, path, body)?);
    }
    // A streaming watch: created, then one put and one delete, as newline-delimited JSON.
    let watch = Command::new("curl")
        .args(["-sN", "--max-time", "3", "-X", "POST"])
        .args(["-d", r#"{"create_request": {"key": "d2F0Y2hlZA=="}}"#])
        .arg(format!("{ep}/v3/watch"))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    curl(
        "POST",
        &ep,
        "/v3/kv/put",
        r#"{"key": "d2F0Y2hlZA==", "value": "MQ=="}"#,
    )?;
    curl(
        "POST",
        &ep,
        "/v3/kv/deleterange",
        r#"{"key": "d2F0Y2hlZA=="}"#,
    )?;
    let out = watch.wait_with_output()?;
    t.push_str("$ curl -N -X POST /v3/watch (3 s)\n");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut v: Value = serde_json::from_str(line).with_context(|| format!("{line:?}"))?;
        normalize(&mut v);
        t.push_str(&format!("{v}\n"));
    }
    Ok(t)
}

#[test]
fn gateway_answers_like_etcd() {
    let want = session(KINDS[0]).expect("etcd");
    let got = session(KINDS[1]).expect("concord");
    eprintln!("{want}");
    assert!(want.contains("\"events\""), "{want}");
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}

/// `curl -s -i` with `args` before `url`: the status line and headers, and the body.
fn curl_i(args: &[String], url: &str) -> Result<(String, String)> {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.to_owned(), body.to_owned()))
}

/// The CORS headers of one HTTP exchange, lower-cased and sorted, with the status.
fn cors_headers(method: &str, url: &str, origin: Option<&str>) -> Result<String> {
    let mut args = vec!["-X".to_owned(), method.to_owned()];
    if let Some(o) = origin {
        args.extend(["-H".to_owned(), format!("Origin: {o}")]);
    }
    if method == "POST" {
        args.extend(["-d".to_owned(), r#"{"key":"YQ=="}"#.to_owned()]);
    }
    let (head, _) = curl_i(&args, url)?;
    let status = head.lines().next().unwrap_or_default().trim().to_owned();
    let mut cors: Vec<String> = head
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| l.starts_with("access-control-"))
        .collect();
    cors.sort();
    Ok(format!(
        "{method} {} (origin {origin:?}): {status}\n{}\n",
        url.split_once("2379").map_or(url, |(_, p)| p),
        cors.join("\n")
    ))
}

/// An `etcdctl put` through gRPC, which the HTTP access controller must let pass.
fn etcdctl_put(ep: &str) -> Result<String> {
    let put = concord_tests::Etcdctl::V35.run(ep, ["put", "k", "v"], None)?;
    Ok(format!("etcdctl put: {}\n", put.stdout_text().trim()))
}

/// `--cors`: by default any origin (`*`) on every HTTP answer, the health endpoints and the
/// gateway alike; with a list, only a listed `Origin`, echoed back; a preflight `OPTIONS` is
/// answered 200 with the headers. gRPC is untouched (etcdctl still works).
fn cors_session(kind: ServerKind) -> Result<String> {
    let mut t = String::new();
    let any = Server::start(kind)?;
    let ep = any.endpoint();
    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/version"),
        ("POST", "/v3/kv/range"),
        ("GET", "/no/such/path"),
    ] {
        t.push_str(&cors_headers(method, &format!("{ep}{path}"), None)?);
    }
    drop(any);
    let listed = Server::builder(kind)
        .arg("--cors=http://a.example:8080,http://b.example:8080")
        .start()?;
    let ep = listed.endpoint();
    for (method, path, origin) in [
        ("GET", "/version", Some("http://b.example:8080")),
        ("GET", "/version", Some("http://c.example:8080")),
        ("GET", "/metrics", None),
        ("OPTIONS", "/v3/kv/range", Some("http://a.example:8080")),
        ("POST", "/v3/kv/range", Some("http://a.example:8080")),
        ("POST", "/v3/kv/range", Some("http://c.example:8080")),
    ] {
        t.push_str(&cors_headers(method, &format!("{ep}{path}"), origin)?);
    }
    t.push_str(&etcdctl_put(&ep)?);
    Ok(t)
}

#[test]
fn cors_headers_like_etcd() {
    let want = cors_session(KINDS[0]).expect("etcd");
    let got = cors_session(KINDS[1]).expect("concord");
    assert!(
        want.contains("access-control-allow-origin: http://b.example:8080"),
        "{want}"
    );
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}

/// `--host-whitelist` on a plain-HTTP listener: a `Host` it does not list gets 421 and etcd's
/// explanation; listed names (without their port) and gRPC pass.
fn host_whitelist_session(kind: ServerKind) -> Result<String> {
    // The listener's own address stays allowed, so requests without a `Host` override pass.
    let ip = concord_tests::LoopbackIp::claim()?;
    let whitelist = format!("--host-whitelist=good.example,{}", ip.ip());
    let server = Server::builder(kind).ip(ip).arg(whitelist).start()?;
    let ep = server.endpoint();
    let mut t = String::new();
    for host in [
        "evil.example:2379",
        "good.example",
        "good.example:80",
        "[::1]:2379",
        "",
    ] {
        let args = if host.is_empty() {
            vec![]
        } else {
            vec!["-H".to_owned(), format!("Host: {host}")]
        };
        let (head, body) = curl_i(&args, &format!("{ep}/version"))?;
        let status = head.lines().next().unwrap_or_default().trim();
        let body = if status.contains("421") { &*body } else { "" };
        t.push_str(&format!("Host {host:?}: {status}\n{body}"));
    }
    t.push_str(&etcdctl_put(&ep)?);
    Ok(t)
}

#[test]
fn host_whitelist_like_etcd() {
    let want = host_whitelist_session(KINDS[0]).expect("etcd");
    let got = host_whitelist_session(KINDS[1]).expect("concord");
    assert!(want.contains("CVE-2018-5702"), "{want}");
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}
