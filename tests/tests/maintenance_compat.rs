//! Maintenance against etcd 3.5.16 (the reference) and concord, with compared outcomes:
//!
//! - HashKV: the same writes (puts, a txn, deletes, a lease revoke, compactions, one of them at a
//!   delete's revision) give the same `etcdctl endpoint hashkv` hash and compact revision on
//!   both servers, at several revisions; on a 3-member concord cluster every member agrees
//!   (`endpoint hashkv --cluster`) and `defrag --cluster` works;
//! - NOSPACE: with a tiny `--quota-backend-bytes`, writes fail with etcd's error, `alarm list`
//!   shows the alarm, `/health` answers `ALARM NOSPACE` (unless `?exclude=NOSPACE`) and counts
//!   its answers in `/metrics`, reads still work, and after delete, compact, `defrag` and `alarm
//!   disarm` writes work again;
//! - snapshots: `etcdctl snapshot save`, then a restore into a new member of a new cluster
//!   (`etcdutl snapshot restore` for etcd, `concord snapshot restore` for concord, same flags),
//!   which holds the same keys, revisions and HashKV, under a new cluster id.
//!
//! Run against etcd itself (validates the test): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use concord_store::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RequestOp, TxnRequest, kv_client::KvClient, lease_client::LeaseClient, request_op,
};
use concord_tests::{
    Cluster, CtlOutput, Etcdctl, Normalizer, Server, ServerKind, http_get, line_diff,
};
use serde_json::Value;
use tonic::transport::Channel;

const KINDS: [ServerKind; 2] = [ServerKind::Etcd35, ServerKind::Concord];

fn ctl(endpoint: &str, args: &[&str]) -> Result<CtlOutput> {
    Etcdctl::V35.run(endpoint, args, None)
}

fn ok(endpoint: &str, args: &[&str]) -> Result<String> {
    let out = ctl(endpoint, args)?;
    if !out.success() {
        bail!("etcdctl {args:?} failed: {}", out.stderr_text());
    }
    Ok(out.stdout_text())
}

/// `(hash, compact_revision)` of every endpoint `endpoint hashkv` reports.
fn hashkv(endpoint: &str, extra: &[&str]) -> Result<Vec<(u64, i64)>> {
    let mut args = vec!["endpoint", "hashkv", "-w", "json"];
    args.extend_from_slice(extra);
    let v: Value = serde_json::from_str(&ok(endpoint, &args)?)?;
    v.as_array()
        .context("hashkv: not a list")?
        .iter()
        .map(|e| {
            let h = &e["HashKV"];
            Ok((
                h["hash"].as_u64().context("no hash")?,
                h["compact_revision"]
                    .as_i64()
                    .context("no compact_revision")?,
            ))
        })
        .collect()
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

/// Deterministic writes over gRPC (explicit lease id); revisions in comments.
async fn history(endpoint: String) -> Result<()> {
    let ch = Channel::from_shared(endpoint)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);
    let put = |k: &str, v: &str, lease: i64| PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    };
    let del = |k: &str, end: &str| DeleteRangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    };
    lease
        .lease_grant(LeaseGrantRequest {
            ttl: 600,
            id: 0x1234,
        })
        .await?;
    kv.put(put("a", "1", 0)).await?; // 2
    kv.put(put("b", "2", 0x1234)).await?; // 3
    kv.put(put("a", "3", 0)).await?; // 4
    kv.txn(TxnRequest {
        compare: vec![],
        success: vec![op_put("c", "1"), op_put("d", "2")],
        failure: vec![],
    })
    .await?; // 5
    kv.delete_range(del("b", "")).await?; // 6
    kv.put(put("b", "x", 0x1234)).await?; // 7
    lease
        .lease_revoke(LeaseRevokeRequest { id: 0x1234 })
        .await?; // 8
    kv.put(put("e", "5", 0)).await?; // 9
    kv.delete_range(del("c", "e")).await?; // 10
    kv.put(put("a", "4", 0)).await?; // 11
    Ok(())
}

async fn compact(endpoint: String, rev: i64) -> Result<()> {
    let ch = Channel::from_shared(endpoint)?.connect().await?;
    KvClient::new(ch)
        .compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await?;
    Ok(())
}

fn hash_transcript(kind: ServerKind, rt: &tokio::runtime::Runtime) -> Result<String> {
    let server = Server::start(kind)?;
    let ep = server.endpoint();
    rt.block_on(history(ep.clone()))?;
    let mut t = String::new();
    let mut at = |label: &str, revs: &[i64]| -> Result<()> {
        for rev in revs {
            let h = hashkv(&ep, &[&format!("--rev={rev}")])?;
            t.push_str(&format!("{label} rev {rev}: {h:?}\n"));
        }
        Ok(())
    };
    at("uncompacted", &[0, 3, 6, 9, 11])?;
    rt.block_on(compact(ep.clone(), 6))?;
    // At a compaction revision etcd answers with the hash it computed while compacting.
    at("compacted at 6", &[0, 6, 7, 9, 11])?;
    // 10 is the revision of a delete: its tombstones count in no hash. Revision 6 is compacted
    // away now, but its compaction hash is still served.
    rt.block_on(compact(ep.clone(), 10))?;
    at("compacted at 10", &[0, 6, 10, 11])?;
    ok(&ep, &["del", "", "--from-key"])?; // 12: nothing is alive
    rt.block_on(compact(ep.clone(), 12))?;
    at("all deleted, compacted at 12", &[0])?;
    Ok(t)
}

#[test]
fn hashkv_matches_etcd_at_every_revision() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let want = hash_transcript(KINDS[0], &rt).expect("etcd");
    let got = hash_transcript(KINDS[1], &rt).expect("concord");
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}

#[test]
fn hashkv_and_defrag_agree_on_every_cluster_member() {
    let cluster = Cluster::start(ServerKind::Concord, 3).expect("cluster");
    let ep = cluster.endpoints()[0].clone();
    let writes: &[&[&str]] = &[
        &["put", "a", "1"],
        &["put", "b", "2"],
        &["put", "a", "3"],
        &["del", "b"],
        &["compact", "3"],
        &["put", "c", "4"],
    ];
    for w in writes {
        ok(&ep, w).unwrap();
    }
    let hashes = hashkv(&ep, &["--cluster"]).unwrap();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let out = ok(&ep, &["defrag", "--cluster"]).unwrap();
    assert_eq!(
        out.matches("Finished defragmenting etcd member").count(),
        3,
        "{out}"
    );
    // etcd after the same writes gives the same hash.
    let etcd = Server::start(ServerKind::Etcd35).unwrap();
    for w in writes {
        ok(&etcd.endpoint(), w).unwrap();
    }
    assert_eq!(hashkv(&etcd.endpoint(), &[]).unwrap()[0], hashes[0]);
}

/// One step's outcome: exit code, stdout, and the last line of stderr (etcdctl's error; the
/// lines before it are client logs with timestamps).
fn outcome(out: &CtlOutput) -> String {
    let err = out.stderr_text();
    format!(
        "exit {:?}\n{}{}\n",
        out.code,
        out.stdout_text(),
        err.lines().last().unwrap_or("")
    )
}

/// `/health` answers for each query (status, content type and body), and by how much they
/// moved `etcd_server_health_success` and `etcd_server_health_failures`.
fn health_answers(server: &Server, queries: &[&str]) -> Result<String> {
    let addr = server.client_addr();
    let counts = || -> Result<(f64, f64)> {
        let (_, body) = http_get(addr, "/metrics", Duration::from_secs(5))?;
        let value = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .with_context(|| format!("no {name} in /metrics"))
        };
        Ok((
            value("etcd_server_health_success")?,
            value("etcd_server_health_failures")?,
        ))
    };
    let before = counts()?;
    let mut t = String::new();
    for q in queries {
        let r = concord_tests::server::http_request(
            addr,
            "GET",
            &format!("/health{q}"),
            Duration::from_secs(10),
        )?;
        let content_type = r
            .head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        t.push_str(&format!(
            "GET /health{q}: {} ({content_type}) {}\n",
            r.code,
            r.body.trim_end()
        ));
    }
    let after = counts()?;
    t.push_str(&format!(
        "health_success +{}, health_failures +{}\n",
        after.0 - before.0,
        after.1 - before.1
    ));
    Ok(t)
}

fn nospace_transcript(kind: ServerKind) -> Result<String> {
    let server = Server::builder(kind)
        .arg("--quota-backend-bytes=1048576")
        .start()?;
    let ep = server.endpoint();
    let value = "x".repeat(100 * 1024);
    let mut failure = None;
    for i in 0..200 {
        let out = ctl(&ep, &["put", &format!("big/{i:03}"), &value])?;
        if !out.success() {
            failure = Some(out);
            break;
        }
    }
    let failure = failure.context("the quota never stopped the writes")?;
    let norm = Normalizer::new()
        .replace(ep.as_str(), "<endpoint>")
        .blank_after("memberID:");
    let mut t = format!("first failing put: {}", outcome(&failure));
    let step = |t: &mut String, args: &[&str]| -> Result<()> {
        let out = ctl(&ep, args)?;
        t.push_str(&format!("$ etcdctl {}\n{}", args.join(" "), outcome(&out)));
        Ok(())
    };
    step(&mut t, &["alarm", "list"])?;
    t.push_str(&health_answers(
        &server,
        &[
            "",
            "?exclude=NOSPACE",
            "?serializable=true",
            "?exclude=NOSPACE&serializable=true",
            "?exclude=CORRUPT&exclude=NOSPACE",
            "?exclude=",
        ],
    )?);
    step(&mut t, &["get", "big/000", "--keys-only"])?;
    step(&mut t, &["put", "small", "v"])?;
    let deleted = ctl(&ep, &["del", "big/", "--prefix", "-w", "json"])?;
    let v: Value = serde_json::from_str(&deleted.stdout_text())?;
    let rev = v["header"]["revision"].as_i64().context("no revision")?;
    t.push_str(&format!("deleted big/: exit {:?}\n", deleted.code));
    let out = ctl(&ep, &["compact", &rev.to_string(), "--physical"])?;
    t.push_str(&format!("compact: exit {:?}\n", out.code));
    step(&mut t, &["defrag"])?;
    step(&mut t, &["alarm", "disarm"])?;
    step(&mut t, &["alarm", "list"])?;
    step(&mut t, &["put", "small", "v"])?;
    step(&mut t, &["get", "small", "--print-value-only"])?;
    t.push_str(&health_answers(&server, &["", "?serializable=true"])?);
    Ok(norm.apply(&t))
}

#[test]
fn nospace_alarm_list_defrag_and_disarm_like_etcd() {
    let want = nospace_transcript(KINDS[0]).expect("etcd");
    let got = nospace_transcript(KINDS[1]).expect("concord");
    assert!(
        want.contains("Error: etcdserver: mvcc: database space exceeded"),
        "{want}"
    );
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}

/// Restores `snapshot` into `target`'s data dir (a new one-member cluster under the target's
/// name and peer URL) and restarts it there; returns the restore tool's outcome.
fn restore_into(kind: ServerKind, snapshot: &Path, target: &mut Server) -> Result<String> {
    target.kill9()?;
    std::fs::remove_dir_all(target.data_dir())?;
    let peer = target.peer_url();
    let data_dir = target.data_dir().display().to_string();
    let flags = [
        "--name".to_owned(),
        target.name().to_owned(),
        "--data-dir".to_owned(),
        data_dir,
        "--initial-cluster".to_owned(),
        format!("{}={peer}", target.name()),
        "--initial-cluster-token".to_owned(),
        "restored-cluster".to_owned(),
        "--initial-advertise-peer-urls".to_owned(),
        peer,
    ];
    let mut cmd = match kind {
        ServerKind::Concord => {
            let mut c = Command::new(concord_tests::concord_bin()?);
            c.arg("snapshot");
            c
        }
        _ => {
            let mut c = Command::new(concord_tests::etcd35_bin_dir().join("etcdutl"));
            c.arg("snapshot");
            c
        }
    };
    cmd.arg("restore").arg(snapshot).args(&flags);
    let out = cmd.output().context("running the restore tool")?;
    if !out.status.success() {
        bail!("restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    target.restart()?;
    Ok(format!("restore exit {:?}\n", out.status.code()))
}

fn snapshot_transcript(kind: ServerKind) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let source = Server::start(kind)?;
    let ep = source.endpoint();
    let granted = ok(&ep, &["lease", "grant", "600"])?;
    let lease = granted
        .split_whitespace()
        .nth(1)
        .context("lease id")?
        .to_owned();
    for w in [
        &["put", "a", "1"][..],
        &["put", "b", "2"],
        &["put", "a", "3"],
        &["del", "b"],
        &["put", "leased", "v", &format!("--lease={lease}")],
        &["put", "c", "4"],
    ] {
        ok(&ep, w)?;
    }
    let file = dir.path().join("backup.db");
    let file_s = file.display().to_string();
    let saved = ctl(&ep, &["snapshot", "save", &file_s])?;
    let mut t = format!(
        "snapshot save: exit {:?}\n{}",
        saved.code,
        saved.stdout_text()
    );
    let mut target = Server::start(kind)?;
    t.push_str(&restore_into(kind, &file, &mut target)?);
    let new_ep = target.endpoint();
    let get = |e: &str| ok(e, &["get", "", "--prefix", "-w", "json"]);
    let (before, after) = (get(&ep)?, get(&new_ep)?);
    let kvs = |s: &str| -> Result<Value> { Ok(serde_json::from_str::<Value>(s)?["kvs"].clone()) };
    t.push_str(&format!(
        "same keys and revisions: {}\n",
        kvs(&before)? == kvs(&after)?
    ));
    t.push_str(&format!(
        "same hashkv: {}\n",
        hashkv(&ep, &[])? == hashkv(&new_ep, &[])?
    ));
    let cluster_id = |e: &str| -> Result<Value> {
        let v: Value = serde_json::from_str(&ok(e, &["member", "list", "-w", "json"])?)?;
        Ok(v["header"]["cluster_id"].clone())
    };
    t.push_str(&format!(
        "new cluster id: {}\n",
        cluster_id(&ep)? != cluster_id(&new_ep)?
    ));
    t.push_str(&format!("restored:\n{after}\n"));
    t.push_str(&format!(
        "lease: {}",
        ok(&new_ep, &["lease", "timetolive", &lease, "--keys"])?
    ));
    let put = ok(&new_ep, &["put", "z", "1", "-w", "json"])?;
    t.push_str(&format!("put after restore:\n{put}\n"));
    let norm = Normalizer::new()
        .replace(file_s.as_str(), "<file>")
        .replace(lease.as_str(), "<lease>")
        // The decimal id in JSON output (kept a number, so the JSON line stays parseable).
        .replace(
            i64::from_str_radix(&lease, 16)?.to_string().as_str(),
            "4242",
        )
        .blank(&["cluster_id", "member_id", "raft_term"])
        .blank_between("remaining(", "s)");
    Ok(norm.apply(&t))
}

#[test]
fn snapshot_save_and_restore_into_a_new_cluster_like_etcd() {
    let want = snapshot_transcript(KINDS[0]).expect("etcd");
    let got = snapshot_transcript(KINDS[1]).expect("concord");
    assert!(want.contains("same keys and revisions: true"), "{want}");
    assert!(want.contains("same hashkv: true"), "{want}");
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}
