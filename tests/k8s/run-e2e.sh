#!/usr/bin/env bash
# Runs the whole Kubernetes end-to-end matrix on this machine, one test at a time:
#
#   tests/k8s/run-e2e.sh [extra nextest args, e.g. a filter such as `operator`]
#
# - k8s_control_plane: the control plane harness (kube-apiserver + controller-manager 1.20.2 on
#   one concord member);
# - k8s_on_concord: Kubernetes on a 3-member concord cluster, and the same on etcd 3.5.16;
# - k8s_node: the stand-in kubelet on a StatefulSet of concord pods, and of etcd 3.5 pods;
# - k8s_operator: the operator's scenarios with the concord image and the etcd 3.5 image.
#
# CI (scripts/test.sh) runs the tests that are not `#[ignore]`d; this script adds the ignored
# ones (`--run-ignored all`): the etcd 3.5 reference runs and the longer operator scenarios.
#
# Builds the control plane once (tests/k8s/build-control-plane.sh, ~5 minutes the first time;
# needs root then), then concord and concord-operator. With CONCORD_E2E_KUBECONFIG set, the
# operator scenarios run against that cluster instead (kind; see tests/src/k8s/e2e.rs) and the
# local-only binaries (k8s_control_plane, k8s_on_concord, k8s_node) still run here.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "control plane binaries (cached after the first build)"
bash tests/k8s/build-control-plane.sh

step "cargo build (concord, concord-operator, tests)"
cargo build -p concord-store --bin concord -p concord-operator --bin concord-operator
cargo build -p concord-tests --tests

tests=(--test k8s_control_plane --test k8s_on_concord --test k8s_node --test k8s_operator)
step "e2e matrix"
start=$(date +%s)
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run -p concord-tests "${tests[@]}" --run-ignored all --test-threads=1 \
        --no-fail-fast "$@"
else
    cargo test -p concord-tests "${tests[@]}" -- --include-ignored --test-threads=1 "$@"
fi
step "e2e matrix took $(($(date +%s) - start)) s"
