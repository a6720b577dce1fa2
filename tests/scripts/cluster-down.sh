#!/usr/bin/env bash
# Stops the cluster tests/scripts/cluster-up.sh started and removes what it left on the machine:
# its processes (by the pids it recorded; containers through containerd), kube-proxy's and
# kubelet's iptables rules, the mounts under the kubelet root and containerd's state, the bridge,
# the FORWARD rule, the sysctls it changed. Logs stay in $CLUSTER_DIR/logs; containerd's image store
# stays too, so the next cluster-up.sh does not import the images again (--purge removes all of
# $CLUSTER_DIR). Safe to run when nothing is up, and twice.
#
#   tests/scripts/cluster-down.sh [--purge]
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=cluster-env.sh
. "$HERE/cluster-env.sh"

PURGE=0
[ "${1:-}" = --purge ] && PURGE=1

log() { printf 'cluster-down: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || {
  log "error: run as root"
  exit 1
}
# shellcheck disable=SC1091
[ -f "$CACHE/kube/node-env.sh" ] && . "$CACHE/kube/node-env.sh"
CTR="${CTR:-$(command -v ctr || true)}"

# stop NAME: SIGTERM, up to 15 s, then SIGKILL; by the recorded pid only, and only while that pid
# is still NAME.
stop() {
  local f="$PIDS/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if ours "$1"; then
    log "stopping $1 ($pid)"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 20; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$f"
}

# The node first (nothing restarts containers then), and the controllers.
stop kubelet
stop kube-proxy
stop kube-scheduler
stop kube-controller-manager

# Containers: killed and removed through containerd while it still runs.
if [ -S "$SOCK" ] && [ -n "$CTR" ]; then
  ctr_() { timeout 30 "$CTR" -a "$SOCK" -n k8s.io "$@"; }
  for t in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1
  done
  for t in $(ctr_ tasks ls -q 2>/dev/null); do
    for ((i = 0; i < 20; i++)); do
      ctr_ tasks delete "$t" >/dev/null 2>&1 && break
      sleep 0.25
    done
  done
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$c" >/dev/null 2>&1
  done
fi
stop containerd
# Shims outlive containerd by design; they are ours when their command line names our socket.
for p in /proc/[0-9]*; do
  if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "-address $SOCK "; then
    log "killing containerd shim ${p#/proc/}"
    kill -KILL "${p#/proc/}" 2>/dev/null
  fi
done

# Service rules (kube-proxy's own cleanup), then kubelet's utility chains.
if [ -n "${KUBE_PROXY:-}" ] && [ -x "$KUBE_PROXY" ]; then
  "$KUBE_PROXY" --cleanup >/dev/null 2>&1 || true
fi
for table in filter nat mangle; do
  rules="$(iptables-save -t "$table" 2>/dev/null)" || continue
  # Jumps from the built-in chains into KUBE-* chains, then the chains themselves.
  printf '%s\n' "$rules" | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' |
    while read -r line; do
      # shellcheck disable=SC2086
      iptables -w -t "$table" -D ${line#-A } 2>/dev/null
    done
  for chain in $(printf '%s\n' "$rules" | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
    iptables -w -t "$table" -F "$chain" 2>/dev/null
  done
  for chain in $(printf '%s\n' "$rules" | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
    iptables -w -t "$table" -X "$chain" 2>/dev/null
  done
done

# The control plane: the API server before etcd.
stop kube-apiserver
stop etcd

# Mounts under the kubelet root and containerd's state and root, deepest first.
unmount_under() {
  local prefix="$1" m
  for m in $(awk -v p="$prefix" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}
for d in "$KUBELET_ROOT" "$CONTAINERD_STATE" "$CONTAINERD_ROOT"; do
  unmount_under "$d"
done

# Network: the FORWARD rule, the bridge, the sysctls as they were.
iptables -w -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null
iptables -w -F "$FORWARD_CHAIN" 2>/dev/null
iptables -w -X "$FORWARD_CHAIN" 2>/dev/null
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
for s in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do
  if [ -f "$CLUSTER_DIR/sysctl.$s" ]; then
    cat "$CLUSTER_DIR/sysctl.$s" >"/proc/sys/${s//.//}" 2>/dev/null
    rm -f "$CLUSTER_DIR/sysctl.$s"
  fi
done

# Pod cgroups kubelet created (empty once the containers are gone).
for h in /sys/fs/cgroup/*/; do
  [ -d "$h/kubepods" ] && find "$h/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
done

left="$(awk -v p="$CLUSTER_DIR" 'index($2, p) == 1 { print $2 }' /proc/mounts)"
if [ -n "$left" ]; then
  log "error: still mounted (not removing the state dir):"
  printf '%s\n' "$left" >&2
  exit 1
fi
rm -rf "$KUBELET_ROOT" "$CONTAINERD_STATE" "$CLUSTER_DIR/etcd" "$CLUSTER_DIR/cni/ipam"
# kubelet 1.20 writes container logs to the fixed /var/log/pods (and links in /var/log/containers);
# remove those of this node's pods (cluster-up.sh noted which existed before it started).
if [ -f "$CLUSTER_DIR/pod-logs.before" ]; then
  for d in /var/log/pods/*; do
    [ -e "$d" ] || continue
    grep -qxF "$d" "$CLUSTER_DIR/pod-logs.before" || rm -rf "$d"
  done
  for l in /var/log/containers/*.log; do
    [ -L "$l" ] && [ ! -e "$l" ] && rm -f "$l"
  done
  rm -f "$CLUSTER_DIR/pod-logs.before"
fi
if [ "$PURGE" = 1 ]; then
  rm -rf "$CLUSTER_DIR"
  log "down; removed $CLUSTER_DIR"
else
  log "down (logs in $LOGS)"
fi
