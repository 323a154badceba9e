//! The Kubernetes control plane harness itself: kube-apiserver 1.20.2 with a token and RBAC on a
//! single concord member, `/readyz`, and kubectl creating and reading a namespace and a
//! ConfigMap; an unauthenticated request is refused. The test name contains `serial` (several
//! processes), so nextest runs it alone.

use anyhow::{Result, ensure};
use concord_tests::k8s::ControlPlane;
use concord_tests::{Server, ServerKind};

#[test]
fn k8s_control_plane_on_concord_serial() -> Result<()> {
    let store = Server::start(ServerKind::Concord)?;
    let cp = ControlPlane::builder([store.endpoint()]).start()?;
    let kubectl = cp.kubectl();

    ensure!(kubectl.ok(["get", "--raw", "/readyz"])?.trim() == "ok");
    kubectl.ok(["create", "namespace", "cp-smoke"])?;
    kubectl.ok([
        "create",
        "configmap",
        "greeting",
        "-n",
        "cp-smoke",
        "--from-literal=hello=concord",
    ])?;
    let got = kubectl.ok([
        "get",
        "configmap",
        "greeting",
        "-n",
        "cp-smoke",
        "-o",
        "jsonpath={.data.hello}",
    ])?;
    ensure!(got == "concord", "configmap data: {got:?}");
    let phase = kubectl.ok([
        "get",
        "namespace",
        "cp-smoke",
        "-o",
        "jsonpath={.status.phase}",
    ])?;
    ensure!(phase == "Active", "namespace phase: {phase:?}");

    // The objects are really in the store under /registry.
    let keys = concord_tests::Etcdctl::V35
        .run(
            &store.endpoint(),
            [
                "get",
                "/registry/configmaps/cp-smoke/greeting",
                "--keys-only",
            ],
            None,
        )?
        .stdout_text();
    ensure!(
        keys.contains("/registry/configmaps/cp-smoke/greeting"),
        "configmap not stored in concord: {keys:?}"
    );

    // RBAC: a token the apiserver does not know is refused.
    let bogus = cp.dir().join("bogus.kubeconfig");
    std::fs::write(
        &bogus,
        std::fs::read_to_string(cp.kubeconfig())?.replace(cp.admin_token(), "not-a-token"),
    )?;
    let denied = cp.kubectl_with(&bogus).run(["get", "namespaces"])?;
    ensure!(
        !denied.success() && denied.stderr.contains("Unauthorized"),
        "unknown token not refused: {denied:?}"
    );
    Ok(())
}
