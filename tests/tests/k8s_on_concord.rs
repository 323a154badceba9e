//! Kubernetes on Concord: kube-apiserver and kube-controller-manager 1.20.2 storing everything in
//! a 3-member concord cluster (`--etcd-servers` lists all three members).
//!
//! - objects: namespaces, a CRD and custom objects, a Deployment whose ReplicaSet and Pods the
//!   controller-manager creates, a StatefulSet whose first Pod it creates, ConfigMaps; every kind
//!   found under `/registry` in the store;
//! - lists paged with `limit`/`continue` (the raw API and `kubectl get --chunk-size`), each page
//!   checked, nothing lost or repeated;
//! - optimistic concurrency: concurrent updates carrying the same resourceVersion, exactly one
//!   wins and the others get 409 Conflict;
//! - `kubectl get --watch` keeps printing events while the concord leader is `kill -9`ed and a
//!   new one takes over;
//! - apiserver compaction (`--etcd-compaction-interval`): the store's old revisions get compacted
//!   by the apiserver, then a watch from an old resourceVersion gets 410 Gone and an old
//!   `continue` token 410 Expired.
//!
//! The same tests run against etcd 3.5.16, which validates the tests themselves: the objects and
//! paging one in CI, the others `#[ignore]`d and run by `tests/k8s/run-e2e.sh`. Every wait is on
//! a condition with a generous deadline. Every test name contains `serial`, so nextest runs them
//! one at a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use concord_tests::k8s::{ControlPlane, Kubectl};
use concord_tests::{Cluster, Etcdctl, ServerKind};
use serde_json::Value;

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json(kubectl: &Kubectl, args: &[&str]) -> Result<Value> {
    let out = kubectl.ok(args)?;
    serde_json::from_str(&out).with_context(|| format!("kubectl {args:?} printed no JSON: {out}"))
}

/// Keys under `prefix` in the store (etcdctl 3.5 against the first endpoint).
fn store_keys(endpoint: &str, prefix: &str) -> Result<Vec<String>> {
    let out = Etcdctl::V35.run(endpoint, ["get", prefix, "--prefix", "--keys-only"], None)?;
    ensure!(out.success(), "etcdctl get {prefix}: {}", out.stderr_text());
    Ok(out
        .stdout_text()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.concord.dev
spec:
  group: e2e.concord.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"#;

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "example.invalid/web:1"}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: apps}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: client, port: 2379}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: apps}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: "example.invalid/db:1"}]
"#;

fn objects_and_paging(kind: ServerKind) -> Result<()> {
    let cluster = Cluster::start(kind, 3)?;
    let cp = ControlPlane::start(cluster.endpoints())?;
    let kubectl = cp.kubectl();
    let ep = cluster.endpoints()[0].clone();

    // Namespaces.
    for ns in ["apps", "custom", "paging"] {
        kubectl.ok(["create", "namespace", ns])?;
    }
    let names = kubectl.ok(["get", "namespaces", "-o", "name"])?;
    for ns in ["default", "kube-system", "apps", "custom", "paging"] {
        ensure!(
            names.contains(&format!("namespace/{ns}")),
            "{ns} missing: {names}"
        );
    }

    // A CRD and custom objects.
    kubectl.apply(CRD)?;
    kubectl.ok([
        "wait",
        "--for=condition=Established",
        "crd/widgets.e2e.concord.dev",
        "--timeout=60s",
    ])?;
    for i in 0..3 {
        // Right after Established the new resource can take a moment to be served.
        let manifest = format!(
            "apiVersion: e2e.concord.dev/v1\nkind: Widget\nmetadata: {{name: w{i}, namespace: custom}}\nspec: {{size: {i}}}\n"
        );
        wait_until("a Widget to be created", Duration::from_secs(30), || {
            Ok(kubectl.apply(&manifest).ok())
        })?;
    }
    let widgets = json(&kubectl, &["get", "widgets", "-n", "custom", "-o", "json"])?;
    let sizes: Vec<i64> = widgets["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|w| w["spec"]["size"].as_i64())
        .collect();
    ensure!(sizes == vec![0, 1, 2], "widget sizes: {sizes:?}");
    let keys = store_keys(&ep, "/registry/e2e.concord.dev/widgets/custom/")?;
    ensure!(keys.len() == 3, "widgets in the store: {keys:?}");

    // Deployment -> ReplicaSet -> Pods, StatefulSet -> its first Pod (no node runs them: the
    // controllers' work is what is checked here).
    kubectl.apply(WORKLOADS)?;
    let rs = wait_until(
        "the Deployment's ReplicaSet with 2 Pods",
        Duration::from_secs(60),
        || {
            let rs = json(
                &kubectl,
                &["get", "rs", "-n", "apps", "-l", "app=web", "-o", "json"],
            )?;
            let Some(item) = rs["items"].as_array().and_then(|a| a.first()).cloned() else {
                return Ok(None);
            };
            let pods = json(
                &kubectl,
                &["get", "pods", "-n", "apps", "-l", "app=web", "-o", "json"],
            )?;
            let n = pods["items"].as_array().map_or(0, Vec::len);
            Ok((n == 2).then_some(item))
        },
    )?;
    ensure!(
        rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
            && rs["metadata"]["ownerReferences"][0]["name"] == "web",
        "ReplicaSet not owned by the Deployment: {}",
        rs["metadata"]
    );
    let pod = wait_until(
        "the StatefulSet's Pod db-0",
        Duration::from_secs(60),
        || {
            let out = kubectl.run(["get", "pod", "db-0", "-n", "apps", "-o", "json"])?;
            if !out.success() {
                return Ok(None);
            }
            Ok(Some(serde_json::from_str::<Value>(&out.stdout)?))
        },
    )?;
    ensure!(
        pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet",
        "db-0 not owned by the StatefulSet: {}",
        pod["metadata"]
    );
    ensure!(
        pod["status"]["phase"] == "Pending",
        "no node runs pods here, yet db-0 is {}",
        pod["status"]
    );
    ensure!(!store_keys(&ep, "/registry/replicasets/apps/")?.is_empty());
    ensure!(!store_keys(&ep, "/registry/statefulsets/apps/db")?.is_empty());

    // ConfigMaps, listed in pages of 7 with limit/continue.
    let total = 30;
    let mut manifest = String::new();
    for i in 0..total {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:02}, namespace: paging}}\ndata: {{i: \"{i}\"}}\n"
        ));
    }
    kubectl.apply(&manifest)?;
    let mut seen = Vec::new();
    let mut cont = String::new();
    let mut pages = 0;
    loop {
        let mut url = "/api/v1/namespaces/paging/configmaps?limit=7".to_owned();
        if !cont.is_empty() {
            url.push_str(&format!("&continue={cont}"));
        }
        let page = json(&kubectl, &["get", "--raw", &url])?;
        let items = page["items"].as_array().context("items")?;
        pages += 1;
        ensure!(items.len() <= 7, "page {pages} has {} items", items.len());
        // The controller-manager's root CA publisher adds kube-root-ca.crt to every namespace.
        seen.extend(
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str())
                .filter(|n| n.starts_with("cm-"))
                .map(str::to_owned),
        );
        cont = page["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if cont.is_empty() {
            ensure!(
                page["metadata"]
                    .get("remainingItemCount")
                    .is_none_or(|r| r == 0),
                "last page says items remain: {}",
                page["metadata"]
            );
            break;
        }
        ensure!(
            items.len() == 7,
            "a non-last page has {} items",
            items.len()
        );
    }
    let expected: Vec<String> = (0..total).map(|i| format!("cm-{i:02}")).collect();
    ensure!(seen == expected, "paged list: {seen:?}");
    ensure!(pages >= 5, "{total} items in pages of 7 took {pages} pages");
    let chunked = kubectl.ok([
        "get",
        "configmaps",
        "-n",
        "paging",
        "--chunk-size=4",
        "-o",
        "name",
    ])?;
    let chunked: Vec<&str> = chunked
        .lines()
        .filter(|l| l.starts_with("configmap/cm-"))
        .collect();
    ensure!(
        chunked.len() == total && chunked.iter().collect::<BTreeSet<_>>().len() == total,
        "kubectl --chunk-size=4: {chunked:?}"
    );

    // Concurrent updates with one resourceVersion: one wins, the others get 409.
    let current = json(
        &kubectl,
        &["get", "configmap", "cm-00", "-n", "paging", "-o", "json"],
    )?;
    let rv = current["metadata"]["resourceVersion"].clone();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut obj = current.clone();
            obj["data"]["writer"] = Value::String(format!("w{w}"));
            let kubectl = kubectl.clone();
            std::thread::spawn(move || {
                kubectl.run_stdin(["replace", "-f", "-"], Some(obj.to_string().as_bytes()))
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for (w, t) in writers.into_iter().enumerate() {
        let out = t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        if out.success() {
            won.push(format!("w{w}"));
        } else if out.stderr.contains("(Conflict)")
            && out.stderr.contains("the object has been modified")
        {
            conflicts += 1;
        } else {
            bail!("writer w{w}: unexpected failure: {}", out.stderr);
        }
    }
    ensure!(
        won.len() == 1 && conflicts == 3,
        "winners {won:?}, conflicts {conflicts}"
    );
    let after = json(
        &kubectl,
        &["get", "configmap", "cm-00", "-n", "paging", "-o", "json"],
    )?;
    ensure!(
        after["data"]["writer"] == Value::String(won[0].clone())
            && after["metadata"]["resourceVersion"] != rv,
        "stored object is not the winner's: {}",
        after
    );
    // The raw API says 409 too.
    let mut stale = current.clone();
    stale["data"]["writer"] = Value::String("late".into());
    let out = kubectl.run_stdin(
        [
            "replace",
            "--raw",
            "/api/v1/namespaces/paging/configmaps/cm-00",
            "-f",
            "-",
        ],
        Some(stale.to_string().as_bytes()),
    )?;
    ensure!(
        !out.success(),
        "stale raw replace succeeded: {}",
        out.stdout
    );
    Ok(())
}

#[test]
fn k8s_on_concord_objects_paging_conflicts_serial() -> Result<()> {
    objects_and_paging(ServerKind::Concord)
}

#[test]
fn k8s_on_etcd35_objects_paging_conflicts_serial() -> Result<()> {
    objects_and_paging(ServerKind::Etcd35)
}

fn watch_across_leader_kill(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    let cp = ControlPlane::start(cluster.endpoints())?;
    let kubectl = cp.kubectl();
    kubectl.ok(["create", "namespace", "watched"])?;
    let mut watch = kubectl.spawn(
        [
            "get",
            "configmaps",
            "-n",
            "watched",
            "--watch",
            "-o",
            "name",
        ],
        cp.dir(),
    )?;
    // Creates one ConfigMap, retrying while the store elects a leader (AlreadyExists after a
    // retry means an earlier attempt went through).
    let create = |name: &str| -> Result<()> {
        wait_until(
            &format!("configmap {name} created"),
            Duration::from_secs(60),
            || {
                let out = kubectl.run(["create", "configmap", name, "-n", "watched"])?;
                Ok((out.success() || out.stderr.contains("AlreadyExists")).then_some(()))
            },
        )
    };
    for i in 0..3 {
        let name = format!("before-{i}");
        create(&name)?;
        let want = format!("configmap/{name}");
        watch.wait_for_line(Duration::from_secs(30), |l| l == want)?;
    }

    let rt = runtime()?;
    let all: Vec<usize> = (0..cluster.len()).collect();
    let leader = rt.block_on(cluster.agreed_leader(&all))?;
    cluster.members[leader].kill9()?;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = rt.block_on(cluster.agreed_leader(&rest))?;
    ensure!(new_leader != leader);

    for i in 0..3 {
        let name = format!("after-{i}");
        create(&name)?;
        let want = format!("configmap/{name}");
        watch
            .wait_for_line(Duration::from_secs(60), |l| l == want)
            .with_context(|| {
                // The apiserver ends client watches when its own store watch fails, e.g. when
                // a member stays leaderless for 3 election timeouts and ends require-leader
                // streams (as etcd does): say which it was.
                let logs: Vec<String> = rest
                    .iter()
                    .map(|&m| format!("member {m}:\n{}", cluster.members[m].stderr_tail(40)))
                    .collect();
                format!("surviving members' logs:\n{}", logs.join("\n"))
            })?;
    }
    ensure!(
        watch.is_running(),
        "kubectl --watch exited: {}",
        watch.stderr()
    );
    ensure!(cp.kubectl().ok(["get", "--raw", "/readyz"])?.trim() == "ok");
    Ok(())
}

#[test]
fn k8s_on_concord_watch_survives_leader_kill9_serial() -> Result<()> {
    watch_across_leader_kill(ServerKind::Concord)
}

#[test]
#[ignore = "reference run against etcd 3.5.16; tests/k8s/run-e2e.sh runs it"]
fn k8s_on_etcd35_watch_survives_leader_kill9_serial() -> Result<()> {
    watch_across_leader_kill(ServerKind::Etcd35)
}

fn compaction(kind: ServerKind) -> Result<()> {
    let cluster = Cluster::start(kind, 3)?;
    // Without the watch cache, watches and lists go to the store, so the store's compaction is
    // what answers an old resourceVersion.
    let cp = ControlPlane::builder(cluster.endpoints())
        .compaction_interval(Duration::from_secs(2))
        .apiserver_arg("--watch-cache=false")
        .without_controller_manager()
        .start()?;
    let kubectl = cp.kubectl();
    let ep = cluster.endpoints()[0].clone();
    kubectl.ok(["create", "namespace", "compact"])?;
    for i in 0..3 {
        kubectl.ok(["create", "configmap", &format!("c{i}"), "-n", "compact"])?;
    }
    let first = json(
        &kubectl,
        &["get", "configmap", "c0", "-n", "compact", "-o", "json"],
    )?;
    let old_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .context("resourceVersion")?
        .to_owned();
    let page = json(
        &kubectl,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/compact/configmaps?limit=1",
        ],
    )?;
    let cont = page["metadata"]["continue"]
        .as_str()
        .context("continue token")?
        .to_owned();
    // The token's list revision, the newest revision the checks below need compacted.
    let list_rv = page["metadata"]["resourceVersion"]
        .as_str()
        .context("list resourceVersion")?
        .to_owned();
    for i in 0..5 {
        kubectl.ok([
            "label",
            "configmap",
            "c0",
            "-n",
            "compact",
            &format!("round={i}"),
            "--overwrite",
        ])?;
    }

    // The apiserver's compactor compacts the store past old_rv and the continue token's
    // revision (it compacts in steps, one interval behind).
    let key = "/registry/configmaps/compact/c0";
    let compacted = wait_until(
        "the apiserver to compact the store past the continue token's revision",
        Duration::from_secs(90),
        || {
            let out = Etcdctl::V35.run(&ep, ["get", key, &format!("--rev={list_rv}")], None)?;
            let err = out.stderr_text();
            Ok(err
                .contains("required revision has been compacted")
                .then_some(err))
        },
    )?;
    ensure!(compacted.contains("etcdserver: mvcc: required revision has been compacted"));

    // A watch from the compacted resourceVersion: 410 Gone.
    let out = kubectl.clone().timeout(Duration::from_secs(30)).run([
        "get",
        "--raw",
        &format!("/api/v1/namespaces/compact/configmaps?watch=1&resourceVersion={old_rv}"),
    ])?;
    ensure!(
        out.stdout.contains("\"type\":\"ERROR\"") && out.stdout.contains("\"code\":410"),
        "watch from compacted resourceVersion {old_rv}: {out:?}"
    );
    // The old continue token: 410 Expired.
    let out = kubectl.run([
        "get",
        "--raw",
        &format!("/api/v1/namespaces/compact/configmaps?limit=1&continue={cont}"),
    ])?;
    ensure!(
        !out.success() && out.stderr.contains("continue parameter is too old"),
        "continue token from before compaction: {out:?}"
    );
    // Fresh reads still work.
    let now = json(
        &kubectl,
        &["get", "configmap", "c0", "-n", "compact", "-o", "json"],
    )?;
    ensure!(now["metadata"]["labels"]["round"] == "4");
    Ok(())
}

#[test]
fn k8s_on_concord_apiserver_compaction_serial() -> Result<()> {
    compaction(ServerKind::Concord)
}

#[test]
#[ignore = "reference run against etcd 3.5.16; tests/k8s/run-e2e.sh runs it"]
fn k8s_on_etcd35_apiserver_compaction_serial() -> Result<()> {
    compaction(ServerKind::Etcd35)
}
