//! Against a real kube-apiserver 1.20 (the tests crate's control plane): the CRD, every manifest
//! in `deploy/` and the chart's rendered output are accepted (the CRD and namespace for real,
//! the rest by server-side dry-run, which runs admission and validation), and the operator's
//! leader election: a second replica waits while the first holds the Lease, SIGTERM makes the
//! holder exit 0 and release it, and the waiting replica takes over.
//!
//! Needs the control-plane binaries (`scripts/install-test-deps.sh`); `serial` in the name keeps
//! it alone on the machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use concord_tests::k8s::{ControlPlane, Kubectl};
use concord_tests::{Server, ServerKind};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dry_run(kubectl: &Kubectl, file: &Path) -> Result<()> {
    let out = kubectl.run([
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=packaging-test",
        "-f",
        file.to_str().unwrap(),
    ])?;
    ensure!(
        out.success(),
        "{} rejected: {}{}",
        file.display(),
        out.stderr,
        out.stdout
    );
    Ok(())
}

fn wait_until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(90) {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(kubeconfig: &Path, identity: &str, dir: &Path) -> Result<Operator> {
        let log = dir.join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_concord-operator"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "--namespace=default",
                "--metrics-addr=127.0.0.1:0",
                "--leader-election",
                "--leader-election-namespace=default",
                "--lease-duration-seconds=4",
                &format!("--identity={identity}"),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(Operator { child, log })
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(st.success());
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("operator ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn k8s_packaging_and_leader_election_serial() -> Result<()> {
    let store = Server::start(ServerKind::Etcd35)?;
    let cp = ControlPlane::builder([store.endpoint()])
        .without_controller_manager()
        .start()?;
    let kubectl = cp.kubectl();
    let root = repo();

    // The CRD for real (the examples need it), then the operator's namespace.
    kubectl.ok([
        "apply",
        "--server-side",
        "-f",
        root.join("crds/etcdcluster.yaml").to_str().unwrap(),
    ])?;
    kubectl.ok([
        "wait",
        "--for=condition=established",
        "crd/etcdclusters.concord.dev",
        "--timeout=60s",
    ])?;
    kubectl.ok([
        "apply",
        "-f",
        root.join("deploy/00-namespace.yaml").to_str().unwrap(),
    ])?;
    for f in [
        "deploy/01-crd.yaml",
        "deploy/02-rbac.yaml",
        "deploy/03-operator.yaml",
        "deploy/examples/etcdcluster-3.yaml",
        "deploy/examples/etcdcluster-1-emptydir.yaml",
        "deploy/examples/etcdcluster-3-tls.yaml",
    ] {
        dry_run(&kubectl, &root.join(f))?;
    }

    // The chart's rendered output (helm-python-sdk), when the tool is installed.
    let python = std::env::var_os("CONCORD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/concord-test"))
        .join("py/bin/python");
    if python.is_file() {
        let out = Command::new(&python)
            .arg(root.join("operator/tests/helm_render.py"))
            .arg(root.join("charts/concord-operator"))
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        kubectl.ok(["create", "namespace", "apps"])?;
        for (case, render) in got["renders"].as_object().unwrap() {
            let all: Vec<&str> = render
                .as_object()
                .unwrap()
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            let file = cp.dir().join(format!("chart-{case}.yaml"));
            std::fs::write(&file, all.join("\n---\n"))?;
            dry_run(&kubectl, &file).with_context(|| format!("chart case {case}"))?;
        }
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("{} missing under CI=true", python.display());
    } else {
        eprintln!(
            "skipping the chart dry-run: {} not installed",
            python.display()
        );
    }

    // Leader election: `a` takes the Lease, `b` waits; SIGTERM on `a` releases it to `b`.
    let holder = || -> Result<String> {
        let out = kubectl.run([
            "get",
            "lease",
            "concord-operator",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?;
        Ok(if out.success() {
            out.stdout.trim().to_owned()
        } else {
            String::new()
        })
    };
    let mut a = Operator::start(&cp.kubeconfig(), "replica-a", cp.dir())?;
    wait_until("replica-a to hold the lease", || {
        Ok(holder()? == "replica-a")
    })
    .with_context(|| a.log())?;
    let mut b = Operator::start(&cp.kubeconfig(), "replica-b", cp.dir())?;
    wait_until("replica-b to wait for the lease", || {
        Ok(b.log().contains("waiting for the leader lease"))
    })?;
    ensure!(
        !b.log().contains("acquired the leader lease"),
        "two leaders:\n{}",
        b.log()
    );
    let status = a.terminate()?;
    ensure!(status.success(), "replica-a exited {status}:\n{}", a.log());
    ensure!(a.log().contains("stopped"), "{}", a.log());
    wait_until("replica-b to take over", || Ok(holder()? == "replica-b"))
        .with_context(|| b.log())?;
    wait_until("replica-b to log its takeover", || {
        Ok(b.log().contains("acquired the leader lease"))
    })?;
    let status = b.terminate()?;
    ensure!(status.success(), "replica-b exited {status}:\n{}", b.log());
    ensure!(holder()?.is_empty(), "lease not released on shutdown");
    Ok(())
}
