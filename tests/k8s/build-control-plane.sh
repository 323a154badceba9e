#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl 1.20.2 from Debian bookworm's
# `kubernetes` source package and caches them outside the repo. Idempotent; runs as root when the
# cache is missing (apt-get), and is a no-op when the three binaries are already cached.
#
#   cache: $CONCORD_TEST_CACHE/kubernetes-<version>/bin/{kube-apiserver,kube-controller-manager,kubectl}
#          (CONCORD_TEST_CACHE defaults to /var/cache/concord-test)
#
# Steps (the recipe in DESIGN.md section 4):
#   1. Debian's golang-go, rsync, jq, dpkg-dev, and golang-github-modern-go-reflect2-dev (and
#      openssl, which the harness uses for the control plane's certificates).
#   2. A bookworm `deb-src` source derived from the machine's own Debian apt source (no registry
#      host is named here).
#   3. `apt-get source --download-only kubernetes/bookworm` (the suite is named on purpose: newer
#      suites ship a tree without the vendored dependencies), unpacked with dpkg-source.
#   4. The vendored github.com/modern-go/reflect2 1.0.1 crashes under Go >= 1.18 (SIGSEGV in map
#      iteration the first time a custom resource is served); its .go files are replaced with those
#      of Debian's golang-github-modern-go-reflect2-dev (1.0.2).
#   5. `make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl"` inside a GOPATH
#      layout ($GOPATH/src/k8s.io/kubernetes). About 5 minutes on 2 cores.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_ROOT=${CONCORD_TEST_CACHE:-/var/cache/concord-test}
OUT_DIR=$CACHE_ROOT/kubernetes-$K8S_VERSION
BIN_DIR=$OUT_DIR/bin
BINARIES=(kube-apiserver kube-controller-manager kubectl)
SRC_LIST=/etc/apt/sources.list.d/concord-bookworm-src.sources
export DEBIAN_FRONTEND=noninteractive

log() { echo "build-control-plane: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

have_binaries() {
    local b
    for b in "${BINARIES[@]}"; do
        [ -x "$BIN_DIR/$b" ] || return 1
    done
    "$BIN_DIR/kube-apiserver" --version 2>/dev/null | grep -q "v$K8S_VERSION"
}

# openssl: the test harness makes the control plane's CA, certificates and keys with it.
have_openssl() { command -v openssl >/dev/null 2>&1; }
if ! have_openssl && [ "$(id -u)" -eq 0 ]; then
    log "installing openssl"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
have_openssl || die "openssl is missing (run as root to install it)"

# Fast path.
if have_binaries; then
    log "kubernetes $K8S_VERSION binaries already cached in $BIN_DIR"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root to build kubernetes $K8S_VERSION (apt-get); cache missing at $BIN_DIR"

# Prints a deb822 deb-src stanza for bookworm, derived from the first Debian source that lists a
# plain bookworm suite (same URIs, components and keyring).
derive_bookworm_src() {
    local f out
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        out=$(awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && suites ~ /(^| )bookworm( |$)/ && uris != "" && !done) {
                    print "Types: deb-src"
                    print "URIs: " uris
                    print "Suites: bookworm"
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
            printf '# Derived by tests/k8s/build-control-plane.sh from %s\n%s\n' "$f" "$out"
            return 0
        fi
    done
    # One-line format: "deb [opts] URI bookworm comp..." -> "deb-src [opts] URI bookworm comp..."
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        out=$(awk '$1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == "bookworm") { sub(/^deb/, "deb-src"); print; exit }
            }' "$f")
        if [ -n "$out" ]; then
            printf '# Derived by tests/k8s/build-control-plane.sh from %s\n%s\n' "$f" "$out"
            return 0
        fi
    done
    return 1
}

# --- tools -----------------------------------------------------------------------------------------
log "installing golang-go, rsync, jq, dpkg-dev, golang-github-modern-go-reflect2-dev"
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go rsync jq dpkg-dev make gcc libc6-dev \
    golang-github-modern-go-reflect2-dev >/dev/null
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -f "$REFLECT2_SRC/reflect2.go" ] || die "golang-github-modern-go-reflect2-dev has no $REFLECT2_SRC/reflect2.go"

# --- deb-src ---------------------------------------------------------------------------------------
stanza=$(derive_bookworm_src) || die "found no Debian bookworm apt source to derive deb-src from"
# The one-line form goes into a .list file.
grep -q '^Types: deb-src' <<<"$stanza" || SRC_LIST=${SRC_LIST%.sources}.list
if [ ! -f "$SRC_LIST" ] || [ "$(cat "$SRC_LIST")" != "$stanza" ]; then
    printf '%s\n' "$stanza" >"$SRC_LIST"
fi
apt-get update -qq

# --- source ----------------------------------------------------------------------------------------
work=${K8S_BUILD_DIR:-$(mktemp -d)}
mkdir -p "$work"
cleanup() { [ -n "${K8S_BUILD_DIR:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
chmod 755 "$work"
mkdir -p "$work/dl"
if id _apt >/dev/null 2>&1; then chown _apt "$work/dl"; fi
log "downloading kubernetes/bookworm source into $work/dl"
(cd "$work/dl" && apt-get source -qq --download-only kubernetes/bookworm)
dsc=$(ls "$work"/dl/kubernetes_*.dsc | head -n1)
[ -n "$dsc" ] || die "no kubernetes .dsc downloaded"
export GOPATH=$work/gopath
tree=$GOPATH/src/k8s.io/kubernetes
rm -rf "$tree"
mkdir -p "$(dirname "$tree")"
dpkg-source --no-check -x "$dsc" "$tree" >/dev/null
[ -d "$tree/vendor/github.com/modern-go/reflect2" ] || die "the source tree has no vendored reflect2"

# --- reflect2 1.0.1 -> 1.0.2 -----------------------------------------------------------------------
log "replacing vendored modern-go/reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
find "$tree/vendor/github.com/modern-go/reflect2" -maxdepth 1 -name '*.go' -delete
find "$REFLECT2_SRC" -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec cp -L {} "$tree/vendor/github.com/modern-go/reflect2/" \;

# --- build -----------------------------------------------------------------------------------------
log "building ${BINARIES[*]} with $(go version) (about 5 minutes on 2 cores)"
start=$(date +%s)
(
    cd "$tree"
    export GO111MODULE=off GOFLAGS= KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_TREE_STATE=clean
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl"
)
log "built in $(($(date +%s) - start)) s"

mkdir -p "$BIN_DIR.tmp"
for b in "${BINARIES[@]}"; do
    f=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n1)
    [ -n "$f" ] || die "build produced no $b"
    install -m 0755 "$f" "$BIN_DIR.tmp/$b"
done
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
have_binaries || die "cached kube-apiserver is not v$K8S_VERSION: $("$BIN_DIR/kube-apiserver" --version 2>&1)"
log "ok: $("$BIN_DIR/kube-apiserver" --version) in $BIN_DIR"
