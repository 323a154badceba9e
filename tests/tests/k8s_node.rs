//! The stand-in node (`concord_tests::k8s::Node`) proven on a plain StatefulSet of 3 concord pods,
//! configured only with etcd's flags and `$(POD_NAME)` from the downward API, as an operator would:
//!
//! - the node binds the pods, runs each as a local concord on its own `127.x` address, and reports
//!   them Running and Ready from their `/readyz` readiness probes;
//! - `<pod>.<service>.<namespace>.svc` resolves (through the node's block in `/etc/hosts`) to the
//!   pod's reported address, and the three members form one cluster through those names;
//! - deleting a pod kills its process; the StatefulSet's replacement rejoins on the same PVC dir;
//! - scaling to 0 stops every process, and scaling back to 3 brings the data back from the PVC
//!   dirs alone (no member kept it in memory);
//! - dropping the node removes its `/etc/hosts` entries.
//!
//! The control plane stores its state in one concord member. The same test with the real etcd 3.5
//! image name (`#[ignore]`d, run by `tests/k8s/run-e2e.sh`) validates the test. Names contain
//! `serial`.

use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use concord_tests::k8s::{ControlPlane, Kubectl, Node};
use concord_tests::{Etcdctl, Server, ServerKind};
use serde_json::Value;

const NS: &str = "nodetest";

fn manifest(image: &str) -> String {
    let peers = (0..3)
        .map(|i| format!("c-{i}=http://c-{i}.concord.{NS}.svc:2380"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: concord, namespace: {NS}}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: concord}}
  ports: [{{name: client, port: 2379}}, {{name: peer, port: 2380}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: c, namespace: {NS}}}
spec:
  serviceName: concord
  replicas: 3
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: concord}}}}
  template:
    metadata: {{labels: {{app: concord}}}}
    spec:
      containers:
      - name: concord
        image: {image}
        command: [etcd]
        args:
        - --name=$(POD_NAME)
        - --data-dir=/var/lib/etcd/data
        - --listen-client-urls=http://0.0.0.0:2379
        - --advertise-client-urls=http://$(POD_NAME).concord.{NS}.svc:2379
        - --listen-peer-urls=http://0.0.0.0:2380
        - --initial-advertise-peer-urls=http://$(POD_NAME).concord.{NS}.svc:2380
        - --initial-cluster={peers}
        - --initial-cluster-state=new
        - --initial-cluster-token=nodetest
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        ports: [{{name: client, containerPort: 2379}}, {{name: peer, containerPort: 2380}}]
        readinessProbe:
          httpGet: {{path: /readyz, port: client}}
          periodSeconds: 1
        volumeMounts: [{{name: data, mountPath: /var/lib/etcd}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"#
    )
}

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

/// The pods of the StatefulSet that are Running and Ready, by name, with their uid and podIP.
fn ready_pods(kubectl: &Kubectl) -> Result<Vec<(String, String, String)>> {
    let out = kubectl.ok(["get", "pods", "-n", NS, "-l", "app=concord", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    let mut ready = Vec::new();
    for p in list["items"].as_array().context("items")? {
        let is_ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if p["status"]["phase"] == "Running"
            && is_ready
            && p["metadata"]["deletionTimestamp"].is_null()
        {
            ready.push((
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    ready.sort();
    Ok(ready)
}

fn wait_all_ready(kubectl: &Kubectl, n: usize) -> Result<Vec<(String, String, String)>> {
    wait_until(
        &format!("{n} Running and Ready pods"),
        Duration::from_secs(120),
        || {
            let pods = ready_pods(kubectl)?;
            Ok((pods.len() == n).then_some(pods))
        },
    )
}

fn endpoint(pod: &str) -> String {
    format!("http://{pod}.concord.{NS}.svc:2379")
}

fn etcdctl(pod: &str, args: &[&str]) -> Result<String> {
    let out = Etcdctl::V35.run(&endpoint(pod), args, None)?;
    ensure!(
        out.success(),
        "etcdctl {args:?} via {pod}: {}",
        out.stderr_text()
    );
    Ok(out.stdout_text())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn k8s_node_runs_statefulset_of_concord_serial() -> Result<()> {
    statefulset("ghcr.io/concord/concord:dev")
}

/// The same with the real etcd 3.5 image name (the node runs etcd 3.5.16): validates the test.
#[test]
#[ignore = "reference run with etcd 3.5.16; tests/k8s/run-e2e.sh runs it"]
fn k8s_node_runs_statefulset_of_etcd35_serial() -> Result<()> {
    statefulset("quay.io/coreos/etcd:v3.5.16")
}

fn statefulset(image: &str) -> Result<()> {
    let store = Server::start(ServerKind::Concord)?;
    let cp = ControlPlane::start([store.endpoint()])?;
    let kubectl = cp.kubectl();
    let node = Node::start(cp.kubeconfig())?;
    kubectl.ok(["create", "namespace", NS])?;
    kubectl.apply(&manifest(image))?;

    // Running and Ready from /readyz; names resolve to the reported addresses.
    let pods = wait_all_ready(&kubectl, 3)?;
    for (name, _, ip) in &pods {
        let host = format!("{name}.concord.{NS}.svc");
        let resolved: Vec<IpAddr> = (host.as_str(), 2379)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .map(|a| a.ip())
            .collect();
        ensure!(
            resolved.iter().any(|a| a.to_string() == *ip),
            "{host} resolves to {resolved:?}, pod says {ip}"
        );
        ensure!(
            node.pod_ip(NS, name).map(|a| a.to_string()).as_deref() == Some(ip.as_str()),
            "node and pod status disagree on {name}'s address"
        );
    }

    // One cluster, formed through the DNS names.
    let members = etcdctl("c-2", &["member", "list"])?;
    for i in 0..3 {
        ensure!(
            members.contains(&format!("c-{i}, http://c-{i}.concord.{NS}.svc:2380")),
            "member list: {members}"
        );
    }
    etcdctl("c-0", &["put", "greeting", "hello"])?;
    ensure!(etcdctl("c-2", &["get", "greeting", "--print-value-only"])?.trim() == "hello");

    // Deleting a pod kills its process; the replacement uses the same PVC dir and rejoins.
    let pvc = node
        .pvc_dir(NS, "data-c-1")
        .context("no PVC dir for data-c-1")?;
    let data_ino = std::fs::metadata(pvc.join("data"))?.ino();
    let pid = *node
        .pod_pids(NS, "c-1")
        .get("concord")
        .context("no pid for c-1")?;
    ensure!(alive(pid));
    let old_uid = pods[1].1.clone();
    kubectl.ok(["delete", "pod", "c-1", "-n", NS, "--wait=false"])?;
    wait_until("c-1's process to end", Duration::from_secs(30), || {
        Ok((!alive(pid)).then_some(()))
    })?;
    let pods = wait_until("a new c-1, Ready", Duration::from_secs(120), || {
        let pods = ready_pods(&kubectl)?;
        Ok((pods.len() == 3 && pods[1].1 != old_uid).then_some(pods))
    })?;
    ensure!(node.pvc_dir(NS, "data-c-1").as_deref() == Some(pvc.as_path()));
    ensure!(
        std::fs::metadata(pvc.join("data"))?.ino() == data_ino,
        "c-1's data dir was recreated"
    );
    etcdctl("c-1", &["put", "after-restart", "yes"])?;
    ensure!(
        etcdctl(
            "c-1",
            &["get", "greeting", "--print-value-only", "--consistency=s"]
        )?
        .trim()
            == "hello"
    );
    ensure!(node.pod_ip(NS, "c-1").map(|a| a.to_string()) == Some(pods[1].2.clone()));

    // Scale to 0: every process ends. Back to 3: the data comes back from the PVC dirs.
    let pids: Vec<u32> = (0..3)
        .filter_map(|i| node.pod_pids(NS, &format!("c-{i}")).get("concord").copied())
        .collect();
    ensure!(pids.len() == 3, "pids: {pids:?}");
    kubectl.ok(["scale", "statefulset", "c", "-n", NS, "--replicas=0"])?;
    wait_until(
        "every member process to end",
        Duration::from_secs(60),
        || Ok(pids.iter().all(|&p| !alive(p)).then_some(())),
    )?;
    wait_until("no pods left", Duration::from_secs(60), || {
        let out = kubectl.ok(["get", "pods", "-n", NS, "-o", "name"])?;
        Ok(out.trim().is_empty().then_some(()))
    })?;
    kubectl.ok(["scale", "statefulset", "c", "-n", NS, "--replicas=3"])?;
    wait_all_ready(&kubectl, 3)?;
    for key in ["greeting", "after-restart"] {
        let v = etcdctl("c-0", &["get", key, "--print-value-only"])?;
        ensure!(!v.trim().is_empty(), "{key} lost after scale 0 -> 3");
    }

    // Dropping the node removes its /etc/hosts entries.
    drop(node);
    let hosts = std::fs::read_to_string("/etc/hosts")?;
    ensure!(
        !hosts.contains(&format!("concord.{NS}.svc")),
        "/etc/hosts still has the pods: {hosts}"
    );
    Ok(())
}
