#!/usr/bin/env bash
# Runs the whole test suite: installs the test dependencies (etcd 3.4 and 3.5), checks formatting
# and lints, builds everything once, then runs every test (cargo-nextest if present, else
# cargo test). Extra arguments are passed to the test runner (e.g. a nextest filter).
#
# Env: CONCORD_BIN, ETCD35_BIN_DIR, ETCD34_BIN_DIR override the binaries the tests run
# (see tests/src/lib.rs); CONCORD_BIN=<etcd 3.5 binary> runs the concord tests against etcd.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "install test dependencies"
if [ "$(id -u)" -eq 0 ]; then
    bash scripts/install-test-deps.sh
else
    sudo -n bash scripts/install-test-deps.sh || bash scripts/install-test-deps.sh
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build"
cargo build --workspace --bins --tests

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace "$@"
else
    # Without nextest's serial group, one test at a time keeps clusters from starving each other.
    cargo test --workspace "$@" -- --test-threads=1
fi
