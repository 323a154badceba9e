//! etcdctl compatibility: one scripted etcdctl session, run step by step against etcd 3.5.16 (the
//! reference) and against concord, with etcdctl 3.5 and with etcdctl 3.4. Every step's exit code,
//! stdout and stderr must match after normalisation; a failure lists each differing step with its
//! command, stdin and a line diff of expected (etcd) against actual (concord).
//!
//! Run against etcd itself (validates the harness): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use concord_tests::normalize::Outcome;
use concord_tests::{Etcdctl, Normalizer, Server, ServerKind, bytes_to_text};

/// One etcdctl invocation: its arguments (after `--endpoints=...`) and optional stdin.
struct Step {
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
}

impl Step {
    fn display(&self) -> String {
        let words: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                let t = bytes_to_text(a.as_encoded_bytes());
                if t.is_empty()
                    || t.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"')
                {
                    format!("{t:?}")
                } else {
                    t
                }
            })
            .collect();
        format!("etcdctl {}", words.join(" "))
    }
}

/// A step from plain text arguments.
fn c(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(OsString::from).collect(),
        stdin: None,
    }
}

/// A step with stdin.
fn c_in(args: &[&str], stdin: &str) -> Step {
    Step {
        stdin: Some(stdin.as_bytes().to_vec()),
        ..c(args)
    }
}

/// A step whose arguments are raw bytes (not necessarily UTF-8).
fn c_raw(args: &[&[u8]]) -> Step {
    Step {
        args: args
            .iter()
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
        stdin: None,
    }
}

/// The session. Revisions are deterministic: rev 1 is the empty store, each put/del/txn with a
/// write adds one. Comments give the revision after the step where later steps depend on it.
fn script() -> Vec<Step> {
    let mut s = vec![
        // --- put / get basics
        c(&["put", "foo", "bar"]), // rev 2
        c(&["put", "foo", "bar2", "--prev-kv"]),
        c(&["get", "foo"]),
        c(&["get", "foo", "-w", "json"]),
        c(&["put", "foo", "bar3", "--prev-kv", "-w", "json"]), // rev 4
        c(&["get", "foo", "-w", "fields"]),
        c(&["get", "missing"]),
        c(&["get", "missing", "-w", "json"]),
        c(&["get", "foo", "--consistency=s"]),
        // --- a keyspace whose create order, mod order, versions and values all differ from key
        // order, with no ties (etcd sorts with an unstable sort, so ties would be arbitrary).
        c(&["put", "dir/c", "mu0"]), // rev 5
        c(&["put", "dir/a", "zeta"]),
        c(&["put", "dir/e", "omega0"]), // rev 7
        c(&["put", "dir/b", "alpha0"]),
        c(&["put", "dir/d", "beta0"]),
        c(&["put", "dir/e", "omega1"]), // rev 10
        c(&["put", "dir/c", "mu1"]),
        c(&["put", "dir/d", "beta1"]),
        c(&["put", "dir/e", "omega2"]),
        c(&["put", "dir/d", "beta2"]),
        c(&["put", "dir/e", "omega3"]),
        c(&["put", "dir/c", "mu"]),
        c(&["put", "dir/b", "alpha"]),
        c(&["put", "dir/d", "beta"]),
        c(&["put", "dir/e", "omega"]), // rev 19
        c(&["get", "dir/", "--prefix"]),
        c(&["get", "dir/", "--prefix", "-w", "json"]),
        c(&["get", "dir/", "--prefix", "--limit", "2"]),
        c(&["get", "dir/", "--prefix", "--limit=2", "-w", "json"]),
    ];
    for sort in ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"] {
        for order in ["ASCEND", "DESCEND"] {
            s.push(c(&[
                "get",
                "dir/",
                "--prefix",
                &format!("--sort-by={sort}"),
                &format!("--order={order}"),
            ]));
        }
    }
    s.extend([
        c(&["get", "dir/", "--prefix", "--sort-by=VALUE"]),
        c(&["get", "dir/", "--prefix", "--order=DESCEND"]),
        c(&[
            "get",
            "dir/",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--limit=2",
            "-w",
            "json",
        ]),
        c(&["get", "dir/", "--prefix", "--sort-by=VERSION", "--limit=3"]),
        c(&["get", "dir/", "--prefix", "--sort-by=BOGUS"]),
        c(&["get", "dir/", "--prefix", "--keys-only"]),
        c(&["get", "dir/", "--prefix", "--keys-only", "-w", "json"]),
        c(&["get", "dir/", "--prefix", "--print-value-only"]),
        c(&["get", "dir/", "--prefix", "--count-only", "-w", "fields"]),
        c(&["get", "dir/", "--prefix", "--count-only"]),
        c(&["get", "dir/b", "dir/d"]),
        c(&["get", "dir/c", "--from-key"]),
        c(&["get", "dir/c", "--from-key", "--limit=2", "--keys-only"]),
        c(&["get", "", "--prefix"]),
        c(&["get", "", "--prefix", "--keys-only", "--limit=3"]),
        c(&["get", "", "--from-key", "--count-only", "-w", "fields"]),
        c(&["get", ""]),
        c(&["get", "dir/e", "--rev", "7"]),
        c(&["get", "dir/e", "--rev=9", "-w", "json"]),
        c(&["get", "dir/", "--prefix", "--rev=10"]),
        c(&["get", "dir/", "--prefix", "--rev=1000"]),
        // --- binary-ish and unicode keys and values
        c(&["put", "ключ", "значение ✓"]),
        c(&["put", "emoji/🦀", "crab 🦀"]),
        c_raw(&[b"put", b"bin/\x01\xff", b"\x7f\x80\xfe\tend"]),
        c(&["get", "ключ"]),
        c(&["get", "emoji/", "--prefix", "-w", "json"]),
        c_raw(&[b"get", b"bin/\x01\xff"]),
        c(&["get", "bin/", "--prefix", "-w", "json"]),
        c_in(&["put", "multi"], "line1\nline2\n"),
        c(&["get", "multi"]),
        c(&["get", "multi", "--print-value-only", "-w", "json"]),
        c(&["put", "--", "-dash", "-value"]),
        c(&["get", "--", "-dash"]),
        c(&["put", "empty", ""]),
        c(&["get", "empty", "-w", "json"]),
        c(&["put", "spaced", "a value  with spaces"]),
        c(&["get", "spaced"]),
        // --- put flags and put errors
        c(&["put", "foo", "--ignore-value"]),
        c(&["get", "foo", "-w", "json"]),
        c(&["put", "nokey", "--ignore-value"]),
        c(&["put", "foo", "x", "--ignore-value"]),
        c(&["put", "foo", "--ignore-lease"]),
        c(&["put", "foo", "newval", "--ignore-lease"]),
        c(&["put", "nokey", "v", "--ignore-lease"]),
        c(&["put", "foo", "v", "--lease=1234"]),
        c(&["put"]),
        c(&["put", "", "v"]),
        c(&["get", "nokey"]),
        // --- delete
        c(&["del", "missing"]),
        c(&["del", "missing", "-w", "json"]),
        c(&["del", "foo", "--prev-kv"]),
        c(&["del", "dir/a"]),
        c(&["del", "dir/a", "dir/c", "--prev-kv", "-w", "json"]),
        c(&["put", "zz/a", "1"]),
        c(&["put", "zz/b", "2"]),
        c(&["put", "zz/c", "3"]),
        c(&["del", "zz/b", "--from-key", "--prev-kv"]),
        c(&["get", "", "--prefix", "--keys-only"]),
        c(&["del", "emoji/", "--prefix", "-w", "json"]),
        c(&["del", ""]),
        // --- txn (non-interactive: compares, blank line, success ops, blank line, failure ops,
        // blank line)
        c(&["put", "t/x", "10"]),
        c(&["put", "t/y", "hello"]),
        c_in(
            &["txn"],
            "value(\"t/y\") = \"hello\"\nversion(\"t/x\") = \"1\"\ncreate(\"t/x\") > \"0\"\nmod(\"t/y\") < \"1000\"\n\nput t/z zz\nget t/x\ndel t/none\nget t/ --prefix\n\nput t/failed 1\n\n",
        ),
        c_in(
            &["txn", "-w", "json"],
            "value(\"t/y\") != \"hello\"\n\nput t/never 1\n\nget t/ --prefix --keys-only\nput t/else 2\ndel t/x --prev-kv\n\n",
        ),
        c_in(
            &["txn", "-w", "json"],
            "value(\"t/y\") > \"abc\"\nvalue(\"t/y\") < \"zzz\"\nversion(\"t/missing\") = \"0\"\nmod(\"t/z\") != \"0\"\n\nput t/gt 1\nget t/gt\n\nput t/lt 1\n\n",
        ),
        c_in(
            &["txn"],
            "create(\"t/y\") < \"2\"\nversion(\"t/y\") > \"5\"\n\nput t/no 1\n\ndel t/ --prefix\nget t/y\n\n",
        ),
        c_in(&["txn"], "\nput t/u 1\nget t/u\n\n\n"),
        c_in(&["txn", "-w", "json"], "\n\n\n"),
        c_in(&["txn"], "\nput t/d 1\nput t/d 2\n\n\n"),
        c_in(&["txn"], "bogus compare\n\n\n\n"),
        c_in(&["txn"], "\nput t/v 1\n\n"),
        c(&["get", "t/", "--prefix", "-w", "json"]),
        // --- compaction
        c(&["compact", "5"]),
        c(&["compact", "5"]),
        c(&["compact", "3"]),
        c(&["compact", "100000"]),
        c(&["get", "dir/e", "--rev=4"]),
        c(&["get", "dir/e", "--rev=5"]),
        c(&["get", "dir/", "--prefix", "--rev=19"]),
        c(&["compact", "20", "--physical"]),
        c(&["get", "dir/", "--prefix", "--rev=19"]),
        c(&["get", "dir/", "--prefix", "--rev=20", "--keys-only"]),
        c(&["get", "dir/", "--prefix", "--rev=100000"]),
        c(&["get", "dir/", "--prefix", "-w", "json"]),
        c(&["put", "last", "v", "-w", "json"]),
        // --- cluster and maintenance views
        c(&["endpoint", "status"]),
        c(&["endpoint", "status", "-w", "table"]),
        c(&["endpoint", "status", "-w", "json"]),
        c(&["endpoint", "health"]),
        c(&["endpoint", "health", "-w", "json"]),
        c(&["endpoint", "health", "-w", "table"]),
        c(&["member", "list"]),
        c(&["member", "list", "-w", "json"]),
        c(&["member", "list", "-w", "table"]),
        c(&["alarm", "list"]),
    ]);
    s
}

/// Columns of `endpoint status` in the default `simple` format (comma-separated).
const ENDPOINT_STATUS_COLUMNS: &[&str] = &[
    "ENDPOINT",
    "ID",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "IS LEARNER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "ERRORS",
];

/// Columns of `member list` in the default `simple` format (comma-separated).
const MEMBER_LIST_COLUMNS: &[&str] = &[
    "ID",
    "STATUS",
    "NAME",
    "PEER ADDRS",
    "CLIENT ADDRS",
    "IS LEARNER",
];

/// What is not compared, and why (everything else must match byte for byte):
///
/// - The server's own address `127.a.b.c` becomes `<server-ip>`: each server runs on its own
///   loopback address (endpoints, peer and client URLs).
/// - `cluster_id`, `member_id` (JSON headers), `ClusterID`, `MemberID` (`-w fields`), `ID` (member
///   list and endpoint status in JSON, table and simple formats), `leader` (endpoint status JSON):
///   member and cluster IDs are hashes of the peer URLs, hence of the address.
/// - `raftIndex`, `raftAppliedIndex` (JSON), `RAFT INDEX`, `RAFT APPLIED INDEX` (table, simple):
///   raft logs also hold internal entries (conf changes, member attributes, cluster version) whose
///   number is an implementation detail. NOT blanked: `raft_term`/`raftTerm` (a fresh single
///   member is at term 2) and every `revision`.
/// - `dbSize`, `dbSizeInUse` (JSON), `DB SIZE` (table, simple): storage engine file sizes.
/// - `took` (JSON), `TOOK` (table), the word after `took = ` (simple): health check latency.
/// - `ts`, `target` in etcdctl's JSON log lines on stderr: the client's clock, and its resolver
///   target, which holds a Go pointer (3.5) or a random UUID (3.4).
fn normalizer(server: &Server) -> Normalizer {
    Normalizer::new()
        .replace(format!("{}:", server.ip()), "<server-ip>:")
        .blank(&[
            "cluster_id",
            "member_id",
            "ClusterID",
            "MemberID",
            "ID",
            "leader",
            "raftIndex",
            "raftAppliedIndex",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "dbSize",
            "dbSizeInUse",
            "DB SIZE",
            "took",
            "TOOK",
            "ts",
            "target",
        ])
        .blank_simple_columns(
            ENDPOINT_STATUS_COLUMNS,
            &["ID", "DB SIZE", "RAFT INDEX", "RAFT APPLIED INDEX"],
        )
        .blank_simple_columns(MEMBER_LIST_COLUMNS, &["ID"])
        .blank_after("took = ")
}

fn outcome(ctl: Etcdctl, server: &Server, norm: &Normalizer, step: &Step) -> Outcome {
    match ctl.run(&server.endpoint(), &step.args, step.stdin.as_deref()) {
        Ok(out) => Outcome {
            exit: match out.code {
                Some(code) => format!("exit {code}"),
                None => "killed by a signal".to_owned(),
            },
            stdout: norm.apply(&out.stdout_text()),
            stderr: norm.apply(&out.stderr_text()),
        },
        Err(e) => Outcome {
            exit: norm.apply(&format!("failed: {e:#}")),
            stdout: String::new(),
            stderr: String::new(),
        },
    }
}

fn describe(n: usize, step: &Step, expected: &Outcome, actual: &Outcome) -> String {
    let mut out = format!("\n=== step {n}: {}\n", step.display());
    if let Some(stdin) = &step.stdin {
        out.push_str(&format!("--- stdin:\n{}\n", bytes_to_text(stdin)));
    }
    out.push_str(&expected.diff(actual));
    out
}

/// Runs the session with `ctl` against a reference etcd 3.5.16 and against concord.
fn compare_session(ctl: Etcdctl) {
    let reference = Server::start(ServerKind::Etcd35).expect("starting reference etcd 3.5.16");
    let mut concord = Server::start(ServerKind::Concord).expect("starting concord");
    let (ref_norm, concord_norm) = (normalizer(&reference), normalizer(&concord));
    let steps = script();
    let mut report = String::new();
    let mut differing = 0;
    for (n, step) in steps.iter().enumerate() {
        let expected = outcome(ctl, &reference, &ref_norm, step);
        let actual = outcome(ctl, &concord, &concord_norm, step);
        // The reference transcript, shown with --nocapture or on failure.
        println!(
            "=== step {n}: {} -> {}\n{}{}",
            step.display(),
            expected.exit,
            expected.stdout,
            expected.stderr
        );
        if expected != actual {
            differing += 1;
            let diff = describe(n, step, &expected, &actual);
            // Also now, so that a run cut short by the test timeout still shows it.
            eprint!("{diff}");
            report.push_str(&diff);
        }
        if !concord.is_running() {
            report.push_str(&format!(
                "\n=== {:?} exited during step {n}; stopping the session here",
                concord.kind()
            ));
            differing += 1;
            break;
        }
    }
    assert!(
        differing == 0,
        "etcdctl {ctl:?}: {differing} of {} steps differ between etcd 3.5.16 (expected) and {:?} \
         (actual; set CONCORD_BIN to choose its binary):{report}",
        steps.len(),
        concord.kind(),
    );
}

#[test]
fn etcdctl35_session_matches_etcd35() {
    compare_session(Etcdctl::V35);
}

#[test]
fn etcdctl34_session_matches_etcd35() {
    compare_session(Etcdctl::V34);
}
