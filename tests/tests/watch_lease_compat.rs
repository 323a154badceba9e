//! etcdctl compatibility for Watch and Lease: scripted etcdctl sessions run step by step against
//! etcd 3.5.16 (the reference) and against concord, with etcdctl 3.5 and with etcdctl 3.4. Every
//! step's exit code, stdout and stderr must match after normalisation; a failure lists each
//! differing step with its command, stdin and a line diff of expected (etcd) against actual.
//!
//! - The watch session writes a deterministic history (puts, deletes, a multi-key txn, a prefix
//!   delete), so that revisions are identical on both servers, then replays it with `watch`
//!   (`--rev`, `--prefix`, ranges, `--prev-kv`, `-w json|fields`, an exec command, interactive
//!   mode `-i`), from compacted revisions (etcdctl prints the cancel reason and exits), and watches
//!   live writes: a watcher started in the background on each server sees puts, a txn (one
//!   response: one JSON line), a lease revoke and a prefix delete made by other etcdctl runs.
//! - The lease session grants (including the 2 s minimum and the 9e9 s maximum), attaches keys,
//!   asks `timetolive` (with `--keys`), `list`s, keeps alive (`--once` and the endless loop),
//!   lets a lease expire, revokes, and makes the not-found and too-large errors.
//!
//! A watch never exits by itself: such a step runs for [`WATCH_TIME`] against both servers at
//! once (at least [`AFTER_CONNECT`] after etcdctl connected), is then stopped, and its whole
//! output compared; history is delivered within ~100 ms of connecting.
//!
//! Run against etcd itself (validates the test): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::time::{Duration, Instant};

use concord_tests::normalize::Outcome;
use concord_tests::{Background, CtlOutput, Etcdctl, Normalizer, Server, ServerKind};

/// How long a never-ending step (a watch, `lease keep-alive`) runs before it is stopped.
const WATCH_TIME: Duration = Duration::from_millis(1500);
/// ... and at least this long after etcdctl connected (a slow start must not cut it short).
const AFTER_CONNECT: Duration = Duration::from_secs(1);
/// Bound on etcdctl's start and connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Between a live watcher's connection and the first write: etcdctl sends its create request
/// right after connecting, so the watcher exists long before this has passed. The assertion is
/// on output, not on timing.
const LIVE_SETTLE: Duration = Duration::from_millis(500);

/// What a step does.
enum Action {
    /// Run etcdctl to completion.
    Run,
    /// Run etcdctl for [`WATCH_TIME`], then stop it (a watch, `lease keep-alive`).
    RunFor,
    /// Wait (both servers at once), e.g. for a lease to expire.
    Sleep(Duration),
    /// Start the watch in the background on each server, wait until it is connected, run these
    /// steps (each compared too), then stop the watch and compare everything it printed.
    Live(Vec<Step>),
}

/// One step. In `args`, `<lease-N>` stands for the N-th lease granted on that server (in hex, as
/// etcdctl prints and parses lease IDs).
struct Step {
    action: Action,
    args: Vec<String>,
    stdin: Option<String>,
    /// Skipped with etcdctl 3.4, which lacks what the step uses.
    only_35: bool,
    /// The output shows the remaining TTL of a live lease, which is blanked.
    remaining_ttl: bool,
}

impl Step {
    fn new(action: Action, args: &[&str]) -> Step {
        Step {
            action,
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: None,
            only_35: false,
            remaining_ttl: false,
        }
    }

    fn stdin(mut self, stdin: &str) -> Step {
        self.stdin = Some(stdin.to_owned());
        self
    }

    fn only_35(mut self) -> Step {
        self.only_35 = true;
        self
    }

    fn remaining_ttl(mut self) -> Step {
        self.remaining_ttl = true;
        self
    }

    fn display(&self) -> String {
        if let Action::Sleep(d) = self.action {
            return format!("(sleep {d:?})");
        }
        let words: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '$') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect();
        let mut out = format!("etcdctl {}", words.join(" "));
        match self.action {
            Action::RunFor => out.push_str(&format!(" (stopped after {WATCH_TIME:?})")),
            Action::Live(_) => out.push_str(" (live, in the background)"),
            _ => {}
        }
        out
    }

    fn is_lease_grant(&self) -> bool {
        self.args
            .starts_with(&["lease".to_owned(), "grant".to_owned()])
    }

    fn is_lease_timetolive(&self) -> bool {
        self.args
            .starts_with(&["lease".to_owned(), "timetolive".to_owned()])
    }
}

/// A step run to completion.
fn c(args: &[&str]) -> Step {
    Step::new(Action::Run, args)
}

/// A step that never ends by itself: run for [`WATCH_TIME`], then stopped.
fn w(args: &[&str]) -> Step {
    Step::new(Action::RunFor, args)
}

/// A live watch around `steps`.
fn live(args: &[&str], steps: Vec<Step>) -> Step {
    Step::new(Action::Live(steps), args)
}

fn sleep(d: Duration) -> Step {
    Step::new(Action::Sleep(d), &[])
}

/// The watch session. Revisions are deterministic: rev 1 is the empty store, each put, delete or
/// txn with a write adds one.
fn watch_script() -> Vec<Step> {
    vec![
        c(&["put", "foo", "bar"]),  // rev 2
        c(&["put", "k1", "v1"]),    // rev 3
        c(&["put", "k2", "v2"]),    // rev 4
        c(&["put", "foo", "bar2"]), // rev 5
        c(&["del", "k1"]),          // rev 6
        // rev 7: three events in one revision
        c(&["txn"]).stdin("\nput k3 v3\nput foo bar3\ndel k2\n\n\n"),
        c(&["put", "kz", ""]),        // rev 8
        c(&["put", "foo", "bar4"]),   // rev 9
        c(&["del", "k", "--prefix"]), // rev 10: deletes k3 and kz
        c(&["put", "other", "x"]),    // rev 11
        // --- history replay (each watch then blocks, waiting for more)
        w(&["watch", "foo", "--rev", "2"]),
        w(&["watch", "foo", "--rev", "2", "-w", "json"]),
        w(&["watch", "--prefix", "k", "--rev", "1"]),
        w(&["watch", "--prefix", "k", "--rev", "1", "-w", "json"]),
        w(&["watch", "foo", "--prev-kv", "--rev", "2"]),
        w(&[
            "watch",
            "--prefix",
            "k",
            "--prev-kv",
            "--rev",
            "1",
            "-w",
            "json",
        ]),
        w(&["watch", "--prefix", "", "--rev", "1", "-w", "json"]),
        w(&["watch", "--prefix", "", "--rev", "1"]),
        w(&["watch", "k1", "k3", "--rev", "1"]),
        w(&[
            "watch",
            "--prefix",
            "k",
            "--rev",
            "6",
            "--prev-kv",
            "-w",
            "fields",
        ]),
        w(&["watch", "foo", "--rev", "7", "-w", "json"]),
        w(&["watch", "foo", "--rev", "9"]),
        w(&["watch", "foo", "--rev", "100"]),
        // etcdctl 3.4 has no --progress-notify (the server's default interval is 10 minutes, so
        // no notification is expected within the step).
        w(&[
            "watch",
            "other",
            "--rev",
            "11",
            "--progress-notify",
            "-w",
            "json",
        ])
        .only_35(),
        w(&[
            "watch",
            "foo",
            "--rev",
            "5",
            "--",
            "sh",
            "-c",
            "echo \"rev=$ETCD_WATCH_REVISION type=$ETCD_WATCH_EVENT_TYPE key=$ETCD_WATCH_KEY value=$ETCD_WATCH_VALUE\"",
        ]),
        w(&["watch"]),
        // --- interactive mode: one watch per session, as concurrent watches print in any order
        w(&["watch", "-i"]).stdin("watch foo --rev 2\n"),
        w(&["watch", "-i"]).stdin("watch --prefix k --rev 1 --prev-kv\n"),
        w(&["watch", "-i"]).stdin("bogus\nwatch k1 k3 --rev 1\n"),
        w(&["watch", "-i"]).stdin("watch foo -w json\n"),
        // --- compaction
        c(&["compact", "5"]),
        w(&["watch", "foo", "--rev", "2"]),
        w(&["watch", "foo", "--rev", "2", "-w", "json"]),
        w(&["watch", "foo", "--rev", "4", "--prev-kv"]),
        // The first event (rev 5) has no previous value left: rev 4 is compacted.
        w(&["watch", "foo", "--rev", "5", "--prev-kv"]),
        w(&["watch", "--prefix", "", "--rev", "5", "-w", "json"]),
        w(&["watch", "--prefix", "k", "--rev", "1", "-w", "fields"]),
        // The canceled watch's message goes to stderr, the other's events to stdout.
        w(&["watch", "-i"]).stdin("watch foo --rev 3\nwatch foo --rev 9\n"),
        c(&["compact", "10", "--physical"]),
        w(&["watch", "foo", "--rev", "9"]),
        w(&["watch", "--prefix", "", "--rev", "10", "-w", "json"]),
        // --- live watches: events as they happen, one response per revision
        live(
            &["watch", "foo"],
            vec![c(&["put", "foo", "live1"]), c(&["put", "foo", "live2"])],
        ),
        live(
            &["watch", "--prefix", "live/", "--prev-kv", "-w", "json"],
            vec![
                c(&["put", "live/a", "1"]),
                // One txn: three events in one response.
                c(&["txn"]).stdin(
                    "mod(\"live/a\") > \"0\"\n\nput live/b 2\nput live/c 3\ndel live/a\n\n\n",
                ),
                c(&["lease", "grant", "100"]),
                c(&["put", "live/d", "4", "--lease=<lease-1>"]),
                c(&["put", "live/e", "5", "--lease=<lease-1>"]),
                // The revoke deletes both keys in one revision.
                c(&["lease", "revoke", "<lease-1>"]),
                c(&["del", "live/", "--prefix"]),
                c(&["put", "other", "y"]),
                c(&["put", "live/a", "6"]),
            ],
        ),
        live(
            &["watch", "--prefix", "live/", "-w", "fields"],
            vec![
                c(&["put", "live/f", "7"]),
                c(&["txn"]).stdin("\nput live/g 8\ndel live/f\n\n\n"),
            ],
        ),
        Step {
            stdin: Some("watch foo --prev-kv\n".to_owned()),
            ..live(
                &["watch", "-i"],
                vec![c(&["put", "foo", "live3"]), c(&["del", "foo"])],
            )
        },
        // Everything since the last compaction, live writes included.
        w(&["watch", "--prefix", "", "--rev", "10", "-w", "json"]),
    ]
}

/// The lease session. `<lease-N>` is the N-th lease granted (see [`Step`]).
fn lease_script() -> Vec<Step> {
    // Leases expire up to 500 ms after their TTL (etcd checks every 500 ms), then are revoked
    // through raft: 4 s after its grant, a 2 s lease is surely gone.
    let expiry = Duration::from_millis(4000);
    vec![
        // A lease that expires: TTL 1 is raised to the minimum, 2 s with default flags. The two
        // steps after the grant run well within its 2 s, and nothing else writes until it has
        // expired, so that the revision of its expiry is the same on both servers.
        c(&["lease", "grant", "1"]),                    // <lease-1>
        c(&["put", "short", "v", "--lease=<lease-1>"]), // rev 2
        c(&["lease", "timetolive", "<lease-1>", "--keys"]).remaining_ttl(),
        sleep(expiry), // rev 3: the expiry deletes `short`
        c(&["get", "short"]),
        c(&["lease", "timetolive", "<lease-1>"]),
        c(&["lease", "timetolive", "<lease-1>", "--keys", "-w", "json"]),
        // Leases that stay.
        c(&["lease", "grant", "100"]), // <lease-2>
        c(&["put", "k", "v", "--lease=<lease-2>"]),
        c(&["put", "k2", "v2", "--lease=<lease-2>"]),
        c(&["lease", "timetolive", "<lease-2>"]).remaining_ttl(),
        c(&["lease", "timetolive", "<lease-2>", "--keys"]).remaining_ttl(),
        c(&["lease", "timetolive", "<lease-2>", "--keys", "-w", "json"]).remaining_ttl(),
        c(&["lease", "timetolive", "<lease-2>", "--keys", "-w", "fields"]).remaining_ttl(),
        c(&["lease", "timetolive", "<lease-2>", "-w", "json"]).remaining_ttl(),
        c(&["lease", "grant", "100", "-w", "json"]), // <lease-3>
        c(&["lease", "grant", "50", "-w", "fields"]), // <lease-4>
        c(&["get", "k", "-w", "json"]),
        c(&["put", "k3", "v3", "--lease=<lease-3>"]),
        c(&["put", "k3", "v3b", "--ignore-lease"]),
        c(&["get", "k3", "-w", "fields"]),
        c(&["lease", "timetolive", "<lease-3>", "--keys"]).remaining_ttl(),
        // Leases are listed by expiry: <lease-4> (50 s), <lease-2>, <lease-3> (100 s).
        c(&["lease", "list"]),
        c(&["lease", "list", "-w", "json"]),
        c(&["lease", "list", "-w", "fields"]),
        c(&["lease", "keep-alive", "--once", "<lease-2>"]),
        c(&["lease", "keep-alive", "--once", "<lease-2>", "-w", "json"]),
        c(&["lease", "keep-alive", "--once", "<lease-2>", "-w", "fields"]),
        // <lease-2> now expires last.
        c(&["lease", "list"]),
        c(&["lease", "timetolive", "<lease-2>", "-w", "json"]).remaining_ttl(),
        // The endless keep-alive loop: one refresh at once, the next only after TTL/3.
        w(&["lease", "keep-alive", "<lease-4>"]),
        w(&["lease", "keep-alive", "<lease-4>", "-w", "json"]),
        c(&["lease", "revoke", "<lease-2>"]),
        c(&["get", "", "--prefix"]),
        c(&["lease", "timetolive", "<lease-2>"]),
        c(&["lease", "timetolive", "<lease-2>", "--keys"]),
        c(&["lease", "timetolive", "<lease-2>", "-w", "json"]),
        c(&["lease", "timetolive", "<lease-2>", "-w", "fields"]),
        c(&["lease", "revoke", "<lease-2>"]),
        c(&["lease", "revoke", "<lease-2>", "-w", "json"]),
        c(&["lease", "keep-alive", "--once", "<lease-2>"]),
        w(&["lease", "keep-alive", "<lease-2>"]),
        c(&["put", "k4", "v", "--lease=<lease-2>"]),
        c(&["lease", "list"]),
        c(&["lease", "revoke", "<lease-3>", "-w", "json"]),
        // The key kept its lease through `--ignore-lease`, so it is gone.
        c(&["get", "k3"]),
        // --- limits and errors
        c(&["lease", "grant", "9000000001"]),
        c(&["lease", "grant", "9000000001", "-w", "json"]),
        c(&["lease", "grant", "9000000000"]), // <lease-5>
        c(&["lease", "timetolive", "<lease-5>"]).remaining_ttl(),
        c(&["put", "x", "y", "--lease=1234"]),
        c(&["lease", "revoke", "1234"]),
        c(&["lease", "timetolive", "1234"]),
        c(&["lease", "timetolive", "1234", "-w", "json"]),
        c(&["lease", "keep-alive", "--once", "1234"]),
        c(&["lease", "grant", "abc"]),
        c(&["lease", "grant"]),
        c(&["lease", "revoke"]),
        c(&["lease", "revoke", "zz"]),
        c(&["lease", "timetolive"]),
        c(&["lease", "list", "-w", "table"]),
        c(&["lease", "list"]),
        // The history: attaches, the expiry's delete, the revokes' deletes.
        w(&["watch", "--prefix", "", "--rev", "1", "-w", "json"]),
        // Last, as it expires 2 s later: TTL 0 is raised to the minimum too.
        c(&["lease", "grant", "0"]), // <lease-6>
        c(&["lease", "timetolive", "<lease-6>", "-w", "json"]).remaining_ttl(),
    ]
}

/// JSON keys and `-w fields` keys whose value is a lease ID.
const LEASE_ID_KEYS: &[&str] = &["ID", "id", "lease", "Lease", "PrevLease"];

/// One server under test, with what is known about it.
struct Target {
    server: Server,
    norm: Normalizer,
    /// IDs of the leases granted so far, in order (`<lease-1>` first).
    leases: Vec<u64>,
}

/// What is not compared, and why (everything else must match byte for byte):
///
/// - The server's own address `127.a.b.c` becomes `<server-ip>`: each server runs on its own
///   loopback address.
/// - `cluster_id`, `member_id` (JSON headers), `ClusterID`, `MemberID` (`-w fields`): member and
///   cluster IDs are hashes of the peer URLs, hence of the address.
/// - `ts`, `target` in etcdctl's JSON log lines on stderr: the client's clock, and its resolver
///   target, which holds a Go pointer (3.5) or a random UUID (3.4).
/// - Lease IDs the server assigned (etcd derives them from its member ID and clock) become
///   `<lease-N>`, N counting grants on that server: as 16 hex digits (etcdctl's simple output)
///   and as decimal values of the keys in [`LEASE_ID_KEYS`] (`-w json`, `-w fields`). IDs the
///   script chose (`1234`) are compared as they are.
/// - The order of the keys attached to a lease (`lease timetolive --keys`: simple, JSON and
///   fields output) is not compared: etcd lists them from a Go map, in random order.
/// - In steps marked `remaining_ttl` only: the remaining TTL of a live lease, `ttl` (JSON), `TTL`
///   (`-w fields` of timetolive), `remaining(...s)` (simple): it counts down with the wall clock.
///   NOT blanked: the granted TTL (`granted-ttl`, `GrantedTTL`, `TTL(...s)`), and the remaining
///   TTL `-1` of an expired or revoked lease.
fn normalizer(server: &Server) -> Normalizer {
    Normalizer::new()
        .replace(format!("{}:", server.ip()), "<server-ip>:")
        .blank(&[
            "cluster_id",
            "member_id",
            "ClusterID",
            "MemberID",
            "ts",
            "target",
        ])
}

fn remaining_ttl_normalizer() -> Normalizer {
    Normalizer::new()
        .blank(&["ttl", "TTL"])
        .blank_between("remaining(", "s)")
}

impl Target {
    fn start(kind: ServerKind) -> Target {
        let server = Server::start(kind).unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"));
        Target {
            norm: normalizer(&server),
            server,
            leases: Vec::new(),
        }
    }

    /// The step's arguments with `<lease-N>` replaced by this server's N-th lease ID.
    fn args(&self, step: &Step) -> Vec<String> {
        step.args
            .iter()
            .map(|a| {
                let mut a = a.clone();
                for (i, id) in self.leases.iter().enumerate() {
                    a = a.replace(&format!("<lease-{}>", i + 1), &format!("{id:x}"));
                }
                a
            })
            .collect()
    }

    /// Remembers the lease a successful `lease grant` step printed (simple, JSON or fields).
    fn record_grant(&mut self, step: &Step, out: &CtlOutput) {
        if !step.is_lease_grant() || !out.success() {
            return;
        }
        let text = out.stdout_text();
        let id = text.lines().find_map(|line| {
            if let Some(rest) = line.strip_prefix("lease ")
                && let Some((hex, _)) = rest.split_once(" granted with TTL(")
            {
                return u64::from_str_radix(hex, 16).ok();
            }
            if let Some(n) = line.strip_prefix("\"ID\" : ") {
                return n.parse().ok();
            }
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            v.get("ID")?.as_u64()
        });
        match id {
            Some(id) => self.leases.push(id),
            None => panic!(
                "{:?}: cannot find the lease ID in the output of {}: {text:?}",
                self.server.kind(),
                step.display()
            ),
        }
    }

    fn normalize(&self, text: &str, step: &Step) -> String {
        let mut text = lease_placeholders(text, &self.leases);
        if step.is_lease_timetolive() {
            text = sort_attached_keys(&text);
        }
        let text = self.norm.apply(&text);
        if step.remaining_ttl {
            remaining_ttl_normalizer().apply(&text)
        } else {
            text
        }
    }

    fn outcome(&self, step: &Step, result: anyhow::Result<CtlOutput>) -> Outcome {
        match result {
            Ok(out) => Outcome {
                exit: match (out.stopped, out.code) {
                    (true, _) => "still running, stopped by the test".to_owned(),
                    (false, Some(code)) => format!("exit {code}"),
                    (false, None) => "killed by a signal".to_owned(),
                },
                stdout: self.normalize(&out.stdout_text(), step),
                stderr: self.normalize(&out.stderr_text(), step),
            },
            Err(e) => Outcome {
                exit: self.normalize(&format!("failed: {e:#}"), step),
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }

    /// Runs a [`Action::Run`] step.
    fn run(&mut self, ctl: Etcdctl, step: &Step) -> Outcome {
        let result = ctl.run(
            &self.server.endpoint(),
            self.args(step),
            step.stdin.as_deref().map(str::as_bytes),
        );
        if let Ok(out) = &result {
            self.record_grant(step, out);
        }
        self.outcome(step, result)
    }

    /// Starts a step in the background and waits until etcdctl connected (or exited).
    fn spawn(&self, ctl: Etcdctl, step: &Step) -> anyhow::Result<Background> {
        let mut bg = ctl.spawn(
            &self.server.endpoint(),
            self.args(step),
            step.stdin.as_deref().map(str::as_bytes),
        )?;
        bg.wait_connected(self.server.client_addr(), CONNECT_TIMEOUT)?;
        Ok(bg)
    }
}

/// Lease IDs in `leases` become `<lease-N>` (see [`normalizer`]).
fn lease_placeholders(text: &str, leases: &[u64]) -> String {
    let mut text = text.to_owned();
    for (i, id) in leases.iter().enumerate() {
        let placeholder = format!("<lease-{}>", i + 1);
        text = text.replace(&format!("{id:016x}"), &placeholder);
        for key in LEASE_ID_KEYS {
            // JSON (Go's compact encoding) and `-w fields`.
            for sep in [":", " : "] {
                text = replace_number(
                    &text,
                    &format!("\"{key}\"{sep}{id}"),
                    &format!("\"{key}\"{sep}\"{placeholder}\""),
                );
            }
        }
    }
    text
}

/// Sorts the keys attached to a lease in `lease timetolive --keys` output (see [`normalizer`]):
/// `attached keys([...])` (simple), `"keys":[...]` (JSON), consecutive `"Key" : ` lines (fields).
fn sort_attached_keys(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut fields_keys: Vec<String> = Vec::new();
    for line in text.split('\n') {
        if line.starts_with("\"Key\" : ") {
            fields_keys.push(line.to_owned());
            continue;
        }
        fields_keys.sort();
        lines.append(&mut fields_keys);
        let mut line = line.to_owned();
        if let Some((head, rest)) = line.split_once("attached keys([")
            && let Some((keys, tail)) = rest.split_once("])")
        {
            let mut keys: Vec<&str> = keys.split(' ').collect();
            keys.sort_unstable();
            line = format!("{head}attached keys([{}]){tail}", keys.join(" "));
        }
        if line.starts_with('{')
            && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(serde_json::Value::Array(keys)) = v.get_mut("keys")
        {
            keys.sort_by_key(|k| k.to_string());
            line = v.to_string();
        }
        lines.push(line);
    }
    fields_keys.sort();
    lines.append(&mut fields_keys);
    lines.join("\n")
}

/// Replaces `from` (ending in a number) by `to` where the number is not followed by a digit.
fn replace_number(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(from) {
        let end = pos + from.len();
        out.push_str(&rest[..pos]);
        if rest[end..].starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Stops `bg` at `deadline` (or when it exits) and returns its output.
fn stop_at(bg: anyhow::Result<Background>, deadline: Instant) -> anyhow::Result<CtlOutput> {
    bg?.stop_after(deadline.saturating_duration_since(Instant::now()))
}

struct Session {
    ctl: Etcdctl,
    reference: Target,
    concord: Target,
    report: String,
    differing: usize,
    compared: usize,
}

impl Session {
    fn compare(&mut self, label: &str, step: &Step, expected: Outcome, actual: Outcome) {
        self.compared += 1;
        // The reference transcript, shown with --nocapture or on failure.
        println!(
            "=== step {label}: {} -> {}\n{}{}",
            step.display(),
            expected.exit,
            expected.stdout,
            expected.stderr
        );
        if expected == actual {
            return;
        }
        self.differing += 1;
        let mut diff = format!("\n=== step {label}: {}\n", step.display());
        if let Some(stdin) = &step.stdin {
            diff.push_str(&format!("--- stdin:\n{stdin}\n"));
        }
        diff.push_str(&expected.diff(&actual));
        // Also now, so that a run cut short by the test timeout still shows it.
        eprint!("{diff}");
        self.report.push_str(&diff);
    }

    /// Runs one step against both servers; false if concord is gone.
    fn step(&mut self, label: &str, step: &Step) -> bool {
        let ctl = self.ctl;
        if step.only_35 && ctl == Etcdctl::V34 {
            println!(
                "=== step {label}: {} -> skipped with etcdctl 3.4",
                step.display()
            );
            return true;
        }
        match &step.action {
            Action::Run => {
                let expected = self.reference.run(ctl, step);
                let actual = self.concord.run(ctl, step);
                self.compare(label, step, expected, actual);
            }
            Action::RunFor => {
                let start = Instant::now();
                let bg_ref = self.reference.spawn(ctl, step);
                let bg_concord = self.concord.spawn(ctl, step);
                let deadline = (start + WATCH_TIME).max(Instant::now() + AFTER_CONNECT);
                let expected = self.reference.outcome(step, stop_at(bg_ref, deadline));
                let actual = self.concord.outcome(step, stop_at(bg_concord, deadline));
                self.compare(label, step, expected, actual);
            }
            Action::Sleep(d) => std::thread::sleep(*d),
            Action::Live(steps) => {
                let bg_ref = self.reference.spawn(ctl, step);
                let bg_concord = self.concord.spawn(ctl, step);
                std::thread::sleep(LIVE_SETTLE);
                for (i, inner) in steps.iter().enumerate() {
                    if !self.step(&format!("{label}.{}", i + 1), inner) {
                        return false;
                    }
                }
                let deadline = Instant::now() + AFTER_CONNECT;
                let expected = self.reference.outcome(step, stop_at(bg_ref, deadline));
                let actual = self.concord.outcome(step, stop_at(bg_concord, deadline));
                self.compare(&format!("{label} (the watcher)"), step, expected, actual);
            }
        }
        if !self.concord.server.is_running() {
            self.differing += 1;
            self.report.push_str(&format!(
                "\n=== {:?} exited during step {label}; stopping the session here",
                self.concord.server.kind()
            ));
            return false;
        }
        true
    }
}

/// Runs `script` with `ctl` against a reference etcd 3.5.16 and against concord.
fn compare_session(ctl: Etcdctl, script: Vec<Step>) {
    let mut session = Session {
        ctl,
        reference: Target::start(ServerKind::Etcd35),
        concord: Target::start(ServerKind::Concord),
        report: String::new(),
        differing: 0,
        compared: 0,
    };
    for (n, step) in script.iter().enumerate() {
        if !session.step(&n.to_string(), step) {
            break;
        }
    }
    assert!(
        session.differing == 0,
        "etcdctl {ctl:?}: {} of {} compared steps differ between etcd 3.5.16 (expected) and \
         {:?} (actual; set CONCORD_BIN to choose its binary):{}",
        session.differing,
        session.compared,
        session.concord.server.kind(),
        session.report,
    );
}

#[test]
fn etcdctl35_watch_session_matches_etcd35() {
    compare_session(Etcdctl::V35, watch_script());
}

#[test]
fn etcdctl34_watch_session_matches_etcd35() {
    compare_session(Etcdctl::V34, watch_script());
}

#[test]
fn etcdctl35_lease_session_matches_etcd35() {
    compare_session(Etcdctl::V35, lease_script());
}

#[test]
fn etcdctl34_lease_session_matches_etcd35() {
    compare_session(Etcdctl::V34, lease_script());
}
