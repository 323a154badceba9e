//! The environment of the operator's end-to-end scenarios, on either of two clusters:
//!
//! - **here** (default): a single concord member as the control plane's store, kube-apiserver and
//!   kube-controller-manager ([`super::ControlPlane`]), the stand-in kubelet ([`super::Node`]),
//!   and `concord-operator` as a local process with the admin kubeconfig (or, for the chart
//!   scenario, a ServiceAccount's);
//! - **a real cluster** (e.g. kind in a GitHub workflow): `CONCORD_E2E_KUBECONFIG` names its
//!   kubeconfig; nothing is started locally except, unless `CONCORD_E2E_OPERATOR=external` says
//!   the operator is already deployed in the cluster, the operator process. kubectl is
//!   `CONCORD_E2E_KUBECTL` (default `kubectl` on `PATH`). Members are then reached through
//!   `kubectl port-forward`, since pod DNS names do not resolve outside the cluster.
//!
//! Each [`E2e`] works in a namespace of its own (`e2e-<scenario>-<random>`), installs the CRD from
//! `crds/etcdcluster.yaml`, and on drop kills the operator, deletes the namespace (on a real
//! cluster) or tears the local control plane down.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::{ControlPlane, Kubectl, KubectlStream, Node, process};
use crate::server::{Server, ServerKind};

/// Path of the operator binary: `CONCORD_OPERATOR_BIN`, else `concord-operator` in the cargo
/// target profile dir of the running test (built by `cargo build --workspace --bins`).
pub fn operator_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CONCORD_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("concord-operator");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no concord-operator binary found next to {} (run `cargo build -p concord-operator`, or \
         set CONCORD_OPERATOR_BIN)",
        exe.display()
    )
}

/// The repository's root (the tests crate's parent dir).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Polls `check` every 250 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(
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
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running `concord-operator` process (killed on drop).
struct Operator {
    child: Child,
}

impl Drop for Operator {
    fn drop(&mut self) {
        process::signal_group(self.child.id(), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario's cluster, namespace and operator; see the module docs.
pub struct E2e {
    kubectl: Kubectl,
    namespace: String,
    dir: Option<tempfile::TempDir>,
    operator: Option<Operator>,
    operator_kubeconfig: PathBuf,
    external_operator: bool,
    real_cluster: bool,
    forwards: std::sync::Mutex<Vec<KubectlStream>>,
    // Local only; dropped in this order (node before control plane before store).
    node: Option<Node>,
    control_plane: Option<ControlPlane>,
    store: Option<Server>,
}

impl E2e {
    /// Starts (or connects to) the cluster, makes the scenario's namespace and installs the CRD.
    /// Does not start the operator (see [`E2e::start_operator`]).
    pub fn start(scenario: &str) -> Result<E2e> {
        let dir = tempfile::Builder::new()
            .prefix("concord-test-e2e-")
            .tempdir()?;
        let namespace = format!("e2e-{scenario}-{:06x}", crate::random_u64() & 0xff_ffff);
        let external_operator =
            std::env::var("CONCORD_E2E_OPERATOR").is_ok_and(|v| v == "external");
        let e2e = match std::env::var_os("CONCORD_E2E_KUBECONFIG") {
            Some(kubeconfig) => {
                let kubectl_bin = std::env::var_os("CONCORD_E2E_KUBECTL")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("kubectl"));
                let kubeconfig = PathBuf::from(kubeconfig);
                E2e {
                    kubectl: Kubectl::new(kubectl_bin, &kubeconfig),
                    namespace,
                    dir: Some(dir),
                    operator: None,
                    operator_kubeconfig: kubeconfig,
                    external_operator,
                    real_cluster: true,
                    forwards: Default::default(),
                    node: None,
                    control_plane: None,
                    store: None,
                }
            }
            None => {
                let store =
                    Server::start(ServerKind::Concord).context("the control plane's store")?;
                let cp = ControlPlane::start([store.endpoint()])?;
                let node = Node::start(cp.kubeconfig())?;
                E2e {
                    kubectl: cp.kubectl(),
                    namespace,
                    dir: Some(dir),
                    operator: None,
                    operator_kubeconfig: cp.kubeconfig(),
                    external_operator: false,
                    real_cluster: false,
                    forwards: Default::default(),
                    node: Some(node),
                    control_plane: Some(cp),
                    store: Some(store),
                }
            }
        };
        e2e.kubectl
            .ok(["create", "namespace", e2e.namespace.as_str()])?;
        let crd = std::fs::read_to_string(repo_root().join("crds/etcdcluster.yaml"))
            .context("reading crds/etcdcluster.yaml")?;
        e2e.kubectl.apply(&crd)?;
        e2e.kubectl.ok([
            "wait",
            "--for=condition=Established",
            "crd/etcdclusters.concord.dev",
            "--timeout=60s",
        ])?;
        Ok(e2e)
    }

    /// kubectl with the admin kubeconfig.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The scenario's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether this runs on a real cluster (`CONCORD_E2E_KUBECONFIG`).
    pub fn real_cluster(&self) -> bool {
        self.real_cluster
    }

    /// The stand-in node (local runs only).
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The local control plane (local runs only).
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.control_plane.as_ref()
    }

    /// The scenario's temp dir (operator log, port-forward output).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("dir lives as long as the environment")
    }

    /// The operator's log file.
    pub fn operator_log(&self) -> PathBuf {
        self.dir().join("concord-operator.log")
    }

    /// Uses `kubeconfig` for the operator from now on (e.g. a ServiceAccount's).
    pub fn set_operator_kubeconfig(&mut self, kubeconfig: impl Into<PathBuf>) {
        self.operator_kubeconfig = kubeconfig.into();
    }

    /// Starts the operator as a local process watching the scenario's namespace (no-op with
    /// `CONCORD_E2E_OPERATOR=external`).
    pub fn start_operator(&mut self) -> Result<()> {
        if self.external_operator {
            return Ok(());
        }
        if self.operator.is_some() {
            bail!("the operator is already running");
        }
        let bin = operator_bin()?;
        let log = self.operator_log();
        process::log_line(&log, "starting concord-operator");
        let mut cmd = process::command(&bin, &log)?;
        cmd.arg(format!(
            "--kubeconfig={}",
            self.operator_kubeconfig.display()
        ))
        .arg(format!("--namespace={}", self.namespace))
        .arg("--metrics-addr=127.0.0.1:0")
        .env_remove("KUBECONFIG")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let child = cmd.spawn().context("spawning concord-operator")?;
        self.operator = Some(Operator { child });
        Ok(())
    }

    /// `kill -9` of the local operator process.
    pub fn kill_operator(&mut self) -> Result<()> {
        if self.external_operator {
            bail!("the operator is external (CONCORD_E2E_OPERATOR=external): cannot kill it");
        }
        drop(
            self.operator
                .take()
                .context("the operator is not running")?,
        );
        Ok(())
    }

    /// The operator's log, last lines.
    pub fn operator_log_tail(&self, lines: usize) -> String {
        process::tail(&self.operator_log(), lines)
    }

    /// Applies a manifest in the scenario's namespace.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let out = self.kubectl.run_stdin(
            ["apply", "-n", self.namespace.as_str(), "-f", "-"],
            Some(manifest.as_bytes()),
        )?;
        if !out.success() {
            bail!("kubectl apply failed: {}{}", out.stderr, out.stdout);
        }
        Ok(out.stdout)
    }

    /// `kubectl -n <ns> <args>`, failing unless it exits 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.kubectl.ok(all)
    }

    /// One object of the namespace as JSON (`None` if it does not exist).
    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Value>> {
        let out = self.kubectl.run([
            "-n",
            self.namespace.as_str(),
            "get",
            kind,
            name,
            "-o",
            "json",
        ])?;
        if !out.success() {
            if out.stderr.contains("NotFound") {
                return Ok(None);
            }
            bail!("kubectl get {kind} {name}: {}", out.stderr);
        }
        Ok(Some(serde_json::from_str(&out.stdout)?))
    }

    /// Items of a list of `kind` in the namespace (with an optional label selector).
    pub fn list(&self, kind: &str, selector: Option<&str>) -> Result<Vec<Value>> {
        let mut args = vec!["-n", self.namespace.as_str(), "get", kind, "-o", "json"];
        if let Some(s) = selector {
            args.extend(["-l", s]);
        }
        let out = self.kubectl.ok(args)?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until the EtcdCluster `name` has condition `Available=True` with `members` voting
    /// members, all ready, and its StatefulSet has `members` replicas; returns its status.
    pub fn wait_available(&self, name: &str, members: i64, timeout: Duration) -> Result<Value> {
        wait_until(
            &format!("EtcdCluster {name} Available with {members} members"),
            timeout,
            || {
                let Some(c) = self.get("etcdcluster", name)? else {
                    return Ok(None);
                };
                let status = &c["status"];
                let available = status["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Available" && c["status"] == "True")
                });
                let sts_replicas = self
                    .get("statefulset", name)?
                    .and_then(|s| s["spec"]["replicas"].as_i64());
                let ok = available
                    && status["votingMembers"].as_i64() == Some(members)
                    && status["readyMembers"].as_i64() == Some(members)
                    && status["members"].as_array().map(Vec::len) == Some(members as usize)
                    && status["pendingOperation"].is_null()
                    && sts_replicas == Some(members);
                Ok(ok.then(|| status.clone()))
            },
        )
        .with_context(|| {
            format!(
                "operator log tail:\n{}",
                process::tail(&self.operator_log(), 30)
            )
        })
    }

    /// The client URL of member pod `pod` (of the headless Service `service`), reachable from
    /// this process: its DNS name here, a `kubectl port-forward` on a real cluster.
    pub fn member_endpoint(&self, service: &str, pod: &str) -> Result<String> {
        if !self.real_cluster {
            return Ok(format!(
                "http://{pod}.{service}.{}.svc:2379",
                self.namespace
            ));
        }
        let mut fwd = self.kubectl.spawn(
            [
                "-n",
                self.namespace.as_str(),
                "port-forward",
                &format!("pod/{pod}"),
                ":2379",
            ],
            self.dir(),
        )?;
        let line = fwd.wait_for_line(Duration::from_secs(30), |l| {
            l.starts_with("Forwarding from 127.0.0.1:")
        })?;
        let port = line
            .trim_start_matches("Forwarding from 127.0.0.1:")
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        self.forwards
            .lock()
            .map_err(|_| anyhow::anyhow!("forwards lock"))?
            .push(fwd);
        Ok(format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        self.operator.take();
        if let Ok(mut f) = self.forwards.lock() {
            f.clear();
        }
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "--- concord-operator log tail:\n{}",
                process::tail(&self.operator_log(), 40)
            );
        }
        if self.real_cluster {
            let _ = self.kubectl.run([
                "delete",
                "namespace",
                self.namespace.as_str(),
                "--wait=false",
            ]);
        }
        self.node.take();
        self.control_plane.take();
        self.store.take();
        process::finish_dir(self.dir.take(), "e2e", panicking);
    }
}
