# Sourced by cluster-up.sh and cluster-down.sh: where the single-node cluster lives and which
# addresses it uses. Every address is on loopback or inside what the node creates itself:
#
#   bridge mcpg0, gateway 10.244.0.1   pods' network; kube-apiserver and kubelet listen here so pods
#                                      reach them (the `kubernetes` Service points at it)
#   pods      10.244.0.0/24            host-local IPAM on the bridge
#   services  10.96.0.0/16             kube-proxy's iptables rules; `kubernetes` is 10.96.0.1
#   etcd      127.0.0.1:23790/23791
#
# Override the state directory with MCP_GUARD_CLUSTER_DIR (default /tmp/mcp-guard-cluster).

CLUSTER_DIR="${MCP_GUARD_CLUSTER_DIR:-/tmp/mcp-guard-cluster}"
CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
NODE_NAME=mcp-guard-node
BRIDGE=mcpg0
GATEWAY=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
APISERVER_PORT=6443
ETCD_PORT=23790
ETCD_PEER_PORT=23791
# The chain cluster-up.sh adds to FORWARD so that nothing from the pods leaves the machine.
FORWARD_CHAIN=MCP-GUARD-NODE

SOCK="$CLUSTER_DIR/containerd/containerd.sock"
KUBELET_ROOT="$CLUSTER_DIR/kubelet"
CONTAINERD_STATE="$CLUSTER_DIR/containerd/state"
# Images live in containerd's root, which survives cluster-down.sh (build-images.sh imports only
# what is missing); `cluster-down.sh --purge` removes it too.
CONTAINERD_ROOT="$CLUSTER_DIR/containerd/root"
PIDS="$CLUSTER_DIR/pids"
LOGS="$CLUSTER_DIR/logs"

# ours NAME: whether the process recorded in $PIDS/NAME.pid still runs and is NAME (its executable
# is called NAME), so that a pid the kernel gave to another process since is never taken for ours.
ours() {
  local f="$PIDS/$1.pid" pid exe
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  [ "${exe##*/}" = "$1" ]
}
