#!/usr/bin/env bash
# Installs a real Kubernetes control plane for the webhook's admission tests, cached by version:
#
#   kube-apiserver           built from Debian bookworm's `kubernetes` source (upstream v1.20.2 with
#                            vendor/), with the vendored modern-go/reflect2 replaced by Debian's copy
#                            (the vendored one SIGSEGVs under Go >= 1.18 once a webhook returns a patch)
#   kube-controller-manager  the same tree (about a minute more: the Go build cache is shared);
#                            KUBE_CONTROLLER_MANAGER=0 skips it
#   kubectl                  the same tree: a client matched to the server
#   etcd                     Debian `etcd-server` (3.4)
#   kubernetes-validate      PyPI, in a venv: OpenAPI schemas of Kubernetes 1.25 and newer
#
# Everything lands under ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/kube/<version>; a second run finds
# the stamp files and returns at once. The script writes kube/<version>/env.sh (KUBE_APISERVER, KUBECTL, ETCD,
# KUBE_VALIDATE, KUBE_VERSION, KUBE_CONTROLLER_MANAGER when built) and links kube/env.sh to it; the
# Rust harness (tests/src/apiserver.rs) reads that file. It needs no stdin and no TTY (works with
# CI=true) and uses only Debian packages and PyPI. Debian packages are installed with apt-get when
# missing (as root), so run it once with the rights to do that.
set -euo pipefail

KUBE_DEB_VERSION=1.20.5+really1.20.2
KUBE_VERSION=1.20.2
KUBE_ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
KUBE_ORIG_URL="${KUBE_ORIG_URL:-http://deb.debian.org/debian/pool/main/k/kubernetes/kubernetes_${KUBE_DEB_VERSION}.orig.tar.gz}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
ROOT="$CACHE/kube/$KUBE_VERSION"
mkdir -p "$ROOT/bin"

log() { printf 'install-kube: %s\n' "$*" >&2; }
die() {
  printf 'install-kube: error: %s\n' "$*" >&2
  exit 1
}

export DEBIAN_FRONTEND=noninteractive

. "$(dirname "$0")/lib.sh"

# ---------------------------------------------------------------------------------------------
# etcd
apt_ensure etcd-server
ETCD_BIN="$(command -v etcd || true)"
[ -x "$ETCD_BIN" ] || ETCD_BIN=/usr/bin/etcd
[ -x "$ETCD_BIN" ] || die "etcd-server installed but no etcd binary found"

# ---------------------------------------------------------------------------------------------
# kube-apiserver (+ kube-controller-manager on request) from source
build_kube() {
  local what="$1" # cmd/kube-apiserver
  local name="${what#cmd/}"
  [ -x "$ROOT/bin/$name" ] && [ -f "$ROOT/bin/$name.stamp" ] && return 0
  apt_ensure golang-1.19-go make rsync golang-github-modern-go-reflect2-dev ca-certificates curl
  local src="$ROOT/src"
  if [ ! -f "$src/.prepared" ]; then
    local tgz="$ROOT/kubernetes_${KUBE_DEB_VERSION}.orig.tar.gz"
    if ! echo "$KUBE_ORIG_SHA256  $tgz" | sha256sum -c --status 2>/dev/null; then
      log "downloading $KUBE_ORIG_URL"
      curl -fsSL --retry 3 -o "$tgz.part" "$KUBE_ORIG_URL"
      echo "$KUBE_ORIG_SHA256  $tgz.part" | sha256sum -c --status || die "checksum mismatch for $tgz"
      mv "$tgz.part" "$tgz"
    fi
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xzf "$tgz" -C "$src.tmp" --strip-components=1
    # The fix: the vendored reflect2 (1.0.1) reads Go runtime internals that moved in Go 1.18.
    local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "$r2" ] || die "$r2 missing (golang-github-modern-go-reflect2-dev)"
    local v2="$src.tmp/vendor/github.com/modern-go/reflect2"
    [ -d "$v2" ] || die "unexpected source layout: $v2 missing"
    rm -f "$v2"/*.go "$v2"/*.s
    cp "$r2"/*.go "$v2"/
    cp "$r2"/*.s "$v2"/ 2>/dev/null || true
    rm -f "$v2"/*_test.go
    touch "$src.tmp/.prepared"
    mv "$src.tmp" "$src"
  fi
  log "building $what (about 6 minutes on 2 cores)"
  (
    cd "$src"
    export PATH="/usr/lib/go-1.19/bin:$PATH" CGO_ENABLED=0 GOFLAGS=-mod=vendor
    export GOCACHE="$ROOT/gocache" GOPATH="$ROOT/gopath" KUBE_VERBOSE=0
    make WHAT="$what" </dev/null
  ) >&2
  local out
  out="$(find "$src/_output" -type f -name "$name" -perm -u+x | head -n1)"
  [ -n "$out" ] || die "build of $what produced no binary"
  cp "$out" "$ROOT/bin/$name.tmp"
  mv "$ROOT/bin/$name.tmp" "$ROOT/bin/$name"
  "$ROOT/bin/$name" --version >"$ROOT/bin/$name.stamp" 2>/dev/null ||
    "$ROOT/bin/$name" version --client >"$ROOT/bin/$name.stamp"
  log "$name: $(cat "$ROOT/bin/$name.stamp")"
}

build_kube cmd/kube-apiserver
build_kube cmd/kubectl # the version-matched client the tests drive (a minute with the warm cache)
if [ "${KUBE_CONTROLLER_MANAGER:-1}" = 1 ]; then
  build_kube cmd/kube-controller-manager
fi

# ---------------------------------------------------------------------------------------------
# kubernetes-validate (PyPI) in a venv
VENV="$ROOT/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$VENV/.stamp" ]; then
  PY_BOOT="${PYTHON_BOOTSTRAP:-$(command -v python3 || true)}"
  [ -n "$PY_BOOT" ] || die "python3 is required"
  "$PY_BOOT" -c 'import venv, ensurepip' 2>/dev/null || apt_ensure python3-venv
  rm -rf "$VENV"
  "$PY_BOOT" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-input \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" </dev/null >&2 ||
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-input \
      "kubernetes-validate>=1.37,<1.38" </dev/null >&2
  "$VENV/bin/kubernetes-validate" --version >"$VENV/.stamp" 2>&1 || touch "$VENV/.stamp"
fi

# ---------------------------------------------------------------------------------------------
# env file
ENV_FILE="$ROOT/env.sh"
{
  echo "# written by tests/scripts/install-kube.sh"
  echo "KUBE_VERSION=$KUBE_VERSION"
  echo "KUBE_APISERVER=$ROOT/bin/kube-apiserver"
  echo "KUBECTL=$ROOT/bin/kubectl"
  [ -x "$ROOT/bin/kube-controller-manager" ] &&
    echo "KUBE_CONTROLLER_MANAGER=$ROOT/bin/kube-controller-manager"
  echo "ETCD=$ETCD_BIN"
  echo "KUBE_VALIDATE=$VENV/bin/kubernetes-validate"
} >"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
ln -sfn "$KUBE_VERSION/env.sh" "$CACHE/kube/env.sh"
log "ready: $ENV_FILE"
cat "$ENV_FILE"
