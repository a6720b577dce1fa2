#!/usr/bin/env bash
# mcp-guard webhook benchmark: admission latency of POST /mutate at 50 concurrent reviews, and
# the webhook's memory.
#
#   control plane  etcd + kube-apiserver from tests/scripts/install-kube.sh, so the webhook runs
#                  as in production: kube client, /version read, namespace reflector cache
#                  (--no-apiserver runs it with --no-kube instead)
#   load           bursts of 50 concurrent reviews (webhook/examples/admission_load.rs), then wrk
#                  keeping 50 in flight (saturation), over HTTPS keep-alive connections, one
#                  AdmissionReview body per case:
#                    inject  an annotated pod (the full patch is built)
#                    skip    a plain pod (selection only)
#   memory         VmRSS after the runs and VmHWM (peak) from /proc
#
# Writes bench/webhook/results/<date>-<name>.md. Targets (issue 7): p99 <= 5 ms, RSS <= 40 MiB.
#
# Usage: bench/webhook/run.sh [--name NAME] [--duration 10] [--concurrency 50]
#                             [--no-apiserver] [--no-build]
# Environment: BENCH_NAME, BENCH_DURATION, BENCH_CONCURRENCY, BENCH_APISERVER=0, BENCH_BUILD=0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NAME="${BENCH_NAME:-webhook}"
DURATION="${BENCH_DURATION:-10}"
CONCURRENCY="${BENCH_CONCURRENCY:-50}"
APISERVER="${BENCH_APISERVER:-1}"
BUILD="${BENCH_BUILD:-1}"
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --no-apiserver) APISERVER=0; shift ;;
    --no-build) BUILD=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { printf 'bench-webhook: %s\n' "$*" >&2; }
die() { printf 'bench-webhook: error: %s\n' "$*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is required (apt-get install wrk)"
command -v openssl >/dev/null || die "openssl is required"

if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --locked -p mcp-guard-webhook --bin mcp-guard-webhook \
    --example admission_load)
fi
BIN="$ROOT/target/release/mcp-guard-webhook"
LOAD="$ROOT/target/release/examples/admission_load"
[ -x "$BIN" ] || die "$BIN missing (build it, or drop --no-build)"
[ -x "$LOAD" ] || die "$LOAD missing (build it, or drop --no-build)"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# Certificates: one CA, one serving pair for 127.0.0.1 (webhook and API server alike).
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
  -days 1 -subj /CN=bench-ca 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >san.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key -out tls.csr \
  -subj /CN=127.0.0.1 2>/dev/null
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 1 \
  -extfile san.ext 2>/dev/null

WEBHOOK_ARGS=()
KUBE_VERSION_LINE="none (--no-kube)"
if [ "$APISERVER" = 1 ]; then
  ENV_FILE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/kube/env.sh"
  [ -f "$ENV_FILE" ] || die "$ENV_FILE missing: run tests/scripts/install-kube.sh (or pass --no-apiserver)"
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  KUBECTL_BIN="${KUBECTL:-kubectl}"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  echo "bench-token,admin,admin,system:masters" >tokens.csv
  EC=$(free_port) EP=$(free_port) AP=$(free_port)
  "$ETCD" --name=default --data-dir="$WORK/etcd" --log-level=warn \
    --listen-client-urls="http://127.0.0.1:$EC" --advertise-client-urls="http://127.0.0.1:$EC" \
    --listen-peer-urls="http://127.0.0.1:$EP" --initial-advertise-peer-urls="http://127.0.0.1:$EP" \
    --initial-cluster="default=http://127.0.0.1:$EP" >etcd.log 2>&1 &
  PIDS+=($!)
  "$KUBE_APISERVER" --etcd-servers="http://127.0.0.1:$EC" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port="$AP" --insecure-port=0 \
    --tls-cert-file=tls.crt --tls-private-key-file=tls.key --token-auth-file=tokens.csv \
    --authorization-mode=RBAC --disable-admission-plugins=ServiceAccount \
    --service-cluster-ip-range=10.96.0.0/16 --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file=sa.pub --service-account-signing-key-file=sa.key \
    --cert-dir="$WORK/certs" >apiserver.log 2>&1 &
  PIDS+=($!)
  cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters: [{name: b, cluster: {server: "https://127.0.0.1:$AP", certificate-authority: $WORK/ca.crt}}]
users: [{name: a, user: {token: bench-token}}]
contexts: [{name: b, context: {cluster: b, user: a}}]
current-context: b
EOF
  export KUBECONFIG="$WORK/kubeconfig"
  wait_for 90 "$KUBECTL_BIN" get --raw /readyz || die "kube-apiserver did not start: $(tail -5 apiserver.log)"
  # Some namespaces for the reflector to hold, one opted in.
  for i in $(seq 1 20); do "$KUBECTL_BIN" create namespace "team-$i" >/dev/null; done
  "$KUBECTL_BIN" annotate namespace team-1 mcp-guard.dev/inject=enabled >/dev/null
  KUBE_VERSION_LINE="kube-apiserver $KUBE_VERSION (etcd, namespace reflector on)"
else
  WEBHOOK_ARGS+=(--no-kube)
fi

WP=$(free_port)
"$BIN" serve --listen="127.0.0.1:$WP" --tls-cert=tls.crt --tls-key=tls.key --log=warn \
  "${WEBHOOK_ARGS[@]}" >webhook.log 2>&1 &
WPID=$!
PIDS+=("$WPID")
wait_for 30 curl -sf --cacert ca.crt "https://127.0.0.1:$WP/readyz" ||
  die "webhook did not become ready: $(tail -5 webhook.log)"

review() { # review FILE ANNOTATIONS_JSON
  python3 - "$1" "$2" <<'PY'
import json, sys
path, ann = sys.argv[1], json.loads(sys.argv[2])
pod = {
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"generateName": "tools-6d4cf56db6-", "namespace": "team-2",
    "labels": {"app.kubernetes.io/name": "tools", "pod-template-hash": "6d4cf56db6"},
    "annotations": ann,
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "tools-6d4cf56db6",
      "uid": "0b2c1c9e-5d59-4a57-9c55-3c2b1f0e8a11", "controller": True, "blockOwnerDeletion": True}]},
  "spec": {
    "containers": [{"name": "server", "image": "example.com/tools:1.4.2",
      "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
      "env": [{"name": "LOG_LEVEL", "value": "info"}],
      "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
      "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
      "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
      "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
      "imagePullPolicy": "IfNotPresent"}],
    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
    "serviceAccountName": "default", "securityContext": {}, "schedulerName": "default-scheduler",
    "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
    "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority"},
  "status": {}}
review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
  "uid": "7e8a1f0c-2b5e-4b0e-9d1e-3f1c2a4b5d6e",
  "kind": {"group": "", "version": "v1", "kind": "Pod"},
  "resource": {"group": "", "version": "v1", "resource": "pods"},
  "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
  "requestResource": {"group": "", "version": "v1", "resource": "pods"},
  "namespace": "team-2", "operation": "CREATE",
  "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
    "groups": ["system:serviceaccounts", "system:authenticated"]},
  "object": pod, "oldObject": None, "dryRun": False,
  "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}
open(path, "w").write(json.dumps(review))
PY
}
review inject.json '{"mcp-guard.dev/inject": "enabled"}'
review skip.json '{}'
# Sanity: the inject body really is injected.
curl -sf --cacert ca.crt -H 'content-type: application/json' --data-binary @inject.json \
  "https://127.0.0.1:$WP/mutate" | grep -q '"patchType":"JSONPatch"' || die "inject case not injected"

cat >post.lua <<'LUA'
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
# wrk prints 812.00us / 1.23ms / 1.01s: convert to ms.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }

# 1. Bursts: CONCURRENCY reviews sent at once (a controller creating that many pods), 400 times
#    with a 20 ms pause: the latency each review sees. This is the figure the targets are for.
#    The webhook's own histogram (handler time, without TLS and queueing) is read before and
#    after, to separate the webhook's work from the machine's scheduling noise.
scrape() { curl -sf --cacert ca.crt "https://127.0.0.1:$WP/metrics" >"$1"; }
# server_quantiles BEFORE AFTER: "p50 p99" upper bucket bounds in ms of the reviews in between.
server_quantiles() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'mcp_guard_webhook_admission_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
rows = sorted(((float("inf") if k == "+Inf" else float(k)), b[k] - a.get(k, 0)) for k in b)
total = rows[-1][1]
def q(p):
    for le, n in rows:
        if n >= p * total:
            return "%.2f" % (le * 1000)
print(q(0.5), q(0.99))
PY
}
declare -A BP50 BP99 BMAX SP50 SP99
for case in inject skip; do
  scrape before.txt
  read -r BP50[$case] BP99[$case] BMAX[$case] _ < <("$LOAD" --url "https://127.0.0.1:$WP/mutate" \
    --ca ca.crt --body "$case.json" --concurrency "$CONCURRENCY")
  scrape after.txt
  read -r SP50[$case] SP99[$case] < <(server_quantiles before.txt after.txt)
  log "$case bursts of $CONCURRENCY: p50 ${BP50[$case]} ms, p99 ${BP99[$case]} ms, max ${BMAX[$case]} ms (handler p50 <= ${SP50[$case]} ms, p99 <= ${SP99[$case]} ms)"
done
# Baseline: one review at a time, the same client: what the machine adds with no concurrency.
read -r C1P50 C1P99 C1MAX _ < <("$LOAD" --url "https://127.0.0.1:$WP/mutate" --ca ca.crt \
  --body inject.json --concurrency 1 --bursts 2000 --pause-ms 1)
log "inject one at a time: p50 $C1P50 ms, p99 $C1P99 ms, max $C1MAX ms"

# 2. Saturation: wrk keeps CONCURRENCY reviews in flight for the whole run (closed loop), which
#    measures throughput; latency there is mostly queueing (Little's law: in flight / rate), and
#    wrk shares the 2 cores with the webhook.
declare -A P50 P99 RPS COUNT
for case in inject skip; do
  # Warmup (discarded), then the measured run, on the same number of keep-alive connections.
  BODY="$WORK/$case.json" wrk -t2 -c"$CONCURRENCY" -d2s -s post.lua "https://127.0.0.1:$WP/mutate" >/dev/null
  BODY="$WORK/$case.json" wrk -t2 -c"$CONCURRENCY" -d"${DURATION}s" --latency -s post.lua \
    "https://127.0.0.1:$WP/mutate" >"wrk-$case.txt"
  if grep -qE 'Non-2xx|Socket errors' "wrk-$case.txt"; then die "$case: errors: $(cat "wrk-$case.txt")"; fi
  P50[$case]=$(to_ms "$(awk '$1 == "50%" {print $2}' "wrk-$case.txt")")
  P99[$case]=$(to_ms "$(awk '$1 == "99%" {print $2}' "wrk-$case.txt")")
  RPS[$case]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "wrk-$case.txt")
  COUNT[$case]=$(awk '/requests in/ {print $1}' "wrk-$case.txt")
  log "$case: p50 ${P50[$case]} ms, p99 ${P99[$case]} ms, ${RPS[$case]} reviews/s"
done
RSS_KIB=$(awk '/^VmRSS/ {print $2}' "/proc/$WPID/status")
HWM_KIB=$(awk '/^VmHWM/ {print $2}' "/proc/$WPID/status")
CPU_TICKS=$(awk '{print $14 + $15}' "/proc/$WPID/stat")
TICKS=$(getconf CLK_TCK)
TOTAL=$((COUNT[inject] + COUNT[skip] + 2 * 420 * CONCURRENCY + 2020)) # wrk warmups excluded: a slight overestimate
CPU_US=$(awk -v t="$CPU_TICKS" -v hz="$TICKS" -v n="$TOTAL" 'BEGIN {printf "%.0f", t / hz * 1e6 / n}')
RSS_MIB=$(awk -v k="$RSS_KIB" 'BEGIN {printf "%.1f", k / 1024}')
HWM_MIB=$(awk -v k="$HWM_KIB" 'BEGIN {printf "%.1f", k / 1024}')
log "RSS ${RSS_MIB} MiB (peak ${HWM_MIB} MiB), ${CPU_US} us CPU per review"

OUT="$ROOT/bench/webhook/results"
mkdir -p "$OUT"
FILE="$OUT/$(date -u +%Y-%m-%d)-$NAME.md"
{
  echo "# webhook admission benchmark: $NAME ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
  echo "- control plane: $KUBE_VERSION_LINE"
  echo "- load: wrk, 2 threads, $CONCURRENCY concurrent keep-alive HTTPS connections, ${DURATION} s per case after a 2 s warmup"
  echo "- webhook: $("$BIN" --version), release build"
  echo
  echo "Bursts of $CONCURRENCY concurrent reviews (400 bursts, 20 ms apart; admission_load example):"
  echo
  echo "| case | p50 (ms) | p99 (ms) | max (ms) | handler p50 (ms) | handler p99 (ms) |"
  echo "|---|---|---|---|---|---|"
  for case in inject skip; do
    echo "| $case | ${BP50[$case]} | ${BP99[$case]} | ${BMAX[$case]} | <= ${SP50[$case]} | <= ${SP99[$case]} |"
  done
  echo
  echo "Handler: the webhook's own \`admission_duration_seconds\` histogram (bucket upper bounds), i.e."
  echo "parse, decide, patch, serialize; without TLS, sockets and waiting for a core."
  echo "One review at a time (inject, 2000 reviews): p50 $C1P50 ms, p99 $C1P99 ms, max $C1MAX ms."
  echo "Load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared)."
  echo
  echo "Saturation, $CONCURRENCY reviews always in flight (wrk, closed loop):"
  echo
  echo "| case | p50 (ms) | p99 (ms) | reviews/s |"
  echo "|---|---|---|---|"
  for case in inject skip; do
    echo "| $case | ${P50[$case]} | ${P99[$case]} | ${RPS[$case]} |"
  done
  echo
  echo "RSS after the runs: ${RSS_MIB} MiB; peak (VmHWM): ${HWM_MIB} MiB; CPU: ${CPU_US} µs per review."
  echo
  echo "Targets: p99 <= 5 ms, RSS <= 40 MiB."
} >"$FILE"
cat "$FILE"
log "wrote $FILE"
