//! Smoke runs of the `concord-bench` binary: a few hundred requests per workload against fresh
//! concord and etcd 3.5 servers, and a short `--duration` run against a running cluster
//! (`--endpoints`). They check that every row is there with sane, non-zero figures in the
//! `--json` file and the table; never how fast anything is. Named `serial`: each starts several
//! server processes.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::{RangeRequest, kv_client::KvClient};
use concord_tests::{Cluster, ServerKind};
use serde_json::Value;

/// Runs `concord-bench` with `args` plus `--json <file>`; returns (its stdout, the JSON).
fn bench(dir: &Path, args: &[&str]) -> Result<(String, Value)> {
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_concord-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .context("running concord-bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "concord-bench failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).context("reading the --json file")?;
    Ok((stdout, serde_json::from_str(&text)?))
}

fn num(v: &Value, field: &str) -> Result<f64> {
    v[field]
        .as_f64()
        .with_context(|| format!("no number {field:?} in {v}"))
}

/// A load row: `ops` requests (when known) in a positive time, a positive rate, and ordered,
/// positive latency percentiles.
fn check_load(server: &str, id: &str, row: &Value, ops: Option<usize>) -> Result<()> {
    let what = format!("{server} {id}: {row}");
    let got = num(row, "ops")?;
    match ops {
        Some(want) => ensure!(got == want as f64, "want {want} ops; {what}"),
        None => ensure!(got > 0.0, "no ops; {what}"),
    }
    ensure!(num(row, "elapsed_secs")? > 0.0, "no time; {what}");
    ensure!(num(row, "qps")? > 0.0, "no rate; {what}");
    let lat = &row["latency_ms"];
    let p: Vec<f64> = ["p50", "p90", "p99", "p99.9", "max"]
        .iter()
        .map(|f| num(lat, f))
        .collect::<Result<_>>()?;
    ensure!(p[0] > 0.0, "zero median latency; {what}");
    ensure!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order; {what}"
    );
    ensure!(row["title"].is_string(), "no title; {what}");
    Ok(())
}

#[test]
fn bench_smoke_serial_concord_and_etcd35() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (table, json) = bench(
        dir.path(),
        &[
            "--servers=concord,etcd35",
            "--total=300",
            "--clients=8",
            "--conns=2",
            "--key-space-size=100",
            "--range-size=3",
            "--watchers=4",
            "--watch-puts=30",
            "--mem-keys=300",
            "--progress",
        ],
    )?;
    assert_eq!(json["settings"]["total"], 300, "{json}");
    let loads: &[(&str, Option<usize>)] = &[
        ("put", Some(300)),
        ("put1", Some(30)),
        ("range", Some(300)),
        ("range-s", Some(300)),
        ("txn-put", Some(300)),
        ("mixed", Some(300)),
        ("watch", Some(4 * 30)),
        ("lease-grant", Some(30)),
        ("lease-keepalive", Some(30)),
        ("mem-load", Some(300)),
        ("put3", Some(300)),
        ("put3-1", Some(30)),
    ];
    for server in ["concord", "etcd35"] {
        let rows = &json["results"][server];
        for &(id, ops) in loads {
            check_load(server, id, &rows[id], ops)?;
        }
        let mixed = &rows["mixed"];
        let (reads, writes) = (num(&mixed["reads"], "ops")?, num(&mixed["writes"], "ops")?);
        assert_eq!(reads + writes, 300.0, "{mixed}");
        assert!(reads > writes && writes > 0.0, "{mixed}");
        let f = &rows["footprint"];
        assert!(num(f, "peak_rss_bytes")? >= num(f, "rss_bytes")?, "{f}");
        assert!(
            num(f, "rss_bytes")? > 0.0 && num(f, "data_dir_bytes")? > 0.0,
            "{f}"
        );
        let m = &rows["mem-rss"];
        assert_eq!(m["keys"], 300, "{m}");
        assert!(num(m, "rss_bytes")? > 1e6, "{server}: {m}");
        assert!(num(m, "peak_rss_bytes")? >= num(m, "rss_bytes")?, "{m}");
        assert!(
            num(&rows["mem-disk"], "data_dir_bytes")? > 300.0 * 256.0,
            "{rows}"
        );
        assert!(num(&rows["mem-db"], "db_size_bytes")? > 0.0, "{rows}");
        let r = &rows["restart"];
        assert!(num(r, "restart_secs")? > 0.0, "{r}");
        assert!(num(r, "rss_after_restart_bytes")? > 0.0, "{r}");
        let ids = rows.as_object().map_or(0, |m| m.len());
        assert_eq!(ids, loads.len() + 5, "unexpected rows for {server}: {rows}");
    }
    // The table has every workload and a ratio line for each load and amount.
    for title in [
        "put (8 clients)",
        "range, linearizable (3 keys)",
        "mixed: 90% linearizable ranges (3 keys), the rest puts",
        "resident memory after loading 300 keys (256-byte values)",
        "put, 3 members, to the leader (1 client)",
    ] {
        assert!(
            table.contains(&format!("\n{title}\n")),
            "{title:?} in\n{table}"
        );
    }
    let ratios = table
        .lines()
        .filter(|l| l.trim_start().starts_with("concord/etcd35"))
        .count();
    assert_eq!(ratios, loads.len() + 4, "{table}");
    Ok(())
}

#[test]
fn bench_smoke_serial_endpoints_of_a_running_cluster() -> Result<()> {
    let cluster = Cluster::start(ServerKind::Concord, 3)?;
    let dir = tempfile::tempdir()?;
    let endpoints = cluster.endpoints().join(",");
    let (_, json) = bench(
        dir.path(),
        &[
            "--endpoints",
            &endpoints,
            "--workloads=put,range,mixed,txn-put",
            "--duration=300ms",
            "--clients=4",
            "--conns=2",
            "--key-space-size=50",
            "--sequential-keys",
            "--range-size=5",
            "--read-ratio=0.5",
        ],
    )?;
    assert_eq!(json["settings"]["duration_secs"], 0.3, "{json}");
    let results = json["results"].as_object().context("no results")?;
    assert_eq!(results.keys().collect::<Vec<_>>(), ["endpoint"], "{json}");
    let rows = &json["results"]["endpoint"];
    for id in ["put", "range", "mixed", "txn-put"] {
        check_load("endpoint", id, &rows[id], None)?;
    }
    assert_eq!(rows.as_object().map_or(0, |m| m.len()), 4, "{rows}");
    // The tool really wrote: the prefilled key space is there, read through any member.
    let rt = tokio::runtime::Runtime::new()?;
    let kvs = rt.block_on(async {
        let ch = concord_tests::ledger::channel(&cluster.endpoints()[2])?;
        anyhow::Ok(
            KvClient::new(ch)
                .range(RangeRequest {
                    key: b"00000000".to_vec(),
                    range_end: b"00000050".to_vec(),
                    count_only: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .count,
        )
    })?;
    assert_eq!(kvs, 50);
    Ok(())
}
