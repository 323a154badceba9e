//! Start-up failures: a bad flag or a data dir concord cannot own stops `concord` at once with
//! a clear message and a non-zero exit code, as etcd does, instead of serving.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use concord_tests::concord_bin;
use concord_tests::etcdctl::run_bounded;

/// Runs concord with `args` in `dir`; returns (exit code, stderr).
fn run(dir: &std::path::Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut cmd = Command::new(concord_bin()?);
    // Port 0 on loopback: if a case wrongly starts serving, it cannot clash with anything.
    cmd.current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .args([
            "--listen-client-urls",
            "http://127.0.0.1:0",
            "--advertise-client-urls",
            "http://127.0.0.1:0",
        ])
        .args(args);
    let out = run_bounded(cmd, b"", Duration::from_secs(20))?;
    Ok((out.code, out.stderr_text()))
}

struct TestCase {
    name: &'static str,
    args: &'static [&'static str],
    prepare: fn(&std::path::Path),
    code: i32,
    stderr_contains: &'static str,
}

#[test]
fn bad_flags_and_foreign_data_dirs_fail_at_start() -> Result<()> {
    let cases = [
        TestCase {
            name: "unknown flag",
            args: &["--no-such-flag"],
            prepare: |_| {},
            code: 2,
            stderr_contains: "flag provided but not defined: -no-such-flag",
        },
        TestCase {
            name: "bad flag value",
            args: &["--max-txn-ops", "many"],
            prepare: |_| {},
            code: 2,
            stderr_contains: "invalid value \"many\" for flag -max-txn-ops",
        },
        TestCase {
            name: "etcd's own data dir",
            args: &["--data-dir", "d"],
            prepare: |dir| std::fs::create_dir_all(dir.join("d/member/wal")).unwrap(),
            code: 1,
            stderr_contains: "holds etcd's own data format",
        },
        TestCase {
            name: "data dir is a file",
            args: &["--data-dir", "d"],
            prepare: |dir| std::fs::write(dir.join("d"), b"x").unwrap(),
            code: 1,
            stderr_contains: "is not a directory",
        },
        TestCase {
            name: "damaged store file",
            args: &["--data-dir", "d"],
            prepare: |dir| {
                std::fs::create_dir_all(dir.join("d/concord")).unwrap();
                std::fs::write(dir.join("d/concord/store.redb"), vec![7u8; 4096]).unwrap();
            },
            code: 1,
            stderr_contains: "damaged or not concord's",
        },
        TestCase {
            name: "member not in --initial-cluster",
            args: &[
                "--data-dir",
                "d",
                "--name",
                "x",
                "--initial-cluster",
                "y=http://127.0.0.1:2380",
            ],
            prepare: |_| {},
            code: 1,
            stderr_contains: "couldn't find local name \"x\" in the initial cluster configuration",
        },
        TestCase {
            name: "peer URLs differ from --initial-cluster",
            args: &[
                "--data-dir",
                "d",
                "--name",
                "x",
                "--initial-cluster",
                "x=http://127.0.0.1:2381",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ],
            prepare: |_| {},
            code: 1,
            stderr_contains: "--initial-cluster has x=http://127.0.0.1:2381 but missing from \
                              --initial-advertise-peer-urls=http://127.0.0.1:2380",
        },
        TestCase {
            name: "https metrics URL without client TLS",
            args: &[
                "--data-dir",
                "d",
                "--listen-metrics-urls",
                "https://127.0.0.1:0",
            ],
            prepare: |_| {},
            code: 1,
            stderr_contains: "client TLS key/cert (--cert-file, --key-file) must be provided for \
                              metrics secure url",
        },
    ];
    for c in cases {
        let dir = tempfile::tempdir()?;
        (c.prepare)(dir.path());
        let (code, stderr) = run(dir.path(), c.args)?;
        assert_eq!(
            code,
            Some(c.code),
            "{}: exit code; stderr:\n{stderr}",
            c.name
        );
        assert!(
            stderr.contains(c.stderr_contains),
            "{}: stderr lacks {:?}:\n{stderr}",
            c.name,
            c.stderr_contains
        );
    }
    Ok(())
}

#[test]
fn version_flag_reports_etcd_3_5() -> Result<()> {
    let out = Command::new(concord_bin()?).arg("--version").output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert!(text.starts_with("etcd Version: 3.5.16\n"), "{text}");
    Ok(())
}
