//! The stand-in node: what a kubelet (and the scheduler, for its one node) would do, for pods whose
//! containers can run as local processes.
//!
//! A [`Node`] registers a Node object (Ready, address `127.0.0.1`) and, in a thread of its own,
//! polls the pods of every namespace (level-triggered, so a restarted apiserver or a missed event
//! changes nothing):
//!
//! - binds each unscheduled pod of the default scheduler to itself (`pods/binding`), unless one of
//!   its PersistentVolumeClaims is missing or being deleted (the 1.20 scheduler's volume binding
//!   check: such a pod stays Pending, so it does not hold a terminating claim);
//! - gives each of its pods a fresh `127.x` address (reported as `podIP`), resolves the pod's
//!   volumes (a PersistentVolumeClaim is a dir per claim UID that outlives the pod; emptyDir, and
//!   ConfigMap and Secret files, a per-pod dir removed with the pod), runs init containers to
//!   completion and then each container as a process (see [`super::pod`]), restarting exited
//!   ones with back-off and ones failing their liveness probe;
//! - reports the pod `Running` with `Ready` and `ContainersReady` from the readiness probes;
//! - publishes `<hostname>.<subdomain>.<namespace>.svc[.cluster.local]` (and the shorter forms
//!   and the bare hostname) for each pod with an address in its block of `/etc/hosts`, as soon
//!   as the pod has an address (like a headless Service with `publishNotReadyAddresses`);
//! - when a pod gets a `deletionTimestamp` (or vanishes), stops its processes (SIGTERM, then
//!   SIGKILL after the grace period, at most 5 s) and finalises the deletion with grace 0.
//!
//! Dropping the [`Node`] kills every process, removes its `/etc/hosts` block and deletes the
//! Node object. Process output goes to `<dir>/logs/<namespace>_<pod>_<container>.log`, node events
//! to `<dir>/node.log`; the dir is kept after a panic or with `CONCORD_TEST_KEEP_DIRS=1`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Node as NodeObject, ObjectReference, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::hosts::HostsBlock;
use super::pod::{self, ContainerRun, PodContext, now_rfc3339};
use super::process;
use crate::server::LoopbackIp;

/// Builder for a [`Node`]; see [`Node::builder`].
#[must_use]
pub struct NodeBuilder {
    kubeconfig: PathBuf,
    name: String,
    poll: Duration,
}

impl NodeBuilder {
    /// Node name (default `concord-test-node-<random>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How often pods are listed and probed (default 500 ms).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Registers the Node and starts serving pods.
    pub fn start(self) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("concord-test-node-")
            .tempdir()
            .context("creating the node's temp dir")?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ctx = NodeCtx {
            name: self.name.clone(),
            kubeconfig: self.kubeconfig,
            root: dir.path().to_owned(),
            poll: self.poll,
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("node-{}", self.name))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(run(ctx, ready_tx, stop_rx));
            })
            .context("spawning the node thread")?;
        let mut node = Node {
            name: self.name,
            dir: Some(dir),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(node),
            Ok(Err(e)) => {
                node.shutdown();
                Err(e.context("starting the stand-in node"))
            }
            Err(_) => {
                node.shutdown();
                anyhow::bail!("the stand-in node did not register within 60 s")
            }
        }
    }
}

/// What tests may ask a running node.
#[derive(Default)]
struct Shared {
    /// (namespace, pod) -> address of its current instance.
    pod_ips: HashMap<(String, String), Ipv4Addr>,
    /// (namespace, claim) -> host dir of the claim's current UID.
    pvc_dirs: HashMap<(String, String), PathBuf>,
    /// (namespace, pod) -> container -> pid of the running process.
    pids: HashMap<(String, String), BTreeMap<String, u32>>,
}

/// A running stand-in node; see the module docs. Dropping it stops everything it runs.
pub struct Node {
    name: String,
    dir: Option<tempfile::TempDir>,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// A builder for a node that talks to the apiserver with `kubeconfig` (it needs to bind,
    /// patch and delete pods, read ConfigMaps, Secrets and PVCs, and manage its Node object: the
    /// admin kubeconfig of [`super::ControlPlane`] does).
    pub fn builder(kubeconfig: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            kubeconfig: kubeconfig.into(),
            name: format!("concord-test-node-{:06x}", crate::random_u64() & 0xff_ffff),
            poll: Duration::from_millis(500),
        }
    }

    /// Starts a node with default settings.
    pub fn start(kubeconfig: impl Into<PathBuf>) -> Result<Node> {
        Node::builder(kubeconfig).start()
    }

    /// The Node object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's dir (logs, volumes).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("dir lives as long as the node")
    }

    /// The log file of one container of a pod (appended to across restarts and pod instances).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.dir()
            .join("logs")
            .join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// The last lines of a container's log.
    pub fn container_log_tail(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        lines: usize,
    ) -> String {
        process::tail(&self.container_log(namespace, pod, container), lines)
    }

    /// The address of the current instance of a pod, once it has one.
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Option<Ipv4Addr> {
        let s = self.shared.lock().expect("node state lock");
        s.pod_ips
            .get(&(namespace.to_owned(), pod.to_owned()))
            .copied()
    }

    /// The host dir backing a PersistentVolumeClaim, once a pod of this node has used it.
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> Option<PathBuf> {
        let s = self.shared.lock().expect("node state lock");
        s.pvc_dirs
            .get(&(namespace.to_owned(), claim.to_owned()))
            .cloned()
    }

    /// Process ids of a pod's running containers (by container name).
    pub fn pod_pids(&self, namespace: &str, pod: &str) -> BTreeMap<String, u32> {
        let s = self.shared.lock().expect("node state lock");
        s.pids
            .get(&(namespace.to_owned(), pod.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
        let panicking = std::thread::panicking();
        if panicking && let Some(dir) = &self.dir {
            eprintln!(
                "--- stand-in node {} log tail:\n{}",
                self.name,
                process::tail(&dir.path().join("node.log"), 30)
            );
        }
        process::finish_dir(self.dir.take(), "stand-in node", panicking);
    }
}

struct NodeCtx {
    name: String,
    kubeconfig: PathBuf,
    root: PathBuf,
    poll: Duration,
    shared: Arc<Mutex<Shared>>,
}

impl NodeCtx {
    fn log(&self, line: &str) {
        process::log_line(
            &self.root.join("node.log"),
            &format!("{} {line}", now_rfc3339()),
        );
    }
}

/// One pod instance (by UID) this node runs.
struct PodRun {
    namespace: String,
    name: String,
    ip: LoopbackIp,
    dir: PathBuf,
    dns_names: Vec<String>,
    init: Vec<ContainerRun>,
    containers: Vec<ContainerRun>,
    restart_always: bool,
    start_time: String,
    ready_since: Option<(bool, String)>,
    last_status: Option<serde_json::Value>,
    grace: Duration,
}

async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

async fn register(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let node = NodeObject {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    if nodes.get_opt(name).await?.is_none() {
        nodes.create(&PostParams::default(), &node).await?;
    }
    let now = now_rfc3339();
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "concord-tests stand-in node", "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
            "containerRuntimeVersion": "concord-tests://stand-in", "kubeletVersion": "v1.20.2",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn run(
    ctx: NodeCtx,
    ready: std::sync::mpsc::Sender<Result<()>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let setup = async {
        let client = client_for(&ctx.kubeconfig).await?;
        register(&client, &ctx.name).await?;
        let hosts = HostsBlock::new(&ctx.name)?;
        Ok::<_, anyhow::Error>((client, hosts))
    };
    let (client, hosts) = match setup.await {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    ctx.log(&format!("registered node {}", ctx.name));
    let mut pods: HashMap<String, PodRun> = HashMap::new();
    let mut hosts_entries: Vec<(Ipv4Addr, Vec<String>)> = Vec::new();
    let mut last_error = String::new();
    loop {
        if let Err(e) = tick(&ctx, &client, &mut pods).await {
            let msg = format!("{e:#}");
            if msg != last_error {
                ctx.log(&format!("error: {msg}"));
                last_error = msg;
            }
        } else {
            last_error.clear();
        }
        let mut entries: Vec<(Ipv4Addr, Vec<String>)> = pods
            .values()
            .map(|p| (p.ip.ip(), p.dns_names.clone()))
            .collect();
        entries.sort();
        if entries != hosts_entries {
            match hosts.set(&entries) {
                Ok(()) => hosts_entries = entries,
                Err(e) => ctx.log(&format!("error: updating /etc/hosts: {e:#}")),
            }
        }
        publish(&ctx, &pods);
        tokio::select! {
            _ = tokio::time::sleep(ctx.poll) => {}
            _ = &mut stop => break,
        }
    }
    ctx.log("shutting down");
    for (_, mut p) in pods.drain() {
        for c in p.init.iter_mut().chain(p.containers.iter_mut()) {
            c.stop(Duration::ZERO).await;
        }
    }
    drop(hosts);
    let nodes: Api<NodeObject> = Api::all(client);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        nodes.delete(&ctx.name, &DeleteParams::default()),
    )
    .await;
}

fn publish(ctx: &NodeCtx, pods: &HashMap<String, PodRun>) {
    let mut s = ctx.shared.lock().expect("node state lock");
    s.pod_ips = pods
        .values()
        .map(|p| ((p.namespace.clone(), p.name.clone()), p.ip.ip()))
        .collect();
    s.pids = pods
        .values()
        .map(|p| {
            let pids = p
                .containers
                .iter()
                .filter_map(|c| c.pid.map(|pid| (c.plan.name.clone(), pid)))
                .collect();
            ((p.namespace.clone(), p.name.clone()), pids)
        })
        .collect();
}

async fn tick(
    ctx: &NodeCtx,
    client: &kube::Client,
    runs: &mut HashMap<String, PodRun>,
) -> Result<()> {
    let all: Api<Pod> = Api::all(client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .context("listing pods")?;
    let mut seen = HashSet::new();
    for pod in list.items {
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        ) else {
            continue;
        };
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if spec.node_name.is_none() {
            let scheduler = spec
                .scheduler_name
                .as_deref()
                .unwrap_or("default-scheduler");
            if !deleting && scheduler == "default-scheduler" {
                match unschedulable_claim(client, &ns, spec).await? {
                    None => bind(ctx, client, &ns, &name).await?,
                    Some(why) => ctx.log(&format!("not binding {ns}/{name}: {why}")),
                }
            }
            continue;
        }
        if spec.node_name.as_deref() != Some(ctx.name.as_str()) {
            continue;
        }
        seen.insert(uid.clone());
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if deleting {
            if let Some(mut run) = runs.remove(&uid) {
                ctx.log(&format!("stopping {ns}/{name} ({uid}): deleted"));
                stop_pod(&mut run).await;
            }
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match pods.delete(&name, &dp).await {
                Ok(_) => ctx.log(&format!("finalised deletion of {ns}/{name} ({uid})")),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e).context(format!("deleting {ns}/{name}")),
            }
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !runs.contains_key(&uid) {
            if matches!(phase, Some("Succeeded") | Some("Failed")) {
                continue;
            }
            match start_pod(ctx, client, &pod).await {
                Ok(run) => {
                    ctx.log(&format!("started {ns}/{name} ({uid}) on {}", run.ip.ip()));
                    runs.insert(uid.clone(), run);
                    // Its processes start on the next tick, once `/etc/hosts` has its names
                    // (servers resolve their own advertised URLs when they start).
                    continue;
                }
                Err(e) => {
                    ctx.log(&format!("cannot start {ns}/{name} yet: {e:#}"));
                    continue;
                }
            }
        }
        let run = runs.get_mut(&uid).expect("inserted above");
        supervise(ctx, run).await;
        let status = pod_status(run);
        if run.last_status.as_ref() != Some(&status) {
            let patch = json!({ "status": status });
            match pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => run.last_status = Some(status),
                Err(e) => ctx.log(&format!("status of {ns}/{name}: {e}")),
            }
        }
    }
    // Pods that vanished without passing through a deletionTimestamp we saw.
    let gone: Vec<String> = runs
        .keys()
        .filter(|u| !seen.contains(*u))
        .cloned()
        .collect();
    for uid in gone {
        if let Some(mut run) = runs.remove(&uid) {
            ctx.log(&format!(
                "stopping {}/{} ({uid}): gone",
                run.namespace, run.name
            ));
            stop_pod(&mut run).await;
        }
    }
    Ok(())
}

/// Why the scheduler would not place a pod with these volumes: a PersistentVolumeClaim that does
/// not exist or is being deleted.
async fn unschedulable_claim(
    client: &kube::Client,
    ns: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<Option<String>> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for v in spec.volumes.iter().flatten() {
        let Some(pvc) = &v.persistent_volume_claim else {
            continue;
        };
        match claims.get_opt(&pvc.claim_name).await? {
            None => {
                return Ok(Some(format!(
                    "persistentvolumeclaim \"{}\" not found",
                    pvc.claim_name
                )));
            }
            Some(c) if c.metadata.deletion_timestamp.is_some() => {
                return Ok(Some(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    pvc.claim_name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(None)
}

async fn bind(ctx: &NodeCtx, client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(ctx.name.clone()),
            ..Default::default()
        },
    };
    match pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {
            ctx.log(&format!("bound {ns}/{name}"));
            Ok(())
        }
        // Already bound (a race with ourselves) or gone.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(e) => Err(e).context(format!("binding {ns}/{name}")),
    }
}

/// Writes `data` as files in `dir` (only `items` when given), as the kubelet projects ConfigMap
/// and Secret volumes.
fn write_files(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<(String, Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
        None => data.into_iter().collect(),
    };
    for (path, value) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, value).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

async fn start_pod(ctx: &NodeCtx, client: &kube::Client, pod: &Pod) -> Result<PodRun> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    let dir = ctx.root.join("pods").join(format!("{ns}_{name}_{uid}"));
    std::fs::create_dir_all(&dir)?;

    // Volumes.
    let mut volumes = HashMap::new();
    let mut pvc_dirs = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let vdir = dir.join("volumes").join(&v.name);
        let host = if let Some(pvc) = &v.persistent_volume_claim {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let claim = claims.get_opt(&pvc.claim_name).await?.with_context(|| {
                format!("PersistentVolumeClaim {ns}/{} not found", pvc.claim_name)
            })?;
            if claim.metadata.deletion_timestamp.is_some() {
                anyhow::bail!(
                    "PersistentVolumeClaim {ns}/{} is being deleted",
                    pvc.claim_name
                );
            }
            let claim_uid = claim.metadata.uid.unwrap_or_default();
            let d = ctx
                .root
                .join("pvc")
                .join(&ns)
                .join(format!("{}-{claim_uid}", pvc.claim_name));
            std::fs::create_dir_all(&d)?;
            pvc_dirs.push(((ns.clone(), pvc.claim_name.clone()), d.clone()));
            d
        } else if let Some(cm) = &v.config_map {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            match cms.get_opt(&cm.name).await? {
                Some(obj) => {
                    let mut data: BTreeMap<String, Vec<u8>> = obj
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    for (k, v) in obj.binary_data.unwrap_or_default() {
                        data.insert(k, v.0);
                    }
                    write_files(&vdir, data, cm.items.as_ref())?;
                }
                None if cm.optional == Some(true) => std::fs::create_dir_all(&vdir)?,
                None => anyhow::bail!("ConfigMap {ns}/{} not found", cm.name),
            }
            vdir
        } else if let Some(sec) = &v.secret {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let sname = sec.secret_name.clone().unwrap_or_default();
            match secrets.get_opt(&sname).await? {
                Some(obj) => {
                    let data = obj
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    write_files(&vdir, data, sec.items.as_ref())?;
                }
                None if sec.optional == Some(true) => std::fs::create_dir_all(&vdir)?,
                None => anyhow::bail!("Secret {ns}/{sname} not found"),
            }
            vdir
        } else {
            // emptyDir, and anything else (projected, downwardAPI): an empty per-pod dir.
            std::fs::create_dir_all(&vdir)?;
            vdir
        };
        volumes.insert(v.name.clone(), host);
    }

    let ip = LoopbackIp::claim()?;
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    let mut dns_names = Vec::new();
    if let Some(sub) = spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        let fq = format!("{hostname}.{sub}.{ns}.svc");
        dns_names.push(format!("{fq}.cluster.local"));
        dns_names.push(fq);
        dns_names.push(format!("{hostname}.{sub}.{ns}"));
        dns_names.push(format!("{hostname}.{sub}"));
    }
    dns_names.push(hostname.clone());

    let pctx = PodContext {
        pod,
        ip: ip.ip(),
        node_name: &ctx.name,
        hostname,
        volumes,
        pod_dir: dir.clone(),
        log_dir: ctx.root.join("logs"),
    };
    let mut init = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        init.push(ContainerRun::new(
            pod::plan_container(client, &pctx, c).await?,
        ));
    }
    let mut containers = Vec::new();
    for c in &spec.containers {
        containers.push(ContainerRun::new(
            pod::plan_container(client, &pctx, c).await?,
        ));
    }
    {
        let mut s = ctx.shared.lock().expect("node state lock");
        s.pvc_dirs.extend(pvc_dirs);
    }
    Ok(PodRun {
        namespace: ns,
        name,
        ip,
        dir,
        dns_names,
        init,
        containers,
        restart_always: spec.restart_policy.as_deref().unwrap_or("Always") == "Always",
        start_time: now_rfc3339(),
        ready_since: None,
        last_status: None,
        grace: Duration::from_secs(
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .clamp(0, 5) as u64,
        ),
    })
}

async fn stop_pod(run: &mut PodRun) {
    let grace = run.grace;
    let mut stops = Vec::new();
    for c in run.init.iter_mut().chain(run.containers.iter_mut()) {
        stops.push(c.stop(grace));
    }
    futures::future::join_all(stops).await;
    let _ = std::fs::remove_dir_all(&run.dir);
}

/// Advances a pod: init containers in order, then the containers; restarts, probes.
async fn supervise(ctx: &NodeCtx, run: &mut PodRun) {
    let now = Instant::now();
    let label = format!("{}/{}", run.namespace, run.name);
    // Init containers, one at a time.
    if let Some(c) = run.init.iter_mut().find(|c| !c.completed) {
        if let Some(code) = c.reap() {
            if code == 0 {
                c.completed = true;
                ctx.log(&format!(
                    "{label}: init container {} completed",
                    c.plan.name
                ));
            } else {
                c.restart_count += 1;
                c.next_start = now + c.backoff();
                ctx.log(&format!(
                    "{label}: init container {} exited {code}",
                    c.plan.name
                ));
            }
        } else if c.child.is_none()
            && now >= c.next_start
            && let Err(e) = c.start()
        {
            ctx.log(&format!("{label}: init container {}: {e:#}", c.plan.name));
            c.next_start = now + Duration::from_secs(5);
        }
        return;
    }
    for c in &mut run.containers {
        if let Some(code) = c.reap() {
            ctx.log(&format!("{label}: container {} exited {code}", c.plan.name));
            if run.restart_always || code != 0 {
                c.restart_count += 1;
                c.next_start = now + c.backoff();
            } else {
                c.completed = true;
            }
        }
        if c.child.is_none() && !c.completed && now >= c.next_start {
            if let Err(e) = c.start() {
                ctx.log(&format!("{label}: container {}: {e:#}", c.plan.name));
                c.next_start = now + Duration::from_secs(5);
            } else if c.restart_count > 0 {
                ctx.log(&format!(
                    "{label}: restarted container {} (restart {})",
                    c.plan.name, c.restart_count
                ));
            }
        }
    }
    // Probes, concurrently.
    let mut checks = Vec::new();
    for (i, c) in run.containers.iter().enumerate() {
        if c.child.is_none() {
            continue;
        }
        // (probe, is liveness)
        let due = [
            (&c.plan.readiness, c.next_readiness, false),
            (&c.plan.liveness, c.next_liveness, true),
        ];
        for (probe, next, liveness) in due {
            if let Some(p) = probe
                && now >= next
            {
                let p = p.clone();
                checks.push(async move { (i, liveness, p.run().await) });
            }
        }
    }
    let results = futures::future::join_all(checks).await;
    let now = Instant::now();
    for (i, liveness, ok) in results {
        let c = &mut run.containers[i];
        if liveness {
            let p = c.plan.liveness.clone().expect("probed");
            c.next_liveness = now + p.period;
            if ok {
                c.liveness_failures = 0;
            } else {
                c.liveness_failures += 1;
                if c.liveness_failures >= p.failure_threshold {
                    ctx.log(&format!(
                        "{label}: container {} failed liveness {} times: restarting",
                        c.plan.name, c.liveness_failures
                    ));
                    c.stop(Duration::from_secs(2)).await;
                    c.last_exit = Some((137, now_rfc3339()));
                    c.restart_count += 1;
                    c.next_start = Instant::now();
                }
            }
        } else {
            let p = c.plan.readiness.clone().expect("probed");
            c.next_readiness = now + p.period;
            if ok {
                c.readiness_failures = 0;
                if !c.ready {
                    ctx.log(&format!("{label}: container {} ready", c.plan.name));
                }
                c.ready = true;
            } else {
                c.readiness_failures += 1;
                if c.ready && c.readiness_failures >= p.failure_threshold {
                    ctx.log(&format!("{label}: container {} not ready", c.plan.name));
                    c.ready = false;
                }
            }
        }
    }
    // No readiness probe: ready while running.
    for c in &mut run.containers {
        if c.plan.readiness.is_none() {
            c.ready = c.child.is_some();
        }
    }
}

fn container_status(c: &ContainerRun) -> serde_json::Value {
    let state = match (&c.child, &c.started_at, &c.last_exit) {
        (Some(_), Some(t), _) => json!({"running": {"startedAt": t}}),
        (None, _, Some((code, at))) if c.completed => {
            json!({"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" }, "finishedAt": at}})
        }
        (None, _, Some(_)) => json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let last = match &c.last_exit {
        Some((code, at)) if c.child.is_some() || !c.completed => {
            json!({"terminated": {"exitCode": code, "reason": "Error", "finishedAt": at}})
        }
        _ => json!({}),
    };
    json!({
        "name": c.plan.name,
        "image": c.plan.image,
        "imageID": "",
        "containerID": c.pid.map(|p| format!("concord-test://{p}")),
        "ready": c.ready,
        "started": c.child.is_some(),
        "restartCount": c.restart_count,
        "state": state,
        "lastState": last,
    })
}

/// The pod's status as the kubelet would report it.
fn pod_status(run: &mut PodRun) -> serde_json::Value {
    let initialized = run.init.iter().all(|c| c.completed);
    let ready = initialized && run.containers.iter().all(|c| c.ready);
    let transition = match &run.ready_since {
        Some((r, t)) if *r == ready => t.clone(),
        _ => {
            let t = now_rfc3339();
            run.ready_since = Some((ready, t.clone()));
            t
        }
    };
    let b = |v: bool| if v { "True" } else { "False" };
    let ip = run.ip.ip().to_string();
    let running = initialized && run.containers.iter().any(|c| c.child.is_some());
    let all_done = initialized && run.containers.iter().all(|c| c.completed);
    let phase = if all_done {
        "Succeeded"
    } else if running {
        "Running"
    } else {
        "Pending"
    };
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": run.start_time,
        "conditions": [
            {"type": "Initialized", "status": b(initialized), "lastProbeTime": null, "lastTransitionTime": run.start_time},
            {"type": "Ready", "status": b(ready), "lastProbeTime": null, "lastTransitionTime": transition},
            {"type": "ContainersReady", "status": b(ready), "lastProbeTime": null, "lastTransitionTime": transition},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": run.start_time},
        ],
        "initContainerStatuses": run.init.iter().map(container_status).collect::<Vec<_>>(),
        "containerStatuses": run.containers.iter().map(container_status).collect::<Vec<_>>(),
    })
}
