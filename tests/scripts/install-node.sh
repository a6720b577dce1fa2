#!/usr/bin/env bash
# Installs what a real single-node cluster needs besides the control plane install-kube.sh builds,
# cached by version (tests/scripts/cluster-up.sh starts it; docs/development.md):
#
#   kubelet, kube-scheduler,   built from the same Debian `kubernetes` source tree install-kube.sh
#   kube-proxy                 prepares (upstream v1.20.2), with its Go build cache: about two
#                              minutes for the three on 2 cores
#   pause                      the pod sandbox's process: the tree's build/pause/linux/pause.c,
#                              compiled static with musl-gcc (tests/scripts/build-images.sh makes
#                              the image from it)
#   containerd, runc           Debian (containerd 1.6): the container runtime kubelet talks CRI to
#   containernetworking-plugins  Debian: bridge, host-local, portmap, loopback under /usr/lib/cni
#   iptables                   Debian: kube-proxy's Service rules
#   musl-tools                 Debian: musl-gcc
#
# The script writes kube/<version>/node-env.sh (KUBELET, KUBE_SCHEDULER, KUBE_PROXY, PAUSE,
# CONTAINERD, CTR, RUNC, CNI_BIN_DIR) beside install-kube.sh's env.sh and links kube/node-env.sh to
# it. A second run finds the stamp files and returns at once. It runs install-kube.sh first when the
# source tree is not there yet. No stdin, no TTY; apt-get runs (as root) only for missing packages.
# Nothing is started: the Debian containerd package's own service is not used (cluster-up.sh runs
# containerd with its own root, state and socket).
set -euo pipefail

KUBE_VERSION=1.20.2
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
ROOT="$CACHE/kube/$KUBE_VERSION"
PACKAGES=(containerd runc containernetworking-plugins iptables musl-tools)

log() { printf 'install-node: %s\n' "$*" >&2; }
die() {
  printf 'install-node: error: %s\n' "$*" >&2
  exit 1
}

. "$(dirname "$0")/lib.sh"
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages -------------------------------------------------------------------------
apt_ensure "${PACKAGES[@]}"
CONTAINERD="$(command -v containerd || echo /usr/bin/containerd)"
CTR="$(command -v ctr || echo /usr/bin/ctr)"
RUNC="$(command -v runc || echo /usr/sbin/runc)"
CNI_BIN_DIR=/usr/lib/cni
for f in "$CONTAINERD" "$CTR" "$RUNC" "$CNI_BIN_DIR/bridge" "$CNI_BIN_DIR/host-local" \
  "$CNI_BIN_DIR/portmap" "$CNI_BIN_DIR/loopback"; do
  [ -x "$f" ] || die "$f missing after installing ${PACKAGES[*]}"
done

# --- the source tree -------------------------------------------------------------------------
SRC="$ROOT/src"
if [ ! -f "$SRC/.prepared" ]; then
  log "no prepared source tree at $SRC: running install-kube.sh"
  bash "$HERE/install-kube.sh" >/dev/null
fi
[ -f "$SRC/.prepared" ] || die "install-kube.sh left no prepared source tree at $SRC"

# build WHAT: the same make invocation (and Go build cache) as install-kube.sh's.
build() {
  local what="$1"
  local name="${what#cmd/}"
  [ -x "$ROOT/bin/$name" ] && [ -f "$ROOT/bin/$name.stamp" ] && return 0
  log "building $what"
  (
    cd "$SRC"
    export PATH="/usr/lib/go-1.19/bin:$PATH" CGO_ENABLED=0 GOFLAGS=-mod=vendor
    export GOCACHE="$ROOT/gocache" GOPATH="$ROOT/gopath" KUBE_VERBOSE=0
    make WHAT="$what" </dev/null
  ) >&2
  local out
  out="$(find "$SRC/_output" -type f -name "$name" -perm -u+x | head -n1)"
  [ -n "$out" ] || die "build of $what produced no binary"
  cp "$out" "$ROOT/bin/$name.tmp"
  mv "$ROOT/bin/$name.tmp" "$ROOT/bin/$name"
  "$ROOT/bin/$name" --version >"$ROOT/bin/$name.stamp" 2>/dev/null || echo "$KUBE_VERSION" >"$ROOT/bin/$name.stamp"
  log "$name: $(cat "$ROOT/bin/$name.stamp")"
}

mkdir -p "$ROOT/bin"
build cmd/kubelet
build cmd/kube-scheduler
build cmd/kube-proxy

# --- pause -----------------------------------------------------------------------------------
PAUSE="$ROOT/bin/pause"
if [ ! -x "$PAUSE" ] || [ ! -f "$PAUSE.stamp" ]; then
  log "building pause (musl-gcc -static)"
  musl-gcc -static -Os -DVERSION="v$KUBE_VERSION-mcp-guard" \
    -o "$PAUSE.tmp" "$SRC/build/pause/linux/pause.c"
  mv "$PAUSE.tmp" "$PAUSE"
  "$PAUSE" -v >"$PAUSE.stamp"
fi

# --- env file --------------------------------------------------------------------------------
ENV_FILE="$ROOT/node-env.sh"
{
  echo "# written by tests/scripts/install-node.sh"
  echo "KUBELET=$ROOT/bin/kubelet"
  echo "KUBE_SCHEDULER=$ROOT/bin/kube-scheduler"
  echo "KUBE_PROXY=$ROOT/bin/kube-proxy"
  echo "PAUSE=$PAUSE"
  echo "CONTAINERD=$CONTAINERD"
  echo "CTR=$CTR"
  echo "RUNC=$RUNC"
  echo "CNI_BIN_DIR=$CNI_BIN_DIR"
} >"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
ln -sfn "$KUBE_VERSION/node-env.sh" "$CACHE/kube/node-env.sh"
log "ready: $ENV_FILE"
cat "$ENV_FILE"
