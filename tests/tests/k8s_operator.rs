//! The operator's end-to-end scenarios: `concord-operator` as a local process against a real
//! kube-apiserver 1.20.2, members run by the stand-in node as local concord (or etcd 3.5)
//! processes, reached by their pod DNS names (`concord_tests::k8s::e2e`). With
//! `CONCORD_E2E_KUBECONFIG` set the same tests run against a real cluster (kind).
//!
//! These scenarios found two kube-apiserver 1.20.2 incompatibilities in the operator, both
//! fixed: a status merge patch whose list items carry an empty string is rejected 422 "must be
//! of type string: null", and server-side apply of Service ports without `protocol` fails 500.
//!
//! The `chart_rbac` scenarios install the Helm chart's rendered manifests (helm-python-sdk) and
//! run the operator with its ServiceAccount's token, so the chart's RBAC is what is tested.
//!
//! Every wait is on a condition (EtcdCluster status, pods, member lists), never a fixed sleep.
//! Every test name contains `serial`. CI runs the concord image's scenarios and, as the etcd 3.5
//! smoke set, the create and the client-and-peer TLS scenarios with the etcd 3.5 image; the other
//! etcd 3.5 image runs are `#[ignore]`d and run by `tests/k8s/run-e2e.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::kv_client::KvClient;
use concord_store::proto::etcdserverpb::{PutRequest, RangeRequest};
use concord_tests::Etcdctl;
use concord_tests::k8s::e2e::{E2e, wait_until};
use concord_tests::ledger::channel;
use concord_tests::tls::{ClientTls, TestPki, curl};
use serde_json::Value;

const CONCORD_IMAGE: &str = "ghcr.io/concord/concord:dev";
const ETCD_IMAGE: &str = "gcr.io/etcd-development/etcd:v3.5.16";

/// Generous: on 2 cores a member start plus a learner catch-up takes seconds, not minutes.
const CONVERGE: Duration = Duration::from_secs(180);

fn cluster_manifest(name: &str, image: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: concord.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {{name: {name}}}\n\
         spec:\n  replicas: {replicas}\n  image: {image}\n{extra}"
    )
}

/// How a scenario starts the operator.
type Launch = fn(&mut E2e) -> Result<()>;

/// Installs the Helm chart as a user would, rendered by helm-python-sdk
/// (`operator/tests/helm_render.py`), except its Deployment (there is no kubelet here for the
/// operator's own pod): the operator then runs as a local process with the token of the chart's
/// ServiceAccount, so it has exactly the permissions the chart's RBAC grants. On a real cluster
/// the workflow installed the chart itself, and this starts nothing more.
fn start_operator_from_chart(e2e: &mut E2e) -> Result<()> {
    let Some(cp) = e2e.control_plane() else {
        return e2e.start_operator();
    };
    let cache = std::env::var_os("CONCORD_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/concord-test".into());
    let python = cache.join("py/bin/python");
    let root = concord_tests::k8s::e2e::repo_root();
    let out = std::process::Command::new(&python)
        .arg(root.join("operator/tests/helm_render.py"))
        .arg(root.join("charts/concord-operator"))
        .output()
        .with_context(|| {
            format!(
                "running {} (scripts/install-test-deps.sh installs it)",
                python.display()
            )
        })?;
    ensure!(
        out.status.success(),
        "helm_render.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: Value = serde_json::from_slice(&out.stdout)?;
    let templates = rendered["renders"]["defaults"]
        .as_object()
        .context("no default render")?;
    let kubectl = e2e.kubectl();
    kubectl.ok(["create", "namespace", "concord-system"])?;
    let mut applied = 0;
    for (name, manifest) in templates {
        let manifest = manifest.as_str().unwrap_or_default();
        if name.ends_with("deployment.yaml") || manifest.trim().is_empty() {
            continue;
        }
        kubectl.apply(manifest)?;
        applied += 1;
    }
    ensure!(
        applied > 0,
        "the chart rendered nothing to apply: {templates:?}"
    );
    let accounts = kubectl.ok([
        "get",
        "serviceaccounts",
        "-n",
        "concord-system",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let account = accounts
        .split_whitespace()
        .find(|a| *a != "default")
        .context("the chart made no ServiceAccount")?
        .to_owned();
    let kubeconfig =
        cp.service_account_kubeconfig("concord-system", &account, Duration::from_secs(60))?;
    e2e.set_operator_kubeconfig(kubeconfig);
    e2e.start_operator()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn put(endpoint: &str, key: &str, value: &str) -> Result<()> {
    KvClient::new(channel(endpoint)?)
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {key} via {endpoint}"))?;
    Ok(())
}

/// `key`'s value read through `endpoint` (serializable: the member's own copy).
async fn get_local(endpoint: &str, key: &str) -> Result<Option<String>> {
    let resp = KvClient::new(channel(endpoint)?)
        .range(RangeRequest {
            key: key.into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .with_context(|| format!("get {key} via {endpoint}"))?
        .into_inner();
    Ok(resp
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Member names in the EtcdCluster's status.
fn status_members(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn pod_names(name: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{name}-{i}")).collect()
}

/// Writes `count` keys through every member's address, then reads each back from every member.
fn write_through_members(
    rt: &tokio::runtime::Runtime,
    e2e: &E2e,
    name: &str,
    n: usize,
    tag: &str,
) -> Result<()> {
    let endpoints = pod_names(name, n)
        .iter()
        .map(|p| e2e.member_endpoint(name, p))
        .collect::<Result<Vec<_>>>()?;
    rt.block_on(async {
        for (i, ep) in endpoints.iter().enumerate() {
            put(ep, &format!("/{tag}/via-{i}"), &format!("v{i}")).await?;
        }
        for ep in &endpoints {
            for i in 0..endpoints.len() {
                let key = format!("/{tag}/via-{i}");
                let want = format!("v{i}");
                wait_until_async(&format!("{key} on {ep}"), || async {
                    Ok(
                        (get_local(ep, &key).await?.as_deref() == Some(want.as_str()))
                            .then_some(()),
                    )
                })
                .await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

async fn wait_until_async<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    concord_tests::cluster::wait_for(what, Duration::from_secs(30), &mut check).await
}

/// Puts through `endpoint` one after another until stopped; counts successes and errors.
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(rt: &tokio::runtime::Runtime, endpoint: String, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, e) = (stop.clone(), ok.clone(), errors.clone());
        let task = rt.spawn(async move {
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                match put(&endpoint, &format!("{prefix}{seq:08}"), "x").await {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        if let Ok(mut v) = e.lock() {
                            v.push(format!("{seq}: {err:#}"));
                        }
                    }
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Writer {
            stop,
            ok,
            errors,
            task,
        }
    }

    fn finish(self, rt: &tokio::runtime::Runtime) -> Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(self.task)?;
        let errors = self
            .errors
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .clone();
        Ok((self.ok.load(Ordering::Relaxed), errors))
    }
}

// --- scenarios ----------------------------------------------------------------------------------

fn create_available(image: &str, operator: Launch) -> Result<()> {
    let rt = runtime()?;
    let mut e2e = E2e::start("create")?;
    operator(&mut e2e)?;
    let start = Instant::now();
    e2e.apply(&cluster_manifest("demo", image, 3, ""))?;
    let status = e2e.wait_available("demo", 3, CONVERGE)?;
    eprintln!("3-member cluster Available after {:?}", start.elapsed());
    ensure!(
        status_members(&status) == pod_names("demo", 3),
        "members: {status}"
    );
    ensure!(
        status["leader"]
            .as_str()
            .is_some_and(|l| l.starts_with("demo-")),
        "no leader in status: {status}"
    );
    ensure!(status["clusterId"].as_str().is_some_and(|c| !c.is_empty()));
    for kind in ["service/demo", "statefulset/demo"] {
        e2e.ok(&["get", kind])?;
    }
    write_through_members(&rt, &e2e, "demo", 3, "create")?;
    Ok(())
}

#[test]
fn k8s_operator_create_available_serial() -> Result<()> {
    create_available(CONCORD_IMAGE, E2e::start_operator)
}

#[test]
fn k8s_operator_etcd35_create_available_serial() -> Result<()> {
    create_available(ETCD_IMAGE, E2e::start_operator)
}

fn scale_up_down(image: &str) -> Result<()> {
    let rt = runtime()?;
    let mut e2e = E2e::start("scale")?;
    e2e.start_operator()?;
    e2e.apply(&cluster_manifest("sc", image, 3, ""))?;
    e2e.wait_available("sc", 3, CONVERGE)?;
    write_through_members(&rt, &e2e, "sc", 3, "before")?;

    // 3 -> 5 while a client writes through member 0: no write fails.
    let writer = Writer::start(&rt, e2e.member_endpoint("sc", "sc-0")?, "/during-scale/");
    let start = Instant::now();
    e2e.ok(&[
        "patch",
        "etcdcluster",
        "sc",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ])?;
    let status = e2e.wait_available("sc", 5, CONVERGE)?;
    let took = start.elapsed();
    let (ok, errors) = writer.finish(&rt)?;
    eprintln!(
        "scale 3 -> 5 took {took:?} ({:?} per member); {ok} writes during it",
        took / 2
    );
    ensure!(
        errors.is_empty(),
        "writes failed during the scale-up: {errors:?}"
    );
    ensure!(ok > 0, "no write went through during the scale-up");
    ensure!(status_members(&status) == pod_names("sc", 5));
    ensure!(
        status["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().all(|m| m["learner"] == false)),
        "a learner was left unpromoted: {status}"
    );
    write_through_members(&rt, &e2e, "sc", 5, "at-five")?;

    // 5 -> 3 -> 1: the data stays.
    for n in [3u32, 1] {
        let start = Instant::now();
        e2e.ok(&[
            "patch",
            "etcdcluster",
            "sc",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"replicas":{n}}}}}"#),
        ])?;
        let status = e2e.wait_available("sc", n.into(), CONVERGE)?;
        eprintln!("scale down to {n} took {:?}", start.elapsed());
        ensure!(status_members(&status) == pod_names("sc", n as usize));
        wait_until(&format!("only {n} member pods"), CONVERGE, || {
            Ok((e2e
                .list("pods", Some("app.kubernetes.io/instance=sc"))?
                .len()
                == n as usize)
                .then_some(()))
        })
        .ok();
        let ep = e2e.member_endpoint("sc", "sc-0")?;
        rt.block_on(async {
            for (tag, count) in [("before", 3), ("at-five", 5)] {
                for i in 0..count {
                    let key = format!("/{tag}/via-{i}");
                    ensure!(
                        get_local(&ep, &key).await?.as_deref() == Some(format!("v{i}").as_str()),
                        "{key} lost after scaling to {n}"
                    );
                }
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    Ok(())
}

#[test]
fn k8s_operator_scale_3_5_3_1_serial() -> Result<()> {
    scale_up_down(CONCORD_IMAGE)
}

#[test]
#[ignore = "etcd 3.5 image; tests/k8s/run-e2e.sh runs it"]
fn k8s_operator_etcd35_scale_3_5_3_1_serial() -> Result<()> {
    scale_up_down(ETCD_IMAGE)
}

/// etcdctl 3.5 to `endpoint` with `tls`'s CA and client certificate: success and stdout.
fn ctl_tls(endpoint: &str, tls: &ClientTls, args: &[&str]) -> Result<(bool, String)> {
    let mut all = vec![
        "--dial-timeout=2s".to_owned(),
        "--command-timeout=5s".to_owned(),
    ];
    all.extend(tls.etcdctl_args());
    all.extend(args.iter().map(|a| a.to_string()));
    let out = Etcdctl::V35.run_with_timeout(endpoint, &all, None, Duration::from_secs(30))?;
    if !out.success() {
        eprintln!("etcdctl {}: {}", all.join(" "), out.stderr_text());
    }
    Ok((out.success(), out.stdout_text()))
}

/// Pods `name-0..n` are Ready, their probes ask the plain metrics port (`metrics`, 2381), and
/// that port answers `/readyz` and `/livez` over http without any certificate.
fn ready_through_metrics_port(e2e: &E2e, name: &str, n: usize) -> Result<()> {
    let ns = e2e.namespace().to_owned();
    for pod in pod_names(name, n) {
        // The probes run every few seconds: the pod becomes Ready a little after its member.
        let p = wait_until(&format!("pod {pod} Ready"), CONVERGE, || {
            Ok(e2e.get("pod", &pod)?.filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            }))
        })?;
        let ctr = &p["spec"]["containers"][0];
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &ctr[probe]["httpGet"];
            ensure!(
                get["port"] == "metrics" && get["scheme"] == "HTTP",
                "{pod} {probe}: {get}"
            );
        }
        ensure!(
            ctr["ports"].as_array().is_some_and(|ps| ps
                .iter()
                .any(|p| p["name"] == "metrics" && p["containerPort"] == 2381)),
            "{pod} has no metrics port: {ctr}"
        );
        for path in ["/readyz", "/livez"] {
            let url = format!("http://{pod}.{name}.{ns}.svc.cluster.local:2381{path}");
            let (code, body) = curl(&url, &ClientTls::default(), &[], Duration::from_secs(10))?;
            ensure!(code == 200, "{url}: {code} {body}");
        }
    }
    Ok(())
}

/// Waits until the EtcdCluster `name` has (`present`) or has not a condition of `type_` with
/// `reason` (it must have some conditions).
fn wait_condition(
    e2e: &E2e,
    name: &str,
    type_: &str,
    reason: &str,
    present: bool,
    timeout: Duration,
) -> Result<()> {
    let what = format!("{type_} {reason} on {name} (present: {present})");
    wait_until(&what, timeout, || {
        let c = e2e.get("etcdcluster", name)?;
        Ok(c.and_then(|c| {
            let conds = c["status"]["conditions"].as_array()?;
            let has = conds
                .iter()
                .any(|c| c["type"] == type_ && c["reason"] == reason);
            (!conds.is_empty() && has == present).then_some(())
        }))
    })
}

/// Client and peer TLS from two Secrets (certificates of a test CA for the members' DNS names):
/// the operator reads the client Secret and bootstraps, grows to 3 (learners added and promoted
/// over `https`) and shrinks to 2 (leader moved, member removed) while members talk to each
/// other over mutually authenticated `https`; clients with a certificate of the CA read and
/// write through every member, clients without one are refused, and pods are Ready through the
/// plain metrics port. A missing Secret first blocks the cluster with `ClientTlsSecretInvalid`,
/// which clears as soon as the Secret is made (the operator watches Secrets). Client TLS is then
/// switched off and on again under the running members (a rolling restart keeping members and
/// data), and a peer TLS switch is refused. The concord
/// run uses the chart's RBAC, so its `secrets` grant is what lets the operator read the Secret.
fn tls_cluster(image: &str, operator: Launch) -> Result<()> {
    let mut e2e = E2e::start("tls")?;
    if e2e.real_cluster() {
        eprintln!("skipped: members are reached by their DNS names over https only here");
        return Ok(());
    }
    let ns = e2e.namespace().to_owned();
    let pki = TestPki::new()?;
    let mut dns = vec![
        format!("*.tl.{ns}.svc"),
        format!("*.tl.{ns}.svc.cluster.local"),
    ];
    // Peers check that a peer's certificate names the address it connects from: by IP
    // (127.0.0.1) or by a name that resolves to it (wildcards cannot be resolved).
    dns.extend((0..3).map(|k| format!("tl-{k}.tl.{ns}.svc.cluster.local")));
    let client = pki.dns_cert("tl-client", &dns)?;
    let peer = pki.dns_cert("tl-peer", &dns)?;
    operator(&mut e2e)?;
    e2e.apply(&cluster_manifest(
        "tl",
        image,
        3,
        "  tls: {clientSecretName: tl-client, peerSecretName: tl-peer}\n",
    ))?;
    wait_condition(
        &e2e,
        "tl",
        "Degraded",
        "ClientTlsSecretInvalid",
        true,
        CONVERGE,
    )?;
    ensure!(
        e2e.get("statefulset", "tl")?.is_none(),
        "a StatefulSet was made without the client TLS Secret"
    );
    for (secret, pair) in [("tl-client", &client), ("tl-peer", &peer)] {
        e2e.ok(&[
            "create",
            "secret",
            "generic",
            secret,
            &format!("--from-file=ca.crt={}", pki.ca.display()),
            &format!("--from-file=tls.crt={}", pair.cert.display()),
            &format!("--from-file=tls.key={}", pair.key.display()),
        ])?;
    }
    // The operator watches Secrets: the new one reconciles the cluster at once (while blocked it
    // requeues only every 5 minutes, as a safety net), so the condition clears well before that.
    let secret_watch = Duration::from_secs(120);
    wait_condition(
        &e2e,
        "tl",
        "Degraded",
        "ClientTlsSecretInvalid",
        false,
        secret_watch,
    )?;
    let status = e2e.wait_available("tl", 3, CONVERGE)?;
    ensure!(status_members(&status) == pod_names("tl", 3), "{status}");
    ensure!(
        status["members"]
            .as_array()
            .is_some_and(
                |ms| ms
                    .iter()
                    .all(|m| m["peerURL"]
                        .as_str()
                        .is_some_and(|u| u.starts_with(&format!(
                            "https://{}.tl.{ns}.svc.cluster.local:2380",
                            m["name"].as_str().unwrap_or_default()
                        ))))
            ),
        "peer URLs: {status}"
    );
    // Probes cannot present a client certificate: the pods are Ready through the metrics port.
    ready_through_metrics_port(&e2e, "tl", 3)?;
    let ep = |k: u32| format!("https://tl-{k}.tl.{ns}.svc.cluster.local:2379");
    let user = pki.client("tl-user")?;
    for k in 0..3 {
        let (ok, _) = ctl_tls(&ep(k), &user, &["put", &format!("/tls/{k}"), "v"])?;
        ensure!(ok, "put through tl-{k} over https");
    }
    let (ok, out) = ctl_tls(&ep(2), &user, &["member", "list", "-w", "simple"])?;
    ensure!(
        ok && out.lines().count() == 3 && out.lines().all(|l| l.matches("https://").count() == 2),
        "member list: {out}"
    );
    // Plain text is refused by the https listener, and a client with another CA does not trust it.
    let plain = Etcdctl::V35.run_with_timeout(
        &format!("http://tl-0.tl.{ns}.svc.cluster.local:2379"),
        ["--dial-timeout=2s", "--command-timeout=4s", "get", "/tls/0"],
        None,
        Duration::from_secs(30),
    )?;
    ensure!(
        !plain.success(),
        "plain text accepted: {}",
        plain.stdout_text()
    );
    let other_ca = ClientTls {
        cacert: Some(pki.other_ca.clone()),
        ..user.clone()
    };
    let (ok, _) = ctl_tls(&ep(0), &other_ca, &["get", "/tls/0"])?;
    ensure!(!ok, "a client trusting another CA connected");
    // Members require a client certificate of the Secret's CA: none, or one of another CA, is
    // refused; the kubelet-style probe (https, no certificate) would fail on the client port.
    let no_cert = ClientTls {
        cacert: Some(pki.ca.clone()),
        ..Default::default()
    };
    let (ok, out) = ctl_tls(&ep(0), &no_cert, &["get", "/tls/0"])?;
    ensure!(!ok, "a client without a certificate read {out:?}");
    let foreign_cert = ClientTls {
        cert: Some(pki.other_client_cert("tl-user")?),
        ..no_cert.clone()
    };
    let (ok, out) = ctl_tls(&ep(0), &foreign_cert, &["get", "/tls/0"])?;
    ensure!(!ok, "a client certificate of another CA read {out:?}");
    let probe = curl(
        &format!("{}/readyz", ep(0)),
        &no_cert,
        &[],
        Duration::from_secs(10),
    );
    ensure!(
        probe.is_err(),
        "/readyz on the client port answered without a client certificate: {probe:?}"
    );

    // Shrink over TLS: leadership moves if needed, the member goes; the data stays.
    e2e.ok(&[
        "patch",
        "etcdcluster",
        "tl",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ])?;
    let status = e2e.wait_available("tl", 2, CONVERGE)?;
    ensure!(status_members(&status) == pod_names("tl", 2), "{status}");
    for k in 0..2 {
        let (ok, out) = ctl_tls(&ep(k), &user, &["get", "/tls/", "--prefix", "--keys-only"])?;
        ensure!(
            ok && out.split_whitespace().collect::<Vec<_>>() == ["/tls/0", "/tls/1", "/tls/2"],
            "keys on tl-{k}: {out}"
        );
    }

    // Client TLS off, then on again, under running members: the StatefulSet restarts them one
    // at a time with the new flags, and each publishes its new client URLs; the members (ids,
    // peer URLs) and the data stay.
    let ids = |status: &Value| -> Vec<Option<String>> {
        pod_names("tl", 2)
            .iter()
            .map(|p| member_id(status, p))
            .collect()
    };
    let before = ids(&status);
    let plain = ClientTls::default();
    for (patch, tls, scheme) in [
        (
            r#"[{"op":"remove","path":"/spec/tls/clientSecretName"}]"#,
            &plain,
            "http",
        ),
        (
            r#"[{"op":"add","path":"/spec/tls/clientSecretName","value":"tl-client"}]"#,
            &user,
            "https",
        ),
    ] {
        e2e.ok(&["patch", "etcdcluster", "tl", "--type=json", "-p", patch])?;
        let ep = |k: u32| format!("{scheme}://tl-{k}.tl.{ns}.svc.cluster.local:2379");
        wait_until(
            &format!("both members to serve and publish {scheme} client URLs"),
            CONVERGE,
            || {
                for k in 0..2 {
                    let (ok, out) = ctl_tls(&ep(k), tls, &["member", "list", "-w", "simple"])?;
                    let client_urls: Vec<&str> =
                        out.lines().filter_map(|l| l.split(", ").nth(4)).collect();
                    if !ok
                        || client_urls.len() != 2
                        || !client_urls
                            .iter()
                            .all(|u| u.starts_with(&format!("{scheme}://")))
                    {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )?;
        // The operator saw the roll-out finish.
        wait_condition(&e2e, "tl", "Progressing", "Converged", true, CONVERGE)?;
        let status = e2e.wait_available("tl", 2, CONVERGE)?;
        ensure!(
            ids(&status) == before,
            "members changed across the {scheme} roll-out: {before:?} -> {status}"
        );
        ready_through_metrics_port(&e2e, "tl", 2)?;
        for k in 0..2 {
            let (ok, out) = ctl_tls(&ep(k), tls, &["get", "/tls/", "--prefix", "--keys-only"])?;
            ensure!(
                ok && out.split_whitespace().collect::<Vec<_>>() == ["/tls/0", "/tls/1", "/tls/2"],
                "keys on tl-{k} after the {scheme} roll-out: {out}"
            );
        }
    }
    let (ok, out) = ctl_tls(
        &format!("http://tl-0.tl.{ns}.svc.cluster.local:2379"),
        &plain,
        &["get", "/tls/0"],
    )?;
    ensure!(!ok, "plain text accepted after client TLS came back: {out}");
    let (ok, out) = ctl_tls(&ep(0), &no_cert, &["get", "/tls/0"])?;
    ensure!(
        !ok,
        "a client without a certificate read {out:?} after client TLS came back"
    );

    // Turning peer TLS off under running members is refused, and nothing rolls out.
    e2e.ok(&[
        "patch",
        "etcdcluster",
        "tl",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/tls/peerSecretName"}]"#,
    ])?;
    wait_condition(
        &e2e,
        "tl",
        "Degraded",
        "PeerTlsChangeUnsupported",
        true,
        CONVERGE,
    )?;
    let sts = e2e.get("statefulset", "tl")?.context("StatefulSet tl")?;
    ensure!(
        sts["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--peer-client-cert-auth=true")),
        "the StatefulSet template lost peer TLS: {sts}"
    );
    let (ok, out) = ctl_tls(&ep(1), &user, &["get", "/tls/1", "--print-value-only"])?;
    ensure!(ok && out == "v\n", "get after the refused change: {out}");
    Ok(())
}

#[test]
fn k8s_operator_chart_rbac_client_and_peer_tls_serial() -> Result<()> {
    tls_cluster(CONCORD_IMAGE, start_operator_from_chart)
}

#[test]
fn k8s_operator_etcd35_client_and_peer_tls_serial() -> Result<()> {
    tls_cluster(ETCD_IMAGE, E2e::start_operator)
}

/// Member names and ids from the etcd member list, read through `endpoint`.
async fn member_list(endpoint: &str) -> Result<Vec<(String, u64, bool)>> {
    use concord_store::proto::etcdserverpb::MemberListRequest;
    use concord_store::proto::etcdserverpb::cluster_client::ClusterClient;
    let resp = ClusterClient::new(channel(endpoint)?)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .with_context(|| format!("member list via {endpoint}"))?
        .into_inner();
    let mut v: Vec<(String, u64, bool)> = resp
        .members
        .into_iter()
        .map(|m| (m.name, m.id, m.is_learner))
        .collect();
    v.sort();
    Ok(v)
}

fn member_id(status: &Value, name: &str) -> Option<String> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["id"].as_str().map(str::to_owned))
}

fn pod_uid(e2e: &E2e, pod: &str) -> Result<Option<String>> {
    Ok(e2e
        .get("pod", pod)?
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned)))
}

fn delete_member_pod(image: &str) -> Result<()> {
    let rt = runtime()?;
    let mut e2e = E2e::start("podkill")?;
    e2e.start_operator()?;
    e2e.apply(&cluster_manifest("pk", image, 3, ""))?;
    let status = e2e.wait_available("pk", 3, CONVERGE)?;
    write_through_members(&rt, &e2e, "pk", 3, "before")?;
    let id = member_id(&status, "pk-1").context("pk-1 in status")?;
    let uid = pod_uid(&e2e, "pk-1")?.context("pk-1 pod")?;
    let start = Instant::now();
    e2e.ok(&["delete", "pod", "pk-1", "--wait=false"])?;
    wait_until("a new pk-1 pod", CONVERGE, || {
        Ok(pod_uid(&e2e, "pk-1")?.filter(|u| *u != uid))
    })?;
    let status = e2e.wait_available("pk", 3, CONVERGE)?;
    eprintln!("deleted member pod back after {:?}", start.elapsed());
    ensure!(
        member_id(&status, "pk-1") == Some(id.clone()),
        "pk-1 came back as another member (was {id}): {status}"
    );
    let ep = e2e.member_endpoint("pk", "pk-1")?;
    rt.block_on(async {
        for i in 0..3 {
            let key = format!("/before/via-{i}");
            ensure!(get_local(&ep, &key).await?.as_deref() == Some(format!("v{i}").as_str()));
        }
        ensure!(member_list(&ep).await?.len() == 3);
        Ok::<_, anyhow::Error>(())
    })?;
    write_through_members(&rt, &e2e, "pk", 3, "after")
}

#[test]
fn k8s_operator_member_pod_deleted_rejoins_serial() -> Result<()> {
    delete_member_pod(CONCORD_IMAGE)
}

#[test]
#[ignore = "etcd 3.5 image; tests/k8s/run-e2e.sh runs it"]
fn k8s_operator_etcd35_member_pod_deleted_rejoins_serial() -> Result<()> {
    delete_member_pod(ETCD_IMAGE)
}

fn wiped_data_dir(image: &str) -> Result<()> {
    let rt = runtime()?;
    let mut e2e = E2e::start("wipe")?;
    if e2e.real_cluster() {
        eprintln!("skipped: wiping a member's data dir needs the stand-in node's PVC dirs");
        return Ok(());
    }
    e2e.start_operator()?;
    e2e.apply(&cluster_manifest(
        "wp",
        image,
        3,
        "  repairAfterSeconds: 30\n",
    ))?;
    e2e.wait_available("wp", 3, CONVERGE)?;
    write_through_members(&rt, &e2e, "wp", 3, "before")?;
    let ns = e2e.namespace().to_owned();
    let node = e2e.node().context("local node")?;
    let data = node
        .pvc_dir(&ns, "data-wp-2")
        .context("no PVC dir for data-wp-2")?
        .join("data");
    ensure!(
        data.is_dir(),
        "{} is not the member's data dir",
        data.display()
    );
    let uid = pod_uid(&e2e, "wp-2")?.context("wp-2 pod")?;
    let claim_uid = |e2e: &E2e| -> Result<Option<(String, bool)>> {
        Ok(e2e.get("pvc", "data-wp-2")?.and_then(|c| {
            let uid = c["metadata"]["uid"].as_str()?.to_owned();
            Some((uid, !c["metadata"]["deletionTimestamp"].is_null()))
        }))
    };
    let (old_claim, _) = claim_uid(&e2e)?.context("claim data-wp-2")?;
    // A finalizer of the test's own keeps the old claim in deletion after the operator deletes
    // it, so the repair surely meets a claim being deleted. The 1.20 StatefulSet controller then
    // creates no pod ("pvc data-wp-2 is being deleted"); a controller that does leaves one that
    // is never scheduled, which the operator deletes once the claim is gone (planner tests).
    e2e.ok(&[
        "patch",
        "pvc",
        "data-wp-2",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/finalizers/-","value":"concord.dev/test-hold"}]"#,
    ])?;
    // The member loses its disk: the data dir goes while the process still runs, then the pod
    // is deleted so that the next instance starts on the empty dir.
    std::fs::remove_dir_all(&data)?;
    let start = Instant::now();
    e2e.ok(&["delete", "pod", "wp-2", "--wait=false"])?;
    wait_until("a new wp-2 pod", CONVERGE, || {
        Ok(pod_uid(&e2e, "wp-2")?.filter(|u| *u != uid))
    })?;
    // The repair deletes the claim, then the pod; no pod runs on the old claim, and the operator
    // waits for the claim to go.
    wait_until(
        "the old claim in deletion, no scheduled wp-2 pod, and the operator waiting",
        Duration::from_secs(300),
        || {
            let deleting = claim_uid(&e2e)?.is_some_and(|(u, d)| u == old_claim && d);
            let held = e2e
                .get("pod", "wp-2")?
                .is_none_or(|p| p["spec"]["nodeName"].is_null());
            let waiting = e2e.get("etcdcluster", "wp")?.is_some_and(|c| {
                c["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Progressing" && c["reason"] == "ClaimDeleting")
                })
            });
            Ok((deleting && held && waiting).then_some(()))
        },
    )?;
    let claim = e2e.get("pvc", "data-wp-2")?.context("claim data-wp-2")?;
    let kept: Vec<&Value> = claim["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| *f != "concord.dev/test-hold")
        .collect();
    e2e.ok(&[
        "patch",
        "pvc",
        "data-wp-2",
        "--type=merge",
        "-p",
        &serde_json::json!({"metadata": {"finalizers": kept}}).to_string(),
    ])?;
    let status = e2e.wait_available("wp", 3, Duration::from_secs(300))?;
    eprintln!("wiped member repaired after {:?}", start.elapsed());
    ensure!(status_members(&status) == pod_names("wp", 3));
    let ep = e2e.member_endpoint("wp", "wp-2")?;
    rt.block_on(async {
        let ms = member_list(&ep).await?;
        ensure!(
            ms.iter().map(|m| m.0.as_str()).collect::<Vec<_>>() == ["wp-0", "wp-1", "wp-2"]
                && ms.iter().all(|m| !m.2),
            "member list after repair: {ms:?}"
        );
        for i in 0..3 {
            let key = format!("/before/via-{i}");
            wait_until_async(&format!("{key} back on the repaired member"), || async {
                Ok(
                    (get_local(&ep, &key).await?.as_deref() == Some(format!("v{i}").as_str()))
                        .then_some(()),
                )
            })
            .await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // The repair replaced the claim: the old one (protected while its pod ran) is gone, and the
    // member's data lives on the new claim's volume.
    let (new_claim, deleting) = claim_uid(&e2e)?.context("no claim data-wp-2 after repair")?;
    ensure!(
        new_claim != old_claim && !deleting,
        "claim data-wp-2 after repair: {new_claim} (was {old_claim}), being deleted: {deleting}"
    );
    let new_data = node
        .pvc_dir(&ns, "data-wp-2")
        .context("no PVC dir for the new data-wp-2")?
        .join("data");
    ensure!(
        new_data != data && new_data.is_dir(),
        "the repaired member has no data dir on its new claim ({})",
        new_data.display()
    );
    Ok(())
}

#[test]
fn k8s_operator_wiped_member_repaired_serial() -> Result<()> {
    wiped_data_dir(CONCORD_IMAGE)
}

#[test]
#[ignore = "etcd 3.5 image; tests/k8s/run-e2e.sh runs it"]
fn k8s_operator_etcd35_wiped_member_repaired_serial() -> Result<()> {
    wiped_data_dir(ETCD_IMAGE)
}

fn operator_killed_mid_scale_up(image: &str) -> Result<()> {
    let rt = runtime()?;
    let mut e2e = E2e::start("opkill")?;
    if std::env::var("CONCORD_E2E_OPERATOR").is_ok_and(|v| v == "external") {
        eprintln!("skipped: the operator is external (CONCORD_E2E_OPERATOR=external)");
        return Ok(());
    }
    e2e.start_operator()?;
    e2e.apply(&cluster_manifest("ok", image, 3, ""))?;
    e2e.wait_available("ok", 3, CONVERGE)?;
    write_through_members(&rt, &e2e, "ok", 3, "before")?;
    e2e.ok(&[
        "patch",
        "etcdcluster",
        "ok",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ])?;
    // Mid-way: the first membership step of the scale-up is recorded or done.
    let seen = wait_until("the scale-up to start", CONVERGE, || {
        let Some(c) = e2e.get("etcdcluster", "ok")? else {
            return Ok(None);
        };
        let pending = &c["status"]["pendingOperation"];
        let sts = e2e
            .get("statefulset", "ok")?
            .and_then(|s| s["spec"]["replicas"].as_i64())
            .unwrap_or(0);
        Ok((!pending.is_null() || sts > 3)
            .then(|| format!("pending {pending}, sts replicas {sts}")))
    })?;
    e2e.kill_operator()?;
    eprintln!("operator killed mid scale-up ({seen})");
    e2e.start_operator()?;
    let status = e2e.wait_available("ok", 5, CONVERGE)?;
    ensure!(status_members(&status) == pod_names("ok", 5));
    let ep = e2e.member_endpoint("ok", "ok-0")?;
    let ms = rt.block_on(member_list(&ep))?;
    ensure!(
        ms.iter().map(|m| m.0.clone()).collect::<Vec<_>>() == pod_names("ok", 5)
            && ms.iter().all(|m| !m.2),
        "duplicate, orphan or learner members after the restart: {ms:?}"
    );
    write_through_members(&rt, &e2e, "ok", 5, "after")
}

#[test]
fn k8s_operator_killed_mid_scale_up_serial() -> Result<()> {
    operator_killed_mid_scale_up(CONCORD_IMAGE)
}

#[test]
#[ignore = "etcd 3.5 image; tests/k8s/run-e2e.sh runs it"]
fn k8s_operator_etcd35_killed_mid_scale_up_serial() -> Result<()> {
    operator_killed_mid_scale_up(ETCD_IMAGE)
}

fn delete_cluster_per_policy(image: &str, operator: Launch) -> Result<()> {
    let mut e2e = E2e::start("delete")?;
    operator(&mut e2e)?;
    e2e.apply(&cluster_manifest(
        "keep",
        image,
        1,
        "  pvcRetentionPolicy: {whenDeleted: Retain}\n",
    ))?;
    e2e.apply(&cluster_manifest(
        "drop",
        image,
        1,
        "  pvcRetentionPolicy: {whenDeleted: Delete}\n",
    ))?;
    e2e.wait_available("keep", 1, CONVERGE)?;
    e2e.wait_available("drop", 1, CONVERGE)?;
    for name in ["keep", "drop"] {
        ensure!(
            !e2e.list("pvc", Some(&format!("app.kubernetes.io/instance={name}")))?
                .is_empty(),
            "{name} has no PVC"
        );
    }
    e2e.ok(&["delete", "etcdcluster", "keep", "drop", "--wait=false"])?;
    for name in ["keep", "drop"] {
        let sel = format!("app.kubernetes.io/instance={name}");
        wait_until(&format!("{name}'s children to go"), CONVERGE, || {
            let left: Vec<String> = [
                "etcdcluster",
                "statefulset",
                "service",
                "configmap",
                "pod",
                "poddisruptionbudget",
            ]
            .iter()
            .map(|k| {
                Ok(e2e
                    .list(
                        k,
                        if *k == "etcdcluster" {
                            None
                        } else {
                            Some(&sel)
                        },
                    )?
                    .iter()
                    .filter(|o| *k != "etcdcluster" || o["metadata"]["name"] == name)
                    .map(|o| format!("{k}/{}", o["metadata"]["name"]))
                    .collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()?
            .concat();
            Ok(left.is_empty().then_some(()))
        })?;
    }
    wait_until("drop's PVC to be deleted", CONVERGE, || {
        Ok(e2e
            .list("pvc", Some("app.kubernetes.io/instance=drop"))?
            .is_empty()
            .then_some(()))
    })?;
    ensure!(
        e2e.list("pvc", Some("app.kubernetes.io/instance=keep"))?
            .len()
            == 1,
        "keep's PVC (policy Retain) was deleted"
    );
    Ok(())
}

#[test]
fn k8s_operator_delete_cluster_per_policy_serial() -> Result<()> {
    delete_cluster_per_policy(CONCORD_IMAGE, E2e::start_operator)
}

#[test]
#[ignore = "etcd 3.5 image; tests/k8s/run-e2e.sh runs it"]
fn k8s_operator_etcd35_delete_cluster_per_policy_serial() -> Result<()> {
    delete_cluster_per_policy(ETCD_IMAGE, E2e::start_operator)
}

#[test]
fn k8s_operator_chart_rbac_create_available_serial() -> Result<()> {
    create_available(CONCORD_IMAGE, start_operator_from_chart)
}

#[test]
fn k8s_operator_chart_rbac_delete_cluster_per_policy_serial() -> Result<()> {
    delete_cluster_per_policy(CONCORD_IMAGE, start_operator_from_chart)
}
