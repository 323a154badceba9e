//! Auth compatibility: etcdctl 3.5 `user`, `role` and `auth` sessions, and operations as users
//! with and without permission, run step by step against etcd 3.5.16 (the reference) and
//! against concord; every step's exit code, stdout and stderr must match after normalisation.
//! Both servers run with `--bcrypt-cost=4` so that the many authentications stay cheap.
//!
//! Run against etcd itself (validates the harness): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::time::Duration;

use concord_tests::{Etcdctl, Normalizer, Server, ServerKind, line_diff};

/// How one step is run.
#[derive(Clone, Copy)]
enum Mode {
    /// To completion.
    Run,
    /// A command that never ends by itself (`watch`): stopped after this long, and what it
    /// printed by then is compared.
    For(Duration),
}

/// One etcdctl invocation: its arguments (after `--endpoints=...`) and optional stdin.
struct Step {
    args: Vec<String>,
    stdin: Option<String>,
    mode: Mode,
}

/// A step from plain text arguments.
fn c(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: None,
        mode: Mode::Run,
    }
}

/// A step run as `user:password`.
fn as_user(user: &str, args: &[&str]) -> Step {
    let mut s = c(args);
    s.args.insert(0, format!("--user={user}"));
    s
}

/// A step as `user:password` with stdin.
fn as_user_in(user: &str, args: &[&str], stdin: &str) -> Step {
    Step {
        stdin: Some(stdin.to_owned()),
        ..as_user(user, args)
    }
}

/// A never-ending step as `user:password`, cut after `secs` seconds.
fn as_user_for(user: &str, args: &[&str], secs: u64) -> Step {
    Step {
        mode: Mode::For(Duration::from_secs(secs)),
        ..as_user(user, args)
    }
}

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// Users, roles and permissions, then `auth enable`, operations as root and as a user with
/// and without permission (get, put, del, txn, watch), a wrong password, a revoked permission
/// failing at once, password change, and `auth disable`.
fn script() -> Vec<Step> {
    vec![
        // --- before auth: users and roles; AuthEnable needs the root user (etcdctl itself adds
        // the root role and grants it when only that is missing)
        c(&["auth", "status"]),
        c(&["auth", "enable"]),
        c(&["user", "add", "alice", "--new-user-password=alicepw"]),
        c(&["user", "add", "alice", "--new-user-password=other"]),
        c(&["user", "add", "bob", "--new-user-password=bobpw"]),
        c(&["user", "get", "alice"]),
        c(&["user", "get", "nobody"]),
        c(&["user", "list"]),
        c(&["role", "add", "reader"]),
        c(&["role", "add", "reader"]),
        c(&["role", "add", "writer"]),
        c(&["role", "grant-permission", "reader", "read", "foo"]),
        c(&[
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "dir/",
            "--prefix",
        ]),
        c(&[
            "role",
            "grant-permission",
            "reader",
            "read",
            "k",
            "--from-key",
        ]),
        c(&["role", "grant-permission", "writer", "write", "a", "c"]),
        c(&[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "tx/",
            "--prefix",
        ]),
        c(&["role", "grant-permission", "writer", "write", "b", "a"]),
        c(&["role", "grant-permission", "nosuch", "read", "foo"]),
        c(&["role", "get", "reader"]),
        c(&["role", "get", "writer"]),
        c(&["role", "get", "reader", "-w", "json"]),
        c(&["role", "get", "nosuch"]),
        c(&["role", "list"]),
        c(&["user", "grant-role", "alice", "reader"]),
        c(&["user", "grant-role", "alice", "reader"]),
        c(&["user", "grant-role", "alice", "nosuch"]),
        c(&["user", "grant-role", "nobody", "reader"]),
        c(&["user", "grant-role", "bob", "writer"]),
        c(&["user", "get", "alice"]),
        c(&["user", "get", "alice", "--detail"]),
        c(&["user", "get", "alice", "-w", "json"]),
        c(&["user", "revoke-role", "alice", "writer"]),
        c(&["role", "revoke-permission", "writer", "zzz"]),
        c(&["auth", "status"]),
        c(&["user", "add", "root", "--new-user-password=rootpw"]),
        c(&["user", "get", "root"]),
        c(&["put", "foo", "bar"]),
        c(&["put", "dir/a", "1"]),
        // --- auth on
        c(&["auth", "enable"]),
        c(&["auth", "status"]),
        as_user(ROOT, &["user", "get", "root"]),
        as_user(ROOT, &["role", "get", "root"]),
        c(&["get", "foo"]),
        c(&["put", "foo", "nope"]),
        c(&["user", "list"]),
        as_user(ROOT, &["auth", "status"]),
        as_user(ROOT, &["auth", "enable"]),
        as_user(ROOT, &["user", "list"]),
        as_user(ROOT, &["role", "list"]),
        as_user(ROOT, &["get", "foo"]),
        as_user(ROOT, &["put", "k1", "v1"]),
        as_user("root:wrong", &["get", "foo"]),
        as_user("nobody:x", &["get", "foo"]),
        as_user("alice:wrong", &["get", "foo"]),
        // --- a user with some permissions
        as_user(ALICE, &["get", "foo"]),
        as_user(ALICE, &["put", "foo", "x"]),
        as_user(ALICE, &["get", "fo", "--prefix"]),
        as_user(ALICE, &["put", "dir/b", "2"]),
        as_user(ALICE, &["get", "dir/", "--prefix"]),
        as_user(ALICE, &["get", "dir/", "--prefix", "--keys-only"]),
        as_user(ALICE, &["get", "", "--prefix"]),
        as_user(ALICE, &["get", "k1"]),
        as_user(ALICE, &["get", "k", "--from-key"]),
        as_user(ALICE, &["get", "a", "--from-key"]),
        as_user(ALICE, &["del", "dir/b"]),
        as_user(ALICE, &["del", "dir/", "--prefix", "--prev-kv"]),
        as_user(ALICE, &["del", "foo"]),
        as_user(ALICE, &["user", "list"]),
        as_user(ALICE, &["user", "get", "alice"]),
        as_user(ALICE, &["user", "get", "bob"]),
        as_user(ALICE, &["role", "get", "reader"]),
        as_user(ALICE, &["role", "get", "writer"]),
        as_user(ALICE, &["user", "add", "eve", "--new-user-password=x"]),
        as_user(ALICE, &["auth", "disable"]),
        as_user(ALICE, &["compaction", "2"]),
        as_user(ALICE, &["defrag"]),
        as_user_in(
            ALICE,
            &["txn"],
            "value(\"foo\") = \"bar\"\n\nget foo\n\nget dir/a\n\n",
        ),
        as_user_in(
            ALICE,
            &["txn"],
            "value(\"foo\") = \"bar\"\n\nput foo x\n\n\n",
        ),
        as_user_in(
            ALICE,
            &["txn"],
            "value(\"secret\") = \"x\"\n\nget foo\n\n\n",
        ),
        as_user_in(
            ALICE,
            &["txn"],
            "value(\"foo\") = \"bar\"\n\nput dir/t 1\n\nget other\n\n",
        ),
        // bob may write [a, c) and read-write tx/
        as_user(BOB, &["put", "b", "1"]),
        as_user(BOB, &["get", "b"]),
        as_user(BOB, &["put", "c", "1"]),
        as_user(BOB, &["del", "a", "c"]),
        as_user(BOB, &["del", "a", "d"]),
        as_user_in(
            BOB,
            &["txn"],
            "create(\"tx/k\") = \"0\"\n\nput tx/k 1\n\nget tx/k\n\n",
        ),
        as_user_in(
            BOB,
            &["txn"],
            "mod(\"tx/k\") > \"0\"\n\nput b 2\ndel tx/k\n\n\n",
        ),
        // --- watch: permitted (history from rev 2) and refused
        as_user_for(ALICE, &["watch", "foo", "--rev=2"], 2),
        as_user_for(ALICE, &["watch", "dir/", "--prefix", "--rev=2"], 2),
        as_user_for(ALICE, &["watch", "secret"], 2),
        as_user_for(ALICE, &["watch", "", "--prefix"], 2),
        // --- a revoked permission fails at once
        as_user(ROOT, &["role", "revoke-permission", "reader", "foo"]),
        as_user(ROOT, &["role", "revoke-permission", "reader", "foo"]),
        as_user(ALICE, &["get", "foo"]),
        as_user(ROOT, &["role", "grant-permission", "reader", "read", "foo"]),
        as_user(ALICE, &["get", "foo"]),
        as_user(ROOT, &["user", "revoke-role", "alice", "reader"]),
        as_user(ROOT, &["user", "revoke-role", "alice", "reader"]),
        as_user(ALICE, &["get", "foo"]),
        as_user(ROOT, &["user", "grant-role", "alice", "reader"]),
        // --- password change
        as_user_in(
            ROOT,
            &["user", "passwd", "alice", "--interactive=false"],
            "newpw\n",
        ),
        as_user(ALICE, &["get", "foo"]),
        as_user("alice:newpw", &["get", "foo"]),
        // --- what root may not do while auth is on
        as_user(ROOT, &["user", "delete", "root"]),
        as_user(ROOT, &["user", "revoke-role", "root", "root"]),
        as_user(ROOT, &["role", "delete", "root"]),
        as_user(ROOT, &["role", "delete", "writer"]),
        as_user(ROOT, &["user", "get", "bob"]),
        as_user(BOB, &["put", "b", "3"]),
        as_user(ROOT, &["user", "delete", "bob"]),
        as_user(ROOT, &["user", "delete", "bob"]),
        as_user(BOB, &["get", "b"]),
        as_user(ROOT, &["user", "list"]),
        as_user(ROOT, &["role", "list"]),
        as_user(ROOT, &["get", "", "--prefix"]),
        // --- auth off
        as_user(ROOT, &["auth", "disable"]),
        c(&["auth", "status"]),
        c(&["auth", "disable"]),
        c(&["get", "foo"]),
        c(&["user", "delete", "nobody"]),
        c(&["role", "delete", "nosuch"]),
        c(&["role", "revoke-permission", "nosuch", "foo"]),
        c(&["user", "revoke-role", "alice", "nosuch"]),
        c(&["user", "delete", "root"]),
        c(&["user", "list"]),
    ]
}

const BOB: &str = "bob:bobpw";

/// What differs between two servers for the same session and nothing else: member and cluster
/// IDs and the raft term are not blanked (a single fresh member), nor are revisions; only the
/// address of the server.
fn normalizer(server: &Server) -> Normalizer {
    Normalizer::new()
        .replace(format!("{}:", server.ip()), "<server-ip>:")
        .blank(&["cluster_id", "member_id", "ts", "target"])
}

#[derive(PartialEq, Eq)]
struct Outcome {
    exit: String,
    stdout: String,
    stderr: String,
}

fn outcome(server: &Server, norm: &Normalizer, step: &Step) -> Outcome {
    let ctl = Etcdctl::V35;
    let stdin = step.stdin.as_ref().map(|s| s.as_bytes());
    let out = match step.mode {
        Mode::Run => ctl.run(&server.endpoint(), &step.args, stdin),
        Mode::For(d) => ctl.run_for(&server.endpoint(), &step.args, stdin, d),
    };
    match out {
        Ok(out) => Outcome {
            exit: match (out.code, out.stopped) {
                (_, true) => "still running".to_owned(),
                (Some(code), _) => format!("exit {code}"),
                (None, _) => "killed by a signal".to_owned(),
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
    let mut out = format!("\n=== step {n}: etcdctl {}\n", step.args.join(" "));
    if let Some(stdin) = &step.stdin {
        out.push_str(&format!("--- stdin:\n{stdin}\n"));
    }
    if expected.exit != actual.exit {
        out.push_str(&format!(
            "--- exit: expected {}, actual {}\n",
            expected.exit, actual.exit
        ));
    }
    for (what, e, a) in [
        ("stdout", &expected.stdout, &actual.stdout),
        ("stderr", &expected.stderr, &actual.stderr),
    ] {
        if e != a {
            out.push_str(&format!(
                "--- {what} (- expected from etcd 3.5.16, + actual):\n{}",
                line_diff(e, a)
            ));
        }
    }
    out
}

fn start(kind: ServerKind) -> Server {
    Server::builder(kind)
        .arg("--bcrypt-cost=4")
        .start()
        .unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"))
}

#[test]
fn etcdctl_auth_session_matches_etcd35() {
    let reference = start(ServerKind::Etcd35);
    let mut concord = start(ServerKind::Concord);
    let (ref_norm, concord_norm) = (normalizer(&reference), normalizer(&concord));
    let steps = script();
    let mut report = String::new();
    let mut differing = 0;
    for (n, step) in steps.iter().enumerate() {
        let expected = outcome(&reference, &ref_norm, step);
        let actual = outcome(&concord, &concord_norm, step);
        println!(
            "=== step {n}: etcdctl {} -> {}\n{}{}",
            step.args.join(" "),
            expected.exit,
            expected.stdout,
            expected.stderr
        );
        if expected != actual {
            differing += 1;
            let diff = describe(n, step, &expected, &actual);
            eprint!("{diff}");
            report.push_str(&diff);
        }
        if !concord.is_running() {
            report.push_str(&format!("\n=== concord exited during step {n}"));
            differing += 1;
            break;
        }
    }
    assert!(
        differing == 0,
        "{differing} of {} steps differ between etcd 3.5.16 (expected) and {:?} (actual):{report}",
        steps.len(),
        concord.kind(),
    );
}
