//! A real Kubernetes control plane on this machine, for end-to-end tests.
//!
//! - [`ControlPlane`] starts kube-apiserver and kube-controller-manager 1.20.2 on loopback, backed
//!   by the etcd endpoints the test gives it (a concord or etcd cluster), with a CA and serving
//!   certificate made for the test, an admin token, RBAC, service-account signing keys and the
//!   Service range in loopback (`127.240.0.0/16`). It writes an admin kubeconfig, runs `kubectl`
//!   ([`Kubectl`]), makes kubeconfigs for ServiceAccount tokens, and kills both processes (their
//!   whole process groups) when dropped, also after a failed test.
//! - [`Node`] is a stand-in for a kubelet (there is no container runtime here): it registers a
//!   Node, binds unscheduled pods to it and runs each pod's container as a local process (concord,
//!   or the real etcd when the image says so) on its own `127.x` address, with the container's
//!   command, args and env, per-PVC data dirs, readiness/liveness probes and pod DNS names in
//!   `/etc/hosts`.
//!
//! The binaries are built once by `tests/k8s/build-control-plane.sh` (called by
//! `scripts/install-test-deps.sh`) and cached outside the repo:
//!
//! | binary | default | override |
//! |---|---|---|
//! | kube-apiserver, kube-controller-manager, kubectl 1.20.2 | `/var/cache/concord-test/kubernetes-1.20.2/bin/` | `KUBERNETES_BIN_DIR` |
//!
//! Every process started here listens and connects on loopback addresses only.

mod certs;
mod control_plane;
pub mod e2e;
pub mod expand;
pub mod hosts;
mod node;
mod pod;
mod process;

pub use control_plane::{
    ControlPlane, ControlPlaneBuilder, Kubectl, KubectlOutput, KubectlStream,
    SERVICE_CLUSTER_IP_RANGE,
};

pub use node::{Node, NodeBuilder};

use std::path::PathBuf;

/// The Kubernetes version the control plane is built from (Debian bookworm's source package).
pub const KUBERNETES_VERSION: &str = "1.20.2";

/// Default directory of the cached control-plane binaries (see `tests/k8s/build-control-plane.sh`).
pub const KUBERNETES_DEFAULT_BIN_DIR: &str = "/var/cache/concord-test/kubernetes-1.20.2/bin";

/// Directory holding `kube-apiserver`, `kube-controller-manager` and `kubectl`
/// (`KUBERNETES_BIN_DIR` or the default).
pub fn kubernetes_bin_dir() -> PathBuf {
    std::env::var_os("KUBERNETES_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KUBERNETES_DEFAULT_BIN_DIR))
}

/// Path of one control-plane binary, checked to exist.
pub fn kubernetes_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = kubernetes_bin_dir().join(name);
    if !path.is_file() {
        anyhow::bail!(
            "{} does not exist (run tests/k8s/build-control-plane.sh as root, or \
             scripts/install-test-deps.sh; override: KUBERNETES_BIN_DIR)",
            path.display()
        );
    }
    Ok(path)
}

/// Whether `CONCORD_TEST_KEEP_DIRS` asks to keep temp dirs (logs, data) after a test.
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("CONCORD_TEST_KEEP_DIRS").is_some_and(|v| v != "0")
}
