//! Auth compatibility: etcdctl 3.5 `user`, `role` and `auth` sessions, and operations as users
//! with and without permission, run step by step against etcd 3.5.16 (the reference) and
//! against concord; every step's exit code, stdout and stderr must match after normalisation.
//! Both servers run with `--bcrypt-cost=4` so that the many authentications stay cheap.
//!
//! Run against etcd itself (validates the harness): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::time::Duration;

use concord_tests::normalize::Outcome;
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
        c(&[
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "lk/",
            "--prefix",
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
        // Lock goes through KV with the caller's credentials
        as_user(ALICE, &["lock", "lk", "echo", "held"]),
        as_user(ALICE, &["lock", "other", "echo", "held"]),
        as_user(ROOT, &["lock", "other", "echo", "held"]),
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

fn outcome(server: &Server, norm: &Normalizer, step: &Step) -> Outcome {
    outcome_with(Etcdctl::V35, server, norm, step)
}

fn outcome_with(ctl: Etcdctl, server: &Server, norm: &Normalizer, step: &Step) -> Outcome {
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
    out.push_str(&expected.diff(actual));
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
    auth_session(Etcdctl::V35);
}

#[test]
fn etcdctl34_auth_session_matches_etcd35() {
    auth_session(Etcdctl::V34);
}

fn auth_session(ctl: Etcdctl) {
    let reference = start(ServerKind::Etcd35);
    let mut concord = start(ServerKind::Concord);
    let (ref_norm, concord_norm) = (normalizer(&reference), normalizer(&concord));
    let steps = script();
    let mut report = String::new();
    let mut differing = 0;
    for (n, step) in steps.iter().enumerate() {
        let expected = outcome_with(ctl, &reference, &ref_norm, step);
        let actual = outcome_with(ctl, &concord, &concord_norm, step);
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

// ---------------------------------------------------------------------------------------------
// The same over gRPC, where etcdctl cannot go: exact codes and messages of every refusal.

mod grpc {
    use std::fmt::Debug;

    use concord_store::proto::authpb::{Permission, UserAddOptions, permission::Type};
    use concord_store::proto::etcdserverpb::{
        AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest,
        AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthStatusRequest, AuthUserAddRequest,
        AuthUserDeleteRequest, AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserListRequest,
        AuthenticateRequest, CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest,
        HashRequest, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
        RangeRequest, RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest,
        alarm_request::AlarmAction, auth_client::AuthClient, compare, kv_client::KvClient,
        lease_client::LeaseClient, maintenance_client::MaintenanceClient, request_op,
        watch_client::WatchClient, watch_request::RequestUnion,
    };
    use concord_tests::ledger::channel;
    use tonic::transport::Channel;

    /// A client of one server that records what every call answered.
    pub struct Session {
        ch: Channel,
        pub log: Vec<String>,
    }

    /// A request with the `token` metadata (none for `None`).
    pub fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("token", t.parse().expect("ascii token"));
        }
        r
    }

    fn err(s: &tonic::Status) -> String {
        format!("error {:?}: {}", s.code(), s.message())
    }

    impl Session {
        pub fn new(endpoint: &str) -> Session {
            Session {
                ch: channel(endpoint).expect("a channel"),
                log: Vec::new(),
            }
        }

        pub fn auth(&self) -> AuthClient<Channel> {
            AuthClient::new(self.ch.clone())
        }
        pub fn kv(&self) -> KvClient<Channel> {
            KvClient::new(self.ch.clone())
        }
        pub fn lease(&self) -> LeaseClient<Channel> {
            LeaseClient::new(self.ch.clone())
        }
        pub fn maintenance(&self) -> MaintenanceClient<Channel> {
            MaintenanceClient::new(self.ch.clone())
        }

        /// Records `what` with the answer: `show(response)` or the error's code and message.
        pub fn note<T: Debug>(
            &mut self,
            what: &str,
            r: Result<tonic::Response<T>, tonic::Status>,
            show: impl FnOnce(&T) -> String,
        ) -> Option<T> {
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    self.log.push(format!("{what}: ok {}", show(&r)));
                    Some(r)
                }
                Err(s) => {
                    self.log.push(format!("{what}: {}", err(&s)));
                    None
                }
            }
        }

        /// A token for `name`, or the empty string (and the error recorded).
        pub async fn token(&mut self, name: &str, password: &str) -> String {
            let r = self
                .auth()
                .authenticate(AuthenticateRequest {
                    name: name.into(),
                    password: password.into(),
                })
                .await;
            self.note(&format!("authenticate {name}"), r, |_| String::new())
                .map(|r| r.token)
                .unwrap_or_default()
        }

        /// The first answer of a watch on `key..end` with `token`.
        pub async fn watch(&mut self, what: &str, key: &str, end: &str, token: Option<&str>) {
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..Default::default()
                })),
            };
            let stream = futures::stream::iter(vec![create]).chain(futures::stream::pending());
            let r = WatchClient::new(self.ch.clone())
                .watch(req(stream, token))
                .await;
            let line = match r {
                Ok(resp) => {
                    let mut inbound = resp.into_inner();
                    match inbound.message().await {
                        Ok(Some(w)) => format!(
                            "ok id {} created {} canceled {} reason {:?}",
                            w.watch_id, w.created, w.canceled, w.cancel_reason
                        ),
                        Ok(None) => "stream ended".into(),
                        Err(s) => err(&s),
                    }
                }
                Err(s) => err(&s),
            };
            self.log.push(format!("{what}: {line}"));
        }
    }

    use futures::StreamExt;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn get(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn value_is(key: &str, v: &str) -> Compare {
        Compare {
            key: key.into(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value(v.into())),
            ..Default::default()
        }
    }

    fn perm(t: Type, key: &str, end: &str) -> Option<Permission> {
        Some(Permission {
            perm_type: t as i32,
            key: key.into(),
            range_end: end.into(),
        })
    }

    fn keys(kvs: &[concord_store::proto::mvccpb::KeyValue]) -> String {
        let ks: Vec<String> = kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        ks.join(",")
    }

    /// The session: root checks of AuthEnable, management errors, then every KV, Lease,
    /// Watch and Maintenance path as root, as a user with some permissions, without a token
    /// and with a bad one.
    pub async fn session(endpoint: &str) -> Vec<String> {
        let mut s = Session::new(endpoint);
        let a = s.auth();
        let r = a.clone().auth_enable(AuthEnableRequest {}).await;
        s.note("enable without root", r, |_| String::new());
        let add = |name: &str, pw: &str| AuthUserAddRequest {
            name: name.into(),
            password: pw.into(),
            ..Default::default()
        };
        let r = a.clone().user_add(add("", "x")).await;
        s.note("add empty user", r, |_| String::new());
        let r = a.clone().user_add(add("root", "rootpw")).await;
        s.note("add root", r, |_| String::new());
        let r = a.clone().auth_enable(AuthEnableRequest {}).await;
        s.note("enable without root role", r, |_| String::new());
        let r = a
            .clone()
            .role_add(AuthRoleAddRequest { name: "".into() })
            .await;
        s.note("add empty role", r, |_| String::new());
        let grant = |user: &str, role: &str| AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        let r = a.clone().user_grant_role(grant("root", "root")).await;
        s.note("grant root to root", r, |_| String::new());
        let r = a.clone().user_add(add("alice", "alicepw")).await;
        s.note("add alice", r, |_| String::new());
        let r = a
            .clone()
            .user_add(AuthUserAddRequest {
                name: "nopw".into(),
                options: Some(UserAddOptions { no_password: true }),
                ..Default::default()
            })
            .await;
        s.note("add nopw", r, |_| String::new());
        let r = a
            .clone()
            .role_add(AuthRoleAddRequest { name: "r".into() })
            .await;
        s.note("add role r", r, |_| String::new());
        let gp = |name: &str, perm: Option<Permission>| AuthRoleGrantPermissionRequest {
            name: name.into(),
            perm,
        };
        let r = a
            .clone()
            .role_grant_permission(gp("r", perm(Type::Readwrite, "a", "c")))
            .await;
        s.note("grant r readwrite [a,c)", r, |_| String::new());
        let r = a
            .clone()
            .role_grant_permission(gp("r", perm(Type::Read, "p/", "p0")))
            .await;
        s.note("grant r read p/", r, |_| String::new());
        let r = a.clone().role_grant_permission(gp("r", None)).await;
        s.note("grant nothing", r, |_| String::new());
        let r = a
            .clone()
            .role_grant_permission(gp("r", perm(Type::Read, "", "")))
            .await;
        s.note("grant empty key", r, |_| String::new());
        let r = a.clone().user_grant_role(grant("alice", "r")).await;
        s.note("grant r to alice", r, |_| String::new());
        let r = a.clone().user_grant_role(grant("nopw", "r")).await;
        s.note("grant r to nopw", r, |_| String::new());
        let r = a.clone().auth_enable(AuthEnableRequest {}).await;
        s.note("enable", r, |_| String::new());

        // --- tokens
        let r = a
            .clone()
            .authenticate(AuthenticateRequest {
                name: "root".into(),
                password: "nope".into(),
            })
            .await;
        s.note("authenticate root wrong", r, |_| String::new());
        let r = a
            .clone()
            .authenticate(AuthenticateRequest {
                name: "nobody".into(),
                password: "x".into(),
            })
            .await;
        s.note("authenticate nobody", r, |_| String::new());
        let r = a
            .clone()
            .authenticate(AuthenticateRequest {
                name: "nopw".into(),
                password: "".into(),
            })
            .await;
        s.note("authenticate nopw", r, |_| String::new());
        let root = s.token("root", "rootpw").await;
        let alice = s.token("alice", "alicepw").await;
        let (root, alice) = (Some(root.as_str()), Some(alice.as_str()));

        let kv = s.kv();
        let p = |k: &str| PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let r = kv.clone().put(req(p("b"), None)).await;
        s.note("put without token", r, |_| String::new());
        let r = kv.clone().put(req(p("b"), Some("bogus"))).await;
        s.note("put with a bogus token", r, |_| String::new());
        let r = kv
            .clone()
            .put(req(p("b"), Some("abcdefghijklmnop.1")))
            .await;
        s.note("put with an unknown simple token", r, |_| String::new());
        let r = kv.clone().put(req(p("z"), root)).await;
        s.note("root put z", r, |r| {
            format!("rev {:?}", r.header.as_ref().map(|h| h.revision))
        });
        let r = kv.clone().put(req(p("b"), alice)).await;
        s.note("alice put b", r, |_| String::new());
        let r = kv.clone().put(req(p("z"), alice)).await;
        s.note("alice put z", r, |_| String::new());
        let r = kv
            .clone()
            .put(req(
                PutRequest {
                    prev_kv: true,
                    ..p("p/x")
                },
                root,
            ))
            .await;
        s.note("root put p/x", r, |_| String::new());
        let r = kv.clone().put(req(p("p/x"), alice)).await;
        s.note("alice put p/x (read only)", r, |_| String::new());
        let range = |k: &str, e: &str| RangeRequest {
            key: k.into(),
            range_end: e.into(),
            ..Default::default()
        };
        let r = kv.clone().range(req(range("a", "c"), alice)).await;
        s.note("alice get [a,c)", r, |r| keys(&r.kvs));
        let r = kv.clone().range(req(range("a", "d"), alice)).await;
        s.note("alice get [a,d)", r, |r| keys(&r.kvs));
        let r = kv.clone().range(req(range("p/", "p0"), alice)).await;
        s.note("alice get p/", r, |r| keys(&r.kvs));
        let r = kv
            .clone()
            .range(req(
                RangeRequest {
                    serializable: true,
                    ..range("z", "")
                },
                alice,
            ))
            .await;
        s.note("alice serializable get z", r, |r| keys(&r.kvs));
        let r = kv.clone().range(req(range("z", ""), None)).await;
        s.note("get z without token", r, |r| keys(&r.kvs));
        let r = kv.clone().range(req(range("\0", "\0"), root)).await;
        s.note("root get all", r, |r| keys(&r.kvs));
        let del = |k: &str, e: &str, prev: bool| DeleteRangeRequest {
            key: k.into(),
            range_end: e.into(),
            prev_kv: prev,
        };
        let r = kv
            .clone()
            .delete_range(req(del("p/", "p0", false), alice))
            .await;
        s.note("alice del p/", r, |_| String::new());
        let r = kv
            .clone()
            .delete_range(req(del("a", "c", true), alice))
            .await;
        s.note("alice del [a,c) prev_kv", r, |r| {
            format!("deleted {}", r.deleted)
        });
        let txn = |compare: Vec<Compare>, success: Vec<RequestOp>| TxnRequest {
            compare,
            success,
            failure: vec![],
        };
        let r = kv
            .clone()
            .txn(req(txn(vec![value_is("z", "v")], vec![put("b")]), alice))
            .await;
        s.note("alice txn comparing z", r, |_| String::new());
        let r = kv
            .clone()
            .txn(req(txn(vec![value_is("b", "v")], vec![get("z")]), alice))
            .await;
        s.note("alice txn getting z", r, |_| String::new());
        let r = kv
            .clone()
            .txn(req(txn(vec![value_is("b", "x")], vec![put("b")]), alice))
            .await;
        s.note("alice txn on b", r, |r| {
            format!("succeeded {}", r.succeeded)
        });
        let r = kv.clone().txn(req(txn(vec![], vec![get("z")]), None)).await;
        s.note("read-only txn without token", r, |_| String::new());
        let r = kv
            .clone()
            .compact(req(
                CompactionRequest {
                    revision: 2,
                    physical: false,
                },
                alice,
            ))
            .await;
        s.note("alice compact", r, |_| String::new());

        // --- leases
        let l = s.lease();
        let r = l
            .clone()
            .lease_grant(req(LeaseGrantRequest { ttl: 600, id: 77 }, alice))
            .await;
        s.note("alice lease grant", r, |r| format!("id {}", r.id));
        let r = kv
            .clone()
            .put(req(
                PutRequest {
                    lease: 77,
                    ..p("b")
                },
                alice,
            ))
            .await;
        s.note("alice put b with lease", r, |_| String::new());
        let ttl = |keys: bool| LeaseTimeToLiveRequest { id: 77, keys };
        let r = l.clone().lease_time_to_live(req(ttl(true), alice)).await;
        s.note("alice ttl with keys", r, |r| {
            format!("{} keys", r.keys.len())
        });
        let r = kv
            .clone()
            .put(req(
                PutRequest {
                    lease: 77,
                    ..p("z")
                },
                root,
            ))
            .await;
        s.note("root put z with the lease", r, |_| String::new());
        let r = l.clone().lease_time_to_live(req(ttl(true), alice)).await;
        s.note("alice ttl with keys incl. z", r, |r| {
            format!("{} keys", r.keys.len())
        });
        let r = l.clone().lease_time_to_live(req(ttl(false), alice)).await;
        s.note("alice ttl without keys", r, |r| {
            format!("granted {}", r.granted_ttl)
        });
        let r = l.clone().lease_time_to_live(req(ttl(true), None)).await;
        s.note("ttl with keys without token", r, |_| String::new());
        let r = kv
            .clone()
            .put(req(
                PutRequest {
                    lease: 77,
                    ..p("b")
                },
                alice,
            ))
            .await;
        s.note("alice put b onto a lease holding z", r, |_| String::new());
        let r = l
            .clone()
            .lease_revoke(req(LeaseRevokeRequest { id: 77 }, alice))
            .await;
        s.note("alice revoke", r, |_| String::new());
        let r = l
            .clone()
            .lease_revoke(req(LeaseRevokeRequest { id: 77 }, root))
            .await;
        s.note("root revoke", r, |_| String::new());

        // --- watch
        s.watch("alice watch b", "b", "", alice).await;
        s.watch("alice watch z", "z", "", alice).await;
        s.watch("alice watch [a,d)", "a", "d", alice).await;
        s.watch("watch b without token", "b", "", None).await;
        s.watch("watch b with a bogus token", "b", "", Some("bogus"))
            .await;

        // --- maintenance
        let m = s.maintenance();
        let r = m.clone().status(req(StatusRequest {}, None)).await;
        s.note("status without token", r, |_| String::new());
        let r = m.clone().hash(req(HashRequest {}, alice)).await;
        s.note("alice hash", r, |_| String::new());
        let r = m.clone().hash(req(HashRequest {}, None)).await;
        s.note("hash without token", r, |_| String::new());
        let r = m
            .clone()
            .hash_kv(req(HashKvRequest { revision: 0 }, Some("bogus")))
            .await;
        s.note("hashkv with a bogus token", r, |_| String::new());
        let r = m
            .clone()
            .hash_kv(req(HashKvRequest { revision: 0 }, root))
            .await;
        s.note("root hashkv", r, |_| String::new());
        let r = m
            .clone()
            .alarm(req(
                AlarmRequest {
                    action: AlarmAction::Get as i32,
                    ..Default::default()
                },
                alice,
            ))
            .await;
        s.note("alice alarm list", r, |r| {
            format!("{} alarms", r.alarms.len())
        });

        // --- management as a user, and as root
        let r = a
            .clone()
            .user_get(req(
                AuthUserGetRequest {
                    name: "alice".into(),
                },
                alice,
            ))
            .await;
        s.note("alice gets alice", r, |r| format!("{:?}", r.roles));
        let r = a
            .clone()
            .user_get(req(
                AuthUserGetRequest {
                    name: "root".into(),
                },
                alice,
            ))
            .await;
        s.note("alice gets root", r, |r| format!("{:?}", r.roles));
        let r = a
            .clone()
            .role_get(req(AuthRoleGetRequest { role: "r".into() }, alice))
            .await;
        s.note("alice gets role r", r, |r| {
            format!("{} perms", r.perm.len())
        });
        let r = a
            .clone()
            .role_get(req(
                AuthRoleGetRequest {
                    role: "root".into(),
                },
                root,
            ))
            .await;
        s.note("root gets role root", r, |r| format!("{:?}", r.perm));
        let r = a
            .clone()
            .user_list(req(AuthUserListRequest {}, alice))
            .await;
        s.note("alice lists users", r, |r| format!("{:?}", r.users));
        let r = a.clone().user_list(req(AuthUserListRequest {}, root)).await;
        s.note("root lists users", r, |r| format!("{:?}", r.users));
        let r = a
            .clone()
            .auth_status(req(AuthStatusRequest {}, alice))
            .await;
        s.note("alice auth status", r, |_| String::new());
        let r = a.clone().auth_status(req(AuthStatusRequest {}, root)).await;
        s.note("root auth status", r, |r| {
            format!("enabled {} revision {}", r.enabled, r.auth_revision)
        });
        let r = a.clone().user_add(req(add("eve", "x"), alice)).await;
        s.note("alice adds a user", r, |_| String::new());
        let r = a.clone().user_add(req(add("eve", "x"), None)).await;
        s.note("add a user without token", r, |_| String::new());
        let r = a
            .clone()
            .user_add(req(add("eve", "x"), Some("bogus")))
            .await;
        s.note("add a user with a bogus token", r, |_| String::new());
        let r = a
            .clone()
            .user_delete(req(
                AuthUserDeleteRequest {
                    name: "root".into(),
                },
                root,
            ))
            .await;
        s.note("root deletes root", r, |_| String::new());
        let r = a
            .clone()
            .auth_disable(req(AuthDisableRequest {}, alice))
            .await;
        s.note("alice disables auth", r, |_| String::new());
        // A password change drops the user's tokens; an auth change makes old ones stale.
        let r = a
            .clone()
            .user_change_password(req(
                concord_store::proto::etcdserverpb::AuthUserChangePasswordRequest {
                    name: "alice".into(),
                    password: "newpw".into(),
                    ..Default::default()
                },
                root,
            ))
            .await;
        s.note("root changes alice's password", r, |_| String::new());
        let r = kv.clone().range(req(range("b", ""), alice)).await;
        s.note("alice get b with her old token", r, |r| keys(&r.kvs));
        // A pre-hashed password (base64 of a bcrypt hash: OpenBSD's test vector for "U*U").
        let r = a
            .clone()
            .user_change_password(req(
                concord_store::proto::etcdserverpb::AuthUserChangePasswordRequest {
                    name: "alice".into(),
                    hashed_password:
                        "JDJhJDA1JENDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQy5FNVlQTzlrbXl1Ukd5aDBYb3VRWWI0WU1KS3Z5T2VX"
                            .into(),
                    ..Default::default()
                },
                root,
            ))
            .await;
        s.note("root sets alice's password hash", r, |_| String::new());
        let _ = s.token("alice", "newpw").await;
        let _ = s.token("alice", "U*U").await;
        let r = a
            .clone()
            .auth_disable(req(AuthDisableRequest {}, root))
            .await;
        s.note("root disables auth", r, |_| String::new());
        let r = a.clone().auth_status(req(AuthStatusRequest {}, None)).await;
        s.note("auth status", r, |r| {
            format!("enabled {} revision {}", r.enabled, r.auth_revision)
        });
        let r = a
            .clone()
            .authenticate(AuthenticateRequest {
                name: "root".into(),
                password: "rootpw".into(),
            })
            .await;
        s.note("authenticate with auth disabled", r, |_| String::new());
        s.log
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_auth_session_matches_etcd35() {
    let reference = start(ServerKind::Etcd35);
    let concord = start(ServerKind::Concord);
    let expected = grpc::session(&reference.endpoint()).await;
    let actual = grpc::session(&concord.endpoint()).await;
    println!("{}", expected.join("\n"));
    assert_eq!(
        actual.join("\n"),
        expected.join("\n"),
        "concord (left) differs from etcd 3.5.16 (right):\n{}",
        line_diff(&expected.join("\n"), &actual.join("\n"))
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens: JWT (RS256, ES256) and simple-token expiry.

/// Makes `root` with the root role and enables auth, through `s`.
async fn enable_with_root(s: &mut grpc::Session) {
    use concord_store::proto::etcdserverpb::{
        AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    };
    let a = s.auth();
    let r = a
        .clone()
        .user_add(AuthUserAddRequest {
            name: "root".into(),
            password: "rootpw".into(),
            ..Default::default()
        })
        .await;
    s.note("add root", r, |_| String::new());
    let r = a
        .clone()
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await;
    s.note("grant root", r, |_| String::new());
    let r = a.clone().auth_enable(AuthEnableRequest {}).await;
    s.note("enable", r, |_| String::new());
}

/// A put of `key` with `token`, recorded as `what`.
async fn put_with(s: &mut grpc::Session, what: &str, key: &str, token: &str) {
    use concord_store::proto::etcdserverpb::PutRequest;
    let put = PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let r = s.kv().put(grpc::req(put, Some(token))).await;
    s.note(what, r, |_| String::new());
}

/// `token` with one character of its part `part` (0 header, 1 claims, 2 signature) changed.
fn tamper(token: &str, part: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let p = &mut parts[part];
    let mid = p.len() / 2;
    let c = p.as_bytes()[mid];
    let swapped = if c == b'A' { 'B' } else { 'A' };
    p.replace_range(mid..=mid, &swapped.to_string());
    parts.join(".")
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running openssl");
    assert!(st.success(), "openssl {args:?} failed");
}

/// etcd and concord started with the same `--auth-token jwt,...`: each issues a JWT that
/// works, a JWT with a changed header, claims or signature is `invalid auth token`, and each
/// accepts the other's token (same claims, same signature scheme).
async fn jwt_matches_etcd(method: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = dir.path();
    match method {
        "RS256" => {
            openssl(&["genrsa", "-out", "priv.pem", "2048"], d);
            openssl(&["rsa", "-in", "priv.pem", "-pubout", "-out", "pub.pem"], d);
        }
        _ => {
            // OpenSSL's SEC1 "EC PRIVATE KEY", as etcd's docs generate it.
            openssl(
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "priv.pem",
                ],
                d,
            );
            openssl(&["ec", "-in", "priv.pem", "-pubout", "-out", "pub.pem"], d);
        }
    }
    let flag = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method={method},ttl=5m",
        d.join("pub.pem").display(),
        d.join("priv.pem").display()
    );
    let mut servers = Vec::new();
    for kind in [ServerKind::Etcd35, ServerKind::Concord] {
        let server = Server::builder(kind)
            .arg("--bcrypt-cost=4")
            .arg(&flag)
            .start()
            .unwrap_or_else(|e| panic!("starting {kind:?} with {flag}: {e:#}"));
        servers.push(server);
    }
    let mut logs = Vec::new();
    let mut tokens = Vec::new();
    for server in &servers {
        let mut s = grpc::Session::new(&server.endpoint());
        enable_with_root(&mut s).await;
        let token = s.token("root", "rootpw").await;
        s.log
            .push(format!("token has {} parts", token.split('.').count()));
        put_with(&mut s, "put with the token", "k", &token).await;
        for (part, name) in ["header", "claims", "signature"].iter().enumerate() {
            put_with(
                &mut s,
                &format!("tampered {name}"),
                "k",
                &tamper(&token, part),
            )
            .await;
        }
        logs.push(s.log);
        tokens.push(token);
    }
    // Each accepts the other's token.
    for (server, token) in servers.iter().zip(tokens.iter().rev()) {
        let mut s = grpc::Session::new(&server.endpoint());
        put_with(&mut s, "put with the other server's token", "k", token).await;
        logs.push(s.log);
    }
    let (etcd, concord) = (
        [logs[0].clone(), logs[2].clone()].concat().join("\n"),
        [logs[1].clone(), logs[3].clone()].concat().join("\n"),
    );
    println!("{etcd}");
    assert!(
        etcd.contains("token has 3 parts") && etcd.contains("other server's token: ok"),
        "etcd's own session went wrong:\n{etcd}"
    );
    assert_eq!(
        concord,
        etcd,
        "{method}: concord differs from etcd 3.5.16:\n{}",
        line_diff(&etcd, &concord)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_rs256_tokens_match_etcd35() {
    jwt_matches_etcd("RS256").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_es256_tokens_match_etcd35() {
    jwt_matches_etcd("ES256").await;
}

/// With `--auth-token-ttl=2`, a simple token unused for longer than that is `invalid auth
/// token` on both servers, while one in use stays valid.
#[tokio::test(flavor = "multi_thread")]
async fn simple_token_expires_after_ttl_like_etcd35() {
    let mut logs = Vec::new();
    let mut servers = Vec::new();
    for kind in [ServerKind::Etcd35, ServerKind::Concord] {
        let server = Server::builder(kind)
            .arg("--bcrypt-cost=4")
            .arg("--auth-token-ttl=2")
            .start()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"));
        let mut s = grpc::Session::new(&server.endpoint());
        enable_with_root(&mut s).await;
        let idle = s.token("root", "rootpw").await;
        let busy = s.token("root", "rootpw").await;
        put_with(&mut s, "fresh token", "k", &idle).await;
        servers.push((server, s, idle, busy));
    }
    // Keep one token busy on each server for 4 s (two TTLs); leave the other idle.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (_, s, _, busy) in servers.iter_mut() {
            let busy = busy.clone();
            put_with(s, "busy token", "k", &busy).await;
        }
    }
    for (_, s, idle, _) in servers.iter_mut() {
        let idle = idle.clone();
        put_with(s, "idle token after 4 s", "k", &idle).await;
        logs.push(s.log.join("\n"));
    }
    println!("{}", logs[0]);
    assert!(
        logs[0].ends_with(
            "idle token after 4 s: error Unauthenticated: etcdserver: invalid auth token"
        ),
        "etcd's own session went wrong:\n{}",
        logs[0]
    );
    assert_eq!(
        logs[1],
        logs[0],
        "concord differs from etcd 3.5.16:\n{}",
        line_diff(&logs[0], &logs[1])
    );
}

// ---------------------------------------------------------------------------------------------
// Auth state is replicated through raft: users, roles, tokens and revocations made through one
// member hold on the others.

async fn cluster_session(endpoints: &[String]) -> Vec<String> {
    use concord_store::proto::authpb::{Permission, permission::Type};
    use concord_store::proto::etcdserverpb::{
        AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
        AuthUserAddRequest, AuthUserGrantRoleRequest, RangeRequest,
    };
    let mut s0 = grpc::Session::new(&endpoints[0]);
    let mut s1 = grpc::Session::new(&endpoints[1]);
    let mut s2 = grpc::Session::new(&endpoints[2]);
    let a = s0.auth();
    let r = a
        .clone()
        .user_add(AuthUserAddRequest {
            name: "alice".into(),
            password: "alicepw".into(),
            ..Default::default()
        })
        .await;
    s0.note("m0: add alice", r, |_| String::new());
    let r = a
        .clone()
        .role_add(AuthRoleAddRequest { name: "r".into() })
        .await;
    s0.note("m0: add role r", r, |_| String::new());
    let r = a
        .clone()
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission {
                perm_type: Type::Readwrite as i32,
                key: b"a".to_vec(),
                range_end: vec![],
            }),
        })
        .await;
    s0.note("m0: grant r readwrite a", r, |_| String::new());
    let r = a
        .clone()
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "r".into(),
        })
        .await;
    s0.note("m0: grant r to alice", r, |_| String::new());
    enable_with_root(&mut s0).await;

    // Passwords and permissions set through m0, checked by m1 and m2.
    let _ = s1.token("alice", "wrong").await;
    let on_m1 = s1.token("alice", "alicepw").await;
    put_with(&mut s1, "m1: alice put a", "a", &on_m1).await;
    put_with(&mut s1, "m1: alice put z", "z", &on_m1).await;
    let root_on_m2 = s2.token("root", "rootpw").await;
    // A token issued by m1, used on m2 and m0.
    put_with(&mut s2, "m2: alice put a with m1's token", "a", &on_m1).await;
    put_with(&mut s0, "m0: alice put a with m1's token", "a", &on_m1).await;
    // Revoked through m2: refused at once on m0 and m1 (write and linearizable read).
    let r = s2
        .auth()
        .role_revoke_permission(grpc::req(
            AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"a".to_vec(),
                range_end: vec![],
            },
            Some(&root_on_m2),
        ))
        .await;
    s2.note("m2: revoke a from r", r, |_| String::new());
    let fresh = s0.token("alice", "alicepw").await;
    put_with(&mut s0, "m0: alice put a after the revoke", "a", &fresh).await;
    let get = RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    };
    let r = s1.kv().range(grpc::req(get, Some(&fresh))).await;
    s1.note("m1: alice get a after the revoke", r, |r| {
        format!("{} kvs", r.kvs.len())
    });
    [s0.log, s1.log, s2.log].concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_state_is_replicated_across_cluster_members_like_etcd35() {
    let mut logs = Vec::new();
    for kind in [ServerKind::Etcd35, ServerKind::Concord] {
        let cluster = concord_tests::Cluster::start_with(kind, 3, &["--bcrypt-cost=4"])
            .unwrap_or_else(|e| panic!("starting a 3-member {kind:?} cluster: {e:#}"));
        logs.push(cluster_session(&cluster.endpoints()).await.join("\n"));
    }
    println!("{}", logs[0]);
    assert!(
        logs[0].contains("m0: alice put a after the revoke: error PermissionDenied"),
        "etcd's own session went wrong:\n{}",
        logs[0]
    );
    assert_eq!(
        logs[1],
        logs[0],
        "concord differs from etcd 3.5.16:\n{}",
        line_diff(&logs[0], &logs[1])
    );
}

// ---------------------------------------------------------------------------------------------
// The JSON gateway's /v3/auth routes and the `Authorization` header, with curl, as in etcd's
// gateway docs.

/// `curl -X POST -d <body> [-H Authorization: <token>] <endpoint><path>`: HTTP status and the
/// JSON answer with the ids, and any token, blanked.
fn curl_json(endpoint: &str, path: &str, body: &str, token: Option<&str>) -> (String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
        .args(["-d", body])
        .arg(format!("{endpoint}{path}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, code) = text.rsplit_once('\n').expect("a status line");
    let mut v: serde_json::Value = serde_json::from_str(answer).unwrap_or(answer.into());
    let token = v["token"].as_str().unwrap_or_default().to_owned();
    if let Some(h) = v.get_mut("header") {
        h["cluster_id"] = "<blanked>".into();
        h["member_id"] = "<blanked>".into();
    }
    if !token.is_empty() {
        v["token"] = "<token>".into();
    }
    (
        format!("$ curl {path} -d '{body}'\nHTTP {code}\n{v}\n"),
        token,
    )
}

fn gateway_session(endpoint: &str) -> String {
    let mut out = String::new();
    let mut step = |path: &str, body: &str, token: Option<&str>| {
        let (shown, token) = curl_json(endpoint, path, body, token);
        out.push_str(&shown);
        token
    };
    step(
        "/v3/auth/user/add",
        r#"{"name": "root", "password": "pass"}"#,
        None,
    );
    step("/v3/auth/role/add", r#"{"name": "root"}"#, None);
    step(
        "/v3/auth/user/grant",
        r#"{"user": "root", "role": "root"}"#,
        None,
    );
    step(
        "/v3/auth/user/add",
        r#"{"name": "u", "password": "upw"}"#,
        None,
    );
    step("/v3/auth/role/add", r#"{"name": "r"}"#, None);
    step(
        "/v3/auth/role/grant",
        r#"{"name": "r", "perm": {"permType": "READWRITE", "key": "Zm9v"}}"#,
        None,
    );
    step("/v3/auth/user/grant", r#"{"user": "u", "role": "r"}"#, None);
    step("/v3/auth/role/get", r#"{"role": "r"}"#, None);
    step("/v3/auth/user/list", "{}", None);
    step("/v3/auth/enable", "{}", None);
    step("/v3/auth/status", "{}", None);
    step("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#, None);
    step(
        "/v3/auth/authenticate",
        r#"{"name": "root", "password": "wrong"}"#,
        None,
    );
    let root = step(
        "/v3/auth/authenticate",
        r#"{"name": "root", "password": "pass"}"#,
        None,
    );
    let u = step(
        "/v3/auth/authenticate",
        r#"{"name": "u", "password": "upw"}"#,
        None,
    );
    step("/v3/auth/status", "{}", Some(&root));
    step(
        "/v3/kv/put",
        r#"{"key": "Zm9v", "value": "YmFy"}"#,
        Some(&root),
    );
    step(
        "/v3/kv/put",
        r#"{"key": "Zm9w", "value": "YmFy"}"#,
        Some(&u),
    );
    step("/v3/kv/range", r#"{"key": "Zm9v"}"#, Some(&u));
    step("/v3/kv/range", r#"{"key": "Zm9v"}"#, Some("bogus"));
    step("/v3/auth/user/get", r#"{"name": "u"}"#, Some(&u));
    step("/v3/auth/user/list", "{}", Some(&u));
    step("/v3/maintenance/hash", "{}", Some(&u));
    step(
        "/v3/auth/role/revoke",
        r#"{"role": "r", "key": "Zm9v"}"#,
        Some(&root),
    );
    step("/v3/kv/range", r#"{"key": "Zm9v"}"#, Some(&u));
    step("/v3/auth/user/delete", r#"{"name": "u"}"#, Some(&root));
    step("/v3/auth/role/delete", r#"{"role": "r"}"#, Some(&root));
    step(
        "/v3/auth/user/changepw",
        r#"{"name": "root", "password": "new"}"#,
        Some(&root),
    );
    let root = step(
        "/v3/auth/authenticate",
        r#"{"name": "root", "password": "new"}"#,
        None,
    );
    step("/v3/auth/disable", "{}", Some(&root));
    step("/v3/auth/status", "{}", None);
    out
}

#[test]
fn gateway_auth_routes_match_etcd35() {
    let reference = start(ServerKind::Etcd35);
    let concord = start(ServerKind::Concord);
    let expected = gateway_session(&reference.endpoint());
    let actual = gateway_session(&concord.endpoint());
    println!("{expected}");
    assert!(
        expected.contains("\"token\":\"<token>\""),
        "etcd's own session went wrong:\n{expected}"
    );
    assert_eq!(
        actual,
        expected,
        "concord differs from etcd 3.5.16:\n{}",
        line_diff(&expected, &actual)
    );
}

// ---------------------------------------------------------------------------------------------
// `--client-cert-auth`: with auth enabled, a request without a token is made by the user named
// by its client certificate's common name.

#[test]
fn etcdctl_auth_by_client_cert_common_name_matches_etcd35() {
    use concord_tests::tls::TestPki;
    let pki = TestPki::new().expect("a test PKI");
    let as_cn = |cn: &str, args: &[&str]| -> Step {
        let tls = pki.client(cn).expect("a client certificate");
        let mut s = c(args);
        let mut all = tls.etcdctl_args();
        all.append(&mut s.args);
        s.args = all;
        s
    };
    let steps = vec![
        as_cn(
            "root",
            &["user", "add", "root", "--new-user-password=rootpw"],
        ),
        as_cn(
            "root",
            &["user", "add", "alice", "--new-user-password=alicepw"],
        ),
        as_cn("root", &["role", "add", "r"]),
        as_cn("root", &["role", "grant-permission", "r", "readwrite", "a"]),
        as_cn("root", &["user", "grant-role", "alice", "r"]),
        as_cn("root", &["auth", "enable"]),
        as_cn("root", &["put", "a", "1"]),
        as_cn("root", &["put", "z", "1"]),
        as_cn("root", &["user", "list"]),
        as_cn("alice", &["get", "a"]),
        as_cn("alice", &["put", "a", "2"]),
        as_cn("alice", &["get", "z"]),
        as_cn("alice", &["put", "z", "2"]),
        as_cn("alice", &["user", "list"]),
        as_cn("alice", &["defrag"]),
        as_cn("bob", &["get", "a"]),
        // A token wins over the certificate.
        {
            let mut s = as_cn("root", &["put", "z", "3"]);
            s.args.insert(0, "--user=alice:alicepw".into());
            s
        },
        as_cn("root", &["role", "revoke-permission", "r", "a"]),
        as_cn("alice", &["get", "a"]),
        as_cn("root", &["auth", "disable"]),
        as_cn("bob", &["get", "a"]),
    ];
    let mut servers = Vec::new();
    for kind in [ServerKind::Etcd35, ServerKind::Concord] {
        // One file per server: etcd rereads its certificate at every handshake.
        let ip = concord_tests::LoopbackIp::claim().expect("a loopback address");
        let cert = pki
            .server_cert(&format!("server-{kind:?}"), &[ip.ip()])
            .expect("a server cert");
        let server = Server::builder(kind)
            .ip(ip)
            .https(pki.client("root").expect("a probe certificate"))
            .arg(format!("--cert-file={}", cert.cert.display()))
            .arg(format!("--key-file={}", cert.key.display()))
            .arg(format!("--trusted-ca-file={}", pki.ca.display()))
            .arg("--client-cert-auth")
            .arg("--bcrypt-cost=4")
            .start()
            .unwrap_or_else(|e| panic!("starting {kind:?} with client TLS: {e:#}"));
        servers.push(server);
    }
    let norms: Vec<Normalizer> = servers.iter().map(normalizer).collect();
    let mut report = String::new();
    for (n, step) in steps.iter().enumerate() {
        let expected = outcome(&servers[0], &norms[0], step);
        let actual = outcome(&servers[1], &norms[1], step);
        println!(
            "=== step {n}: etcdctl {} -> {}\n{}{}",
            step.args.join(" "),
            expected.exit,
            expected.stdout,
            expected.stderr
        );
        if expected != actual {
            report.push_str(&describe(n, step, &expected, &actual));
        }
    }
    assert!(
        report.is_empty(),
        "steps differ between etcd 3.5.16 (expected) and concord (actual):{report}"
    );
}

// ---------------------------------------------------------------------------------------------
// A deliberate difference: etcd 3.5.16 does not check the ops of a nested txn (later etcd
// releases do); concord checks every op at every depth.

#[tokio::test(flavor = "multi_thread")]
async fn nested_txn_ops_are_permission_checked() {
    use concord_store::proto::authpb::{Permission, permission::Type};
    use concord_store::proto::etcdserverpb::{
        AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
    };
    let server = start(ServerKind::Concord);
    let mut s = grpc::Session::new(&server.endpoint());
    let a = s.auth();
    a.clone()
        .user_add(AuthUserAddRequest {
            name: "alice".into(),
            password: "alicepw".into(),
            ..Default::default()
        })
        .await
        .expect("user add");
    a.clone()
        .role_add(AuthRoleAddRequest { name: "r".into() })
        .await
        .expect("role add");
    a.clone()
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(Permission {
                perm_type: Type::Readwrite as i32,
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
            }),
        })
        .await
        .expect("grant permission");
    a.clone()
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "r".into(),
        })
        .await
        .expect("grant role");
    enable_with_root(&mut s).await;
    let alice = s.token("alice", "alicepw").await;
    let op = |r: request_op::Request| RequestOp { request: Some(r) };
    let nested = |inner: RequestOp| TxnRequest {
        compare: vec![],
        success: vec![op(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![],
            success: vec![inner],
            failure: vec![],
        }))],
        failure: vec![],
    };
    let put = |k: &str| {
        op(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
    };
    let get = |k: &str| {
        op(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        }))
    };
    for (what, txn, allowed) in [
        ("nested put b", nested(put("b")), true),
        ("nested put z", nested(put("z")), false),
        ("nested get z", nested(get("z")), false),
    ] {
        let r = s.kv().txn(grpc::req(txn, Some(&alice))).await;
        match r {
            Ok(_) => assert!(allowed, "{what}: allowed, but alice may not"),
            Err(st) => {
                assert!(!allowed, "{what}: refused: {st:?}");
                assert_eq!(st.code(), tonic::Code::PermissionDenied, "{what}");
                assert_eq!(st.message(), "etcdserver: permission denied", "{what}");
            }
        }
    }
}
