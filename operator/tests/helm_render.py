"""Renders and lints charts/concord-operator with PyPI's helm-python-sdk (Helm 4's Go SDK, no
helm binary) and prints one JSON document for operator/tests/packaging.rs:

    {"lint": <lint report>, "renders": {"<case>": {"<template>": "<yaml>"}}, "crds": [...]}

Usage: python helm_render.py <chart dir>
"""

import json
import sys

import helm_python as helm

CASES = {
    "defaults": {},
    "namespaced": {"watchNamespace": "apps", "replicaCount": 2},
    "no-leader-election": {"leaderElection": {"enabled": False}, "serviceAccount": {"create": False, "name": "x"}},
}


def main() -> None:
    path = sys.argv[1]
    chart = helm.Chart.load(path)
    out = {
        "lint": helm.lint(path, strict=True, kube_version="v1.20.2"),
        "renders": {
            case: chart.render(values, name="concord-operator", namespace="concord-system", is_install=True)
            for case, values in CASES.items()
        },
        "crds": chart.crds,
        "metadata": chart.metadata,
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
