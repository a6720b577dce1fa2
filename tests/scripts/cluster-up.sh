#!/usr/bin/env bash
# Starts a real single-node Kubernetes 1.20 cluster on this machine, the way kind does but without
# Docker: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
# (install-kube.sh and install-node.sh build them), containerd + runc as the runtime and the CNI
# bridge for pod networking. Returns when the node is Ready and the default ServiceAccount exists.
#
#   tests/scripts/cluster-up.sh        # then: export KUBECONFIG=/tmp/mcp-guard-cluster/kubeconfig
#   tests/scripts/cluster-down.sh
#
# Addresses and paths: cluster-env.sh. Everything listens on loopback or on the node's own bridge;
# a FORWARD rule drops whatever a pod sends off the bridge, so nothing leaves the machine.
# $CLUSTER_DIR/env.sh names the kubeconfig, kubectl, ctr and containerd's socket for scripts and
# tests. Run as root (it creates a bridge, iptables rules and cgroups). When a cluster is already up
# and healthy it is reused; a half-started one is refused with the command that clears it; what a
# cluster whose processes are all gone left behind (bridge, mounts) is removed first.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=cluster-env.sh
. "$HERE/cluster-env.sh"

log() { printf 'cluster-up: %s\n' "$*" >&2; }
die() {
  printf 'cluster-up: error: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (a bridge, iptables rules, mounts and cgroups are created)"

# --- tools -----------------------------------------------------------------------------------
[ -f "$CACHE/kube/env.sh" ] && [ -f "$CACHE/kube/node-env.sh" ] ||
  die "run tests/scripts/install-kube.sh and tests/scripts/install-node.sh first"
# shellcheck disable=SC1091
. "$CACHE/kube/env.sh"
# shellcheck disable=SC1091
. "$CACHE/kube/node-env.sh"
for v in KUBE_APISERVER KUBE_CONTROLLER_MANAGER KUBECTL ETCD KUBELET KUBE_SCHEDULER KUBE_PROXY \
  CONTAINERD CTR; do
  [ -x "${!v:-}" ] || die "$v (${!v:-unset}) is missing: run install-kube.sh and install-node.sh"
done

KUBECONFIG_ADMIN="$CLUSTER_DIR/kubeconfig"
kc() { "$KUBECTL" --kubeconfig="$KUBECONFIG_ADMIN" --request-timeout=10s "$@"; }

COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy)

# --- already up? -----------------------------------------------------------------------------
running=()
for c in "${COMPONENTS[@]}"; do ours "$c" && running+=("$c"); done
if [ ${#running[@]} -eq ${#COMPONENTS[@]} ] &&
  kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null |
  grep -qx True; then
  log "already up (reusing it): export KUBECONFIG=$KUBECONFIG_ADMIN"
  exit 0
fi
[ ${#running[@]} -eq 0 ] ||
  die "a cluster is half up in $CLUSTER_DIR (${running[*]} running): run tests/scripts/cluster-down.sh first"
if ip link show "$BRIDGE" >/dev/null 2>&1 || grep -qs " $CONTAINERD_STATE" /proc/mounts ||
  grep -qs " $KUBELET_ROOT" /proc/mounts; then
  # None of its processes runs (a machine restarted, a run was killed): what it left is stale.
  log "removing the leftovers of an earlier cluster whose processes are gone (bridge $BRIDGE, mounts under $CLUSTER_DIR)"
  bash "$HERE/cluster-down.sh" >&2 ||
    die "could not remove the leftovers of an earlier cluster: see cluster-down.sh's output above"
fi
if ip route show | grep -v "dev $BRIDGE" | grep -qE "^(10\.244\.|10\.96\.)"; then
  die "this machine already routes 10.244.0.0/24 or 10.96.0.0/16; edit cluster-env.sh"
fi

# On any failure: show where it stopped, then take everything down again.
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] && return 0
  log "failed (exit $rc); last lines of each log:"
  for f in "$LOGS"/*.log; do
    [ -f "$f" ] || continue
    printf '==> %s <==\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
  bash "$HERE/cluster-down.sh" >&2 || true
  exit "$rc"
}
trap on_exit EXIT

# --- state dir (containerd's image store survives; everything else is new) --------------------
mkdir -p "$CLUSTER_DIR"
rm -rf "${CLUSTER_DIR:?}/pki" "$CLUSTER_DIR/etcd" "$KUBELET_ROOT" "$CONTAINERD_STATE" "$PIDS" \
  "$LOGS" "$CLUSTER_DIR/cni" "$CLUSTER_DIR"/*.kubeconfig "$KUBECONFIG_ADMIN" "$CLUSTER_DIR/env.sh"
mkdir -p "$CLUSTER_DIR/pki" "$KUBELET_ROOT" "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$PIDS" "$LOGS" \
  "$CLUSTER_DIR/cni/net.d" "$CLUSTER_DIR/cni/ipam"

# start NAME CMD...: runs CMD in its own session, detached from this script's stdio, logs to
# $LOGS/NAME.log, pid in $PIDS/NAME.pid (cluster-down.sh stops it by that pid).
start() {
  local name="$1"
  shift
  setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

# wait_for WHAT SECONDS NAME CMD...: polls CMD every half second; fails when NAME's process exits.
wait_for() {
  local what="$1" secs="$2" name="$3"
  shift 3
  local i
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    ours "$name" || die "$name exited while waiting for $what (log: $LOGS/$name.log)"
    sleep 0.5
  done
  die "$what not within ${secs}s (log: $LOGS/$name.log)"
}

# kubelet 1.20 logs containers under the fixed /var/log/pods: note what is there already, so that
# cluster-down.sh removes only this node's.
ls -d /var/log/pods/* 2>/dev/null >"$CLUSTER_DIR/pod-logs.before" || true

# --- network: the bridge first, so the API server can bind its gateway address ----------------
log "bridge $BRIDGE $GATEWAY/${POD_CIDR#*/}"
ip link add "$BRIDGE" type bridge
ip addr add "$GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Routing between pods, the host and Service addresses needs forwarding, and Service traffic from one
# pod to another on the same bridge must pass iptables. The old values are restored by cluster-down.sh.
for s in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do
  f="/proc/sys/${s//.//}"
  if [ -f "$f" ]; then
    cat "$f" >"$CLUSTER_DIR/sysctl.$s"
    echo 1 >"$f"
  fi
done
# Nothing a pod sends may leave the bridge (pods reach each other, Services and the host only).
iptables -w -N "$FORWARD_CHAIN"
iptables -w -A "$FORWARD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
iptables -w -I FORWARD 1 -j "$FORWARD_CHAIN"

# --- certificates and credentials ------------------------------------------------------------
PKI="$CLUSTER_DIR/pki"
(
  cd "$PKI"
  ossl() { openssl "$@" >/dev/null 2>&1 || openssl "$@"; }
  ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
    -days 30 -subj /CN=mcp-guard-node-ca
  issue() { # issue NAME SUBJECT EXTENSIONS
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
    printf '%s\n' "$3" >"$1.ext"
    ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 30 \
      -extfile "$1.ext"
  }
  issue apiserver /CN=kube-apiserver \
    "subjectAltName=IP:$GATEWAY,IP:$SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  issue kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  ossl genrsa -out sa.key 2048
  ossl rsa -in sa.key -pubout -out sa.pub
)
token() { openssl rand -hex 16; }
ADMIN_TOKEN="$(token)"
{
  echo "$ADMIN_TOKEN,admin,admin,system:masters"
  echo "$(token),system:node:$NODE_NAME,kubelet,system:nodes"
  echo "$(token),system:kube-controller-manager,kube-controller-manager"
  echo "$(token),system:kube-scheduler,kube-scheduler"
  echo "$(token),system:kube-proxy,kube-proxy"
} >"$PKI/tokens.csv"
chmod 600 "$PKI/tokens.csv"
kubeconfig() { # kubeconfig FILE USER
  local tok
  tok="$(awk -F, -v u="$2" '$2 == u { print $1 }' "$PKI/tokens.csv")"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mcp-guard-node
  cluster:
    server: https://$GATEWAY:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    token: $tok
contexts:
- name: mcp-guard-node
  context:
    cluster: mcp-guard-node
    user: $2
    namespace: default
current-context: mcp-guard-node
EOF
  chmod 600 "$1"
}
kubeconfig "$KUBECONFIG_ADMIN" admin
kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME"
kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" system:kube-controller-manager
kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" system:kube-scheduler
kubeconfig "$CLUSTER_DIR/proxy.kubeconfig" system:kube-proxy

# --- etcd, kube-apiserver --------------------------------------------------------------------
log "etcd 127.0.0.1:$ETCD_PORT"
start etcd "$ETCD" --name=default --data-dir="$CLUSTER_DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" --log-level=warn
wait_for "etcd" 30 etcd bash -c "exec 3<>/dev/tcp/127.0.0.1/$ETCD_PORT"

log "kube-apiserver https://$GATEWAY:$APISERVER_PORT"
start kube-apiserver "$KUBE_APISERVER" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$GATEWAY" --advertise-address="$GATEWAY" --secure-port="$APISERVER_PORT" \
  --insecure-port=0 --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --kubelet-client-certificate="$PKI/kubelet-client.crt" --kubelet-client-key="$PKI/kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP --cert-dir="$PKI/apiserver-generated" \
  --allow-privileged=true --profiling=false --v=1
wait_for "kube-apiserver /readyz" 120 kube-apiserver kc get --raw /readyz

# --- containerd ------------------------------------------------------------------------------
cat >"$CLUSTER_DIR/cni/net.d/10-mcp-guard.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mcp-guard-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
# The pause image build-images.sh imports (it names it the same).
SANDBOX_IMAGE="localhost/mcp-guard/pause:$KUBE_VERSION"
cat >"$CLUSTER_DIR/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # This sandbox refuses a negative oom_score_adj; without this every pod sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
EOF
log "containerd $SOCK"
start containerd "$CONTAINERD" --config "$CLUSTER_DIR/containerd/config.toml"
wait_for "containerd" 30 containerd "$CTR" -a "$SOCK" version
bash "$HERE/build-images.sh" pause >&2

# --- controllers -----------------------------------------------------------------------------
log "kube-controller-manager, kube-scheduler"
start kube-controller-manager "$KUBE_CONTROLLER_MANAGER" \
  --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials --leader-elect=false --port=0 --secure-port=0 \
  --node-monitor-grace-period=20s --v=1
start kube-scheduler "$KUBE_SCHEDULER" --kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --leader-elect=false --port=0 --secure-port=0 --v=1

# --- kubelet, kube-proxy ---------------------------------------------------------------------
cat >"$CLUSTER_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $GATEWAY
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
podCIDR: $POD_CIDR
# ConfigMap volumes (the policy) are refreshed within this.
syncFrequency: 5s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
log "kubelet ($NODE_NAME, $GATEWAY:10250), kube-proxy (iptables)"
start kubelet "$KUBELET" --config="$CLUSTER_DIR/kubelet.yaml" \
  --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" --container-runtime=remote \
  --container-runtime-endpoint="unix://$SOCK" --runtime-request-timeout=5m \
  --root-dir="$KUBELET_ROOT" --cert-dir="$KUBELET_ROOT/pki" \
  --volume-plugin-dir="$KUBELET_ROOT/volume-plugins" --hostname-override="$NODE_NAME" \
  --node-ip="$GATEWAY" --v=1
start kube-proxy "$KUBE_PROXY" --kubeconfig="$CLUSTER_DIR/proxy.kubeconfig" --proxy-mode=iptables \
  --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" --bind-address="$GATEWAY" \
  --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
  --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
  --conntrack-tcp-timeout-close-wait=0 --v=1

node_ready() {
  kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
wait_for "node $NODE_NAME Ready" 120 kubelet node_ready
wait_for "ServiceAccount default/default" 60 kube-controller-manager kc get serviceaccount default -n default

cat >"$CLUSTER_DIR/env.sh" <<EOF
# written by tests/scripts/cluster-up.sh
KUBECONFIG=$KUBECONFIG_ADMIN
KUBECTL=$KUBECTL
CTR=$CTR
CONTAINERD_SOCK=$SOCK
NODE_NAME=$NODE_NAME
GATEWAY=$GATEWAY
POD_CIDR=$POD_CIDR
SERVICE_CIDR=$SERVICE_CIDR
CA_CRT=$PKI/ca.crt
KUBE_VERSION=$KUBE_VERSION
EOF
trap - EXIT
log "up: export KUBECONFIG=$KUBECONFIG_ADMIN   (kubectl: $KUBECTL)"
