#!/usr/bin/env bash
# mcp-guard benchmark: what a governed MCP request costs, side by side in one run:
#
#   direct    wrk -> rmcp example server (stateless; JSON answers, or SSE for the -sse scenarios)
#   nginx     wrk -> nginx (plain reverse proxy, upstream keep-alive) -> the same server
#   sidecar   wrk -> mcp-guard-sidecar (--deny-tools delete_everything) -> the same server
#   sidecar-otlp-down (with --otlp-down) the same sidecar, exporting OTLP to a dead endpoint
#   sidecar-governed  (with --governed) the same sidecar governing as in production: every request
#                     carries a real OpenID provider's JWT (verified), is decided by a realistic
#                     Rego policy (sidecar/benches/fixtures/realistic.rego), audited, and traced
#                     over OTLP to a live receiver (tests/scripts/otlp_receiver.py) on loopback
#   sidecar-governed-no-otlp  (with --no-otlp-twin, implies --governed) the governed sidecar
#                     without OTLP export: what the spans and metrics cost, beside it
#   sidecar-limits    (with --limits, implies --governed) the governed sidecar whose policy also puts
#                     every call under a rate limit (per subject, never reached): counted in the
#                     sidecar's local buckets
#   sidecar-limits-redis  the same limit counted fleet-wide in a real Redis (Debian redis-server,
#                     tests/scripts/install-redis.sh) on loopback: one EVALSHA per call
#
# Scenarios (--scenarios, default call): call (tools/call of echo, JSON answer), call-distinct
# (the same call with a text of its own every time: a governed sidecar remembers a decision for a
# repeated call, so here it evaluates every one), list (tools/list, JSON), call-sse and list-sse
# (the same answered as SSE by a --stateless-sse server). Each target
# of each scenario: a warmup (discarded), then a measured wrk run with the same connections; with
# --rounds N the targets take turns N times (order rotated) and each reports its median round.
# With --rate R, each target then takes a fixed-rate, latency-corrected load of R req/s
# (tests/examples/bench_client.rs): p50/p99 from each request's intended send time. With
# --streams N, a stateful server gets N sessions each holding a GET event stream through the
# sidecar (governed when --governed) and through nginx, and the proxy's RSS is read idle, with the
# streams open, and at its peak. --all is the full run. Reports req/s, latencies, ratios against
# direct, the proxy's CPU time per request and RSS; writes bench/results/<date>-<name>.md and
# .json. See bench/README.md.
#
# Usage: bench/run.sh [--name foundation] [--duration 10] [--warmup 2] [--connections 16]
#                     [--threads 2] [--rounds 1] [--scenarios call,call-distinct,list,call-sse,list-sse]
#                     [--rate 3000] [--streams 1000] [--all] [--no-nginx] [--otlp-down]
#                     [--governed] [--no-otlp-twin] [--limits] [--no-install] [--no-build] [--out DIR]
#                     [--sidecar BIN]
# --sidecar measures another build of mcp-guard-sidecar in every sidecar target (the static musl
# build the images ship, say: target/x86_64-unknown-linux-musl/release/mcp-guard-sidecar).
# Everything also reads from the environment: BENCH_NAME, BENCH_DURATION, BENCH_WARMUP,
# BENCH_CONNECTIONS, BENCH_THREADS, BENCH_ROUNDS, BENCH_SCENARIOS, BENCH_RATE, BENCH_STREAMS,
# BENCH_NGINX=0, BENCH_INSTALL=0, BENCH_BUILD=0 (use the release binaries already built),
# BENCH_OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${BENCH_NAME:-foundation}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-16}"
THREADS="${BENCH_THREADS:-2}"
ROUNDS="${BENCH_ROUNDS:-1}"
SCENARIO_LIST="${BENCH_SCENARIOS:-call}"
RATE="${BENCH_RATE:-0}"
STREAMS="${BENCH_STREAMS:-0}"
WITH_NGINX="${BENCH_NGINX:-1}"
INSTALL="${BENCH_INSTALL:-1}"
BUILD="${BENCH_BUILD:-1}"
OUT="${BENCH_OUT:-$ROOT/bench/results}"
SIDECAR_OVERRIDE="${BENCH_SIDECAR:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --scenarios) SCENARIO_LIST="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --streams) STREAMS="$2"; shift 2 ;;
    --all) WITH_GOVERNED=1; SCENARIO_LIST=call,call-distinct,list,call-sse,list-sse; RATE=3000; STREAMS=1000; shift ;;
    --no-nginx) WITH_NGINX=0; shift ;;
    --otlp-down) WITH_OTLP_DOWN=1; shift ;;
    --governed) WITH_GOVERNED=1; shift ;;
    --limits) WITH_GOVERNED=1; WITH_LIMITS=1; shift ;;
    --no-otlp-twin) WITH_GOVERNED=1; WITH_NO_OTLP=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --sidecar) SIDECAR_OVERRIDE="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

BENCH_TOOL=bench
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

IFS=, read -r -a SCENARIOS <<<"$SCENARIO_LIST"
[ "${#SCENARIOS[@]}" -gt 0 ] || die "--scenarios is empty (call, call-distinct, list, call-sse, list-sse)"
KINDS=()
for s in "${SCENARIOS[@]}"; do
  case "$s" in
    call|call-distinct|list) k=json ;;
    call-sse|list-sse) k=sse ;;
    *) die "unknown scenario $s in --scenarios (call, call-distinct, list, call-sse, list-sse)" ;;
  esac
  [[ " ${KINDS[*]} " == *" $k "* ]] || KINDS+=("$k")
done
[[ "$RATE" =~ ^[0-9]+$ ]] || die "--rate takes requests per second (0: off), not $RATE"
[[ "$STREAMS" =~ ^[0-9]+$ ]] || die "--streams takes a number of streams (0: off), not $STREAMS"

# --- tools -----------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
APT_UPDATED=0
apt_install() {
  [ "$INSTALL" = 1 ] || return 1
  command -v apt-get >/dev/null || return 1
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || return 1
    sudo="sudo -n"
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    $sudo apt-get update -qq >&2 || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  log "installing $2 (apt-get)"
  apt_install "$2" || die "$1 is missing and could not be installed; apt-get install $2"
  command -v "$1" >/dev/null || die "$1 still missing after installing $2"
}
need wrk wrk
need curl curl
if [ "$WITH_NGINX" = 1 ] && ! command -v nginx >/dev/null; then
  log "installing nginx (apt-get) for the baseline"
  apt_install nginx-light || apt_install nginx || true
  command -v nginx >/dev/null || { log "nginx unavailable: no nginx baseline"; WITH_NGINX=0; }
fi
# Each open stream holds a descriptor in the client, two in the proxy (client and server side)
# and one in the server; every process started here inherits this limit.
if [ "$STREAMS" -gt 0 ]; then
  FDS=$((STREAMS * 2 + 1024))
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$FDS" ]; then
    ulimit -n "$FDS" 2>/dev/null ||
      die "--streams $STREAMS needs about $FDS open files per process, and the limit is $(ulimit -n) (hard: $(ulimit -Hn)): raise it (ulimit -n $FDS, as root if need be) or ask for fewer streams"
  fi
fi

# --- binaries --------------------------------------------------------------------------------
CLIENT_NEEDED=0
{ [ "$RATE" -gt 0 ] || [ "$STREAMS" -gt 0 ]; } && CLIENT_NEEDED=1
# The load client is built every time, needed or not: it brings the tests' dev-dependencies, whose
# features change shared crates, so building without it would make (and measure) another sidecar.
if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p mcp-guard-sidecar -p mcp-guard-tests \
    --bin mcp-guard-sidecar --bin mcp-guard-example-server --example bench_client) || die "cargo build failed"
fi
TARGET_DIR="$(target_dir)"
SERVER_BIN="$TARGET_DIR/release/mcp-guard-example-server"
SIDECAR_BIN="${SIDECAR_OVERRIDE:-$TARGET_DIR/release/mcp-guard-sidecar}"
CLIENT_BIN="$TARGET_DIR/release/examples/bench_client"
{ [ -x "$SERVER_BIN" ] && [ -x "$SIDECAR_BIN" ]; } || die "release binaries not found in $TARGET_DIR"
[ "$CLIENT_NEEDED" = 0 ] || [ -x "$CLIENT_BIN" ] ||
  die "$CLIENT_BIN missing (--rate and --streams need it): drop --no-build, or cargo build --release -p mcp-guard-tests --example bench_client"
# (The help is read whole: grep -q leaving a pipe early would fail it under pipefail.)
if [[ " ${KINDS[*]} " == *" sse "* ]] && [[ "$("$SERVER_BIN" --help)" != *--stateless-sse* ]]; then
  die "$SERVER_BIN has no --stateless-sse (the SSE scenarios need it): rebuild it (drop --no-build)"
fi

# --- processes -------------------------------------------------------------------------------
bench_workdir bench
chmod 755 "$WORK"

start_upstream() { # start_upstream NAME FLAGS...: an example server; sets UP_STARTED (its port)
  local name="$1" pid
  shift
  free_port UP_STARTED
  "$SERVER_BIN" --listen "127.0.0.1:$UP_STARTED" "$@" >"$WORK/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$UP_STARTED" "$pid" "$name"
}
# start_sidecar NAME UPSTREAM_PORT FLAGS...: a sidecar in front of the example server on
# UPSTREAM_PORT, waited for until ready; sets S_PID, S_PORT, S_ADMIN. Its spans, if it exports
# any, carry the service name NAME.
start_sidecar() {
  local name="$1" up="$2"
  shift 2
  free_port S_PORT
  free_port S_ADMIN
  OTEL_SERVICE_NAME="$name" "$SIDECAR_BIN" --listen "127.0.0.1:$S_PORT" --admin-listen "127.0.0.1:$S_ADMIN" \
    --upstream-host 127.0.0.1 --upstream-port "$up" --path /mcp \
    --deny-tools delete_everything "$@" >"$WORK/$name.log" 2>"$WORK/$name.err" &
  S_PID=$!
  PIDS+=("$S_PID")
  wait_ready "http://127.0.0.1:$S_ADMIN/readyz" "$S_PID" "$name" 20
}
# nginx_server PORT UPSTREAM_PORT UPSTREAM_NAME [DIRECTIVES]: one server block proxying to the
# example server on UPSTREAM_PORT with upstream keep-alive.
nginx_server() {
  cat <<EOF
  upstream $3 { server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://$3;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$2;${4:+
      $4}
    }
  }
EOF
}
# start_nginx NAME WORKER_CONNECTIONS MAIN_DIRECTIVES SERVERS: an nginx with a prefix of its own
# under $WORK/NAME; waits for its first listening port (LISTEN_PORT); sets N_PID.
start_nginx() {
  local dir="$WORK/$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes auto;${3:+
$3}
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $2; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
$4
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$WORK/$1.log" 2>&1 &
  N_PID=$!
  PIDS+=("$N_PID")
}
children() { # children PID: direct child pids (nginx workers)
  local f rest fields
  for f in /proc/[0-9]*/stat; do
    rest="$(cat "$f" 2>/dev/null)" || continue
    rest="${rest##*) }"
    read -r -a fields <<<"$rest"
    if [ "${fields[1]}" = "$1" ]; then f="${f#/proc/}"; echo "${f%/stat}"; fi
  done
  return 0
}
wait_nginx() { # wait_nginx NAME PORT...: until nginx listens on every PORT and its workers run
  local port i
  for port in "${@:2}"; do wait_port "$port" "$N_PID" "$1"; done
  for i in $(seq 1 100); do
    [ -n "$(children "$N_PID")" ] && return 0
    sleep 0.05
  done
  die "$1 started no worker"
}

WITH_OTLP_DOWN="${WITH_OTLP_DOWN:-0}"
WITH_GOVERNED="${WITH_GOVERNED:-0}"
WITH_LIMITS="${WITH_LIMITS:-0}"
WITH_NO_OTLP="${WITH_NO_OTLP:-0}"
declare -A UP_PORT URL PROXY_PIDS AUTH
for k in "${KINDS[@]}"; do
  start_upstream "upstream-$k" "--stateless-$k"
  UP_PORT[$k]="$UP_STARTED"
done
# A process's name: the target's, with -sse for the one in front of the SSE server.
proc_name() { # proc_name TARGET KIND
  if [ "$2" = json ]; then echo "$1"; else echo "$1-$2"; fi
}
add_target() { # add_target TARGET KIND PORT PIDS...
  local t="$1" k="$2" port="$3"
  shift 3
  URL[$k.$t]="http://127.0.0.1:$port/mcp"
  PROXY_PIDS[$k.$t]="$*"
}
for k in "${KINDS[@]}"; do
  add_target direct "$k" "${UP_PORT[$k]}"
  start_sidecar "$(proc_name sidecar "$k")" "${UP_PORT[$k]}"
  add_target sidecar "$k" "$S_PORT" "$S_PID"
done

# --otlp-down: a second sidecar exporting spans and metrics to an OTLP endpoint that refuses
# every connection, measured beside the first: export trouble must not reach the request path.
if [ "$WITH_OTLP_DOWN" = 1 ]; then
  free_port DEAD_PORT
  for k in "${KINDS[@]}"; do
    start_sidecar "$(proc_name sidecar-otlp-down "$k")" "${UP_PORT[$k]}" --otlp-endpoint "http://127.0.0.1:$DEAD_PORT"
    add_target sidecar-otlp-down "$k" "$S_PORT" "$S_PID"
  done
fi

# --governed: a sidecar that verifies a real provider's JWT on every request, decides each call
# with a realistic Rego bundle, audits it and exports its span to a live OTLP receiver: what
# governing costs, beside the plain filter.
CACHE="${MCP_GUARD_CACHE:-${HOME:-/root}/.cache/mcp-guard}"
GOV_AUTH=""
GOV_FLAGS=()
RCV_PID=""
if [ "$WITH_GOVERNED" = 1 ]; then
  if [ "$INSTALL" = 1 ]; then
    log "installing the OpenID provider (tests/scripts/install-oidc.sh) and the OTLP receiver (tests/scripts/install-otlp.sh)"
    bash "$ROOT/tests/scripts/install-oidc.sh" >&2 || die "tests/scripts/install-oidc.sh failed"
    bash "$ROOT/tests/scripts/install-otlp.sh" >&2 || die "tests/scripts/install-otlp.sh failed"
  fi
  start_idp
  RESOURCE="$BENCH_RESOURCE"
  # The admin agent's client-credentials token (roles mcp-admin), valid for the whole run.
  TOKEN="$(admin_token)"
  GOV_AUTH="Bearer $TOKEN"
  start_otlp_receiver
  mkdir -p "$WORK/policy"
  cp "$ROOT/sidecar/benches/fixtures/realistic.rego" "$WORK/policy/realistic.rego"
  cp "$ROOT/sidecar/benches/fixtures/realistic.json" "$WORK/policy/data.json"
  AUTH_FLAGS=(--issuer "http://127.0.0.1:$IDP_PORT" --resource-uri "$RESOURCE")
  GOV_FLAGS=("${AUTH_FLAGS[@]}" --otlp-endpoint "http://127.0.0.1:$RCV_PORT")
  for k in "${KINDS[@]}"; do
    start_sidecar "$(proc_name sidecar-governed "$k")" "${UP_PORT[$k]}" "${GOV_FLAGS[@]}" --policy-dir "$WORK/policy"
    add_target sidecar-governed "$k" "$S_PORT" "$S_PID"
    # Governing for real: the same call without the token is refused.
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -X POST "http://127.0.0.1:$S_PORT/mcp" \
      -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
      --data '{"jsonrpc":"2.0","id":1,"method":"tools/list"}')" || true
    [ "$code" = 401 ] || die "governed sidecar: a request without a token got HTTP $code, not 401"
    if [ "$WITH_NO_OTLP" = 1 ]; then
      # The same governed sidecar with every flag but the OTLP endpoint.
      start_sidecar "$(proc_name sidecar-governed-no-otlp "$k")" "${UP_PORT[$k]}" "${AUTH_FLAGS[@]}" --policy-dir "$WORK/policy"
      add_target sidecar-governed-no-otlp "$k" "$S_PORT" "$S_PID"
    fi
  done
fi

# --limits: the governed sidecar's policy plus one rate limit on every call (a billion a day per
# subject: counted on every request, never reached), counted locally and, in a second sidecar,
# fleet-wide in Redis.
if [ "$WITH_LIMITS" = 1 ]; then
  if [ "$INSTALL" = 1 ]; then
    bash "$ROOT/tests/scripts/install-redis.sh" >&2 || die "tests/scripts/install-redis.sh failed"
  fi
  REDIS_ENV="$CACHE/redis/env.sh"
  [ -f "$REDIS_ENV" ] || die "no $REDIS_ENV: run tests/scripts/install-redis.sh"
  REDIS_SERVER="$(sed -n 's/^REDIS_SERVER=//p' "$REDIS_ENV")"
  REDIS_VERSION="$(sed -n 's/^REDIS_VERSION=//p' "$REDIS_ENV")"
  free_port REDIS_PORT
  "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$REDIS_PORT" "$REDIS_PID" redis
  mkdir -p "$WORK/policy-limits"
  cp "$WORK/policy/"* "$WORK/policy-limits/"
  cat >"$WORK/policy-limits/limits.rego" <<'EOT'
package mcp.authz

import rego.v1

limits contains {"name": "bench", "key": "subject", "per": "1d", "requests": 1000000000}
EOT
  for k in "${KINDS[@]}"; do
    start_sidecar "$(proc_name sidecar-limits "$k")" "${UP_PORT[$k]}" "${GOV_FLAGS[@]}" --policy-dir "$WORK/policy-limits"
    add_target sidecar-limits "$k" "$S_PORT" "$S_PID"
    name="$(proc_name sidecar-limits-redis "$k")"
    start_sidecar "$name" "${UP_PORT[$k]}" "${GOV_FLAGS[@]}" --policy-dir "$WORK/policy-limits" \
      --rate-limit-redis-url "redis://127.0.0.1:$REDIS_PORT"
    add_target sidecar-limits-redis "$k" "$S_PORT" "$S_PID"
    for i in $(seq 1 200); do
      up="$(curl -fsS "http://127.0.0.1:$S_ADMIN/metrics" 2>/dev/null | sed -n 's/^mcp_guard_rate_limit_store_up //p' || true)"
      [ "$up" = 1 ] && break
      [ "$i" = 200 ] && die "$name did not reach Redis after 10 s: $(tail -5 "$WORK/$name.err")"
      sleep 0.05
    done
  done
fi

NGINX_PID=""
if [ "$WITH_NGINX" = 1 ]; then
  declare -A NGINX_PORT
  servers=""
  for k in "${KINDS[@]}"; do
    free_port "NGINX_PORT[$k]"
    # SSE answers pass through as they come, as nginx is configured in front of SSE servers.
    directives=""
    [ "$k" = sse ] && directives="proxy_buffering off;"
    servers+="$(nginx_server "${NGINX_PORT[$k]}" "${UP_PORT[$k]}" "mcp_$k" "$directives")"$'\n'
  done
  start_nginx nginx 1024 "" "$servers"
  NGINX_PID="$N_PID"
  wait_nginx nginx "${NGINX_PORT[@]}"
fi

# --- measurement helpers ---------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { # cpu_ticks PID...: utime+stime summed
  local total=0 pid rest fields
  for pid in "$@"; do
    rest="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    rest="${rest##*) }"
    read -r -a fields <<<"$rest"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}
rss_kib() { # rss_kib FIELD PID...: VmRSS or VmHWM summed, KiB
  local field="$1" total=0 pid v
  shift
  for pid in "$@"; do
    v="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null)"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
# Syscalls and context switches of the proxy during the measured window, from `perf stat` (the
# kernel's counters: exact, and hardly moved by other load, unlike times). Left out when perf is
# missing or not allowed to attach.
PERF=0
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter,context-switches -- true >/dev/null 2>&1; then
  PERF=1
else
  log "perf stat cannot count syscalls here: the syscalls/req and switches/req columns stay empty"
fi
perf_start() { # perf_start OUT PID...: counts the processes' syscalls and switches until perf_stop
  [ "$PERF" = 1 ] || return 0
  local out="$1"
  shift
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(IFS=,; echo "$*")" -o "$out" &
  PERF_PID=$!
}
perf_stop() { # perf_stop: ends the count (in this shell: perf is its child), writing its file
  [ "$PERF" = 1 ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
}
perf_rates() { # perf_rates OUT REQUESTS: "syscalls/req switches/req"
  [ "$PERF" = 1 ] || { echo "– –"; return 0; }
  awk -F, -v n="$2" '
    $3 ~ /raw_syscalls:sys_enter/ { s = $1 }
    $3 ~ /context-switches/ { c = $1 }
    END { if (n > 0) printf "%.1f %.2f\n", s / n, c / n; else print "– –" }' "$1"
}
json_get() { # json_get JSON KEY: a number from a flat result (the last KEY in it)
  sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"
}
latency_get() { # latency_get JSON KEY: a percentile from a result's "latency_us" object
  json_get "$(sed -n 's/.*"latency_us":{\([^}]*\)}.*/\1/p' <<<"$1")" "$2"
}

META='"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"mcp-guard-bench","version":"0.1.0"},"io.modelcontextprotocol/clientCapabilities":{}}'
# check_target SCENARIO NAME URL [AUTHORIZATION]: one request with curl; the answer must be HTTP
# 200 with the scenario's content type and carry the echoed text (a call) or the echo tool (a list).
check_target() {
  local out auth=() mirror body expect ct
  case "$1" in
    call*) body='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello from wrk"},'"$META"'}}'
      mirror=(-H 'Mcp-Method: tools/call' -H 'Mcp-Name: echo'); expect='"text":"hello from wrk"' ;;
    *) body='{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{'"$META"'}}'
      mirror=(-H 'Mcp-Method: tools/list'); expect='"name":"echo"' ;;
  esac
  case "$1" in *-sse) ct=text/event-stream ;; *) ct=application/json ;; esac
  [ -n "${4:-}" ] && auth=(-H "Authorization: $4")
  out="$(curl -sS --max-time 5 -X POST "$3" "${auth[@]}" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \
    "${mirror[@]}" --data "$body" -w '\nHTTP %{http_code} %{content_type}')" ||
    die "$2 ($1): request failed"
  { grep -q '"id":1,' <<<"$out" && grep -q "$expect" <<<"$out"; } || die "$2 ($1): unexpected answer: $out"
  grep -q "^HTTP 200 $ct" <<<"$out" || die "$2 ($1): expected HTTP 200 $ct: $out"
  if [ "$ct" = text/event-stream ]; then
    grep -q "^data: .*$expect" <<<"$out" || die "$2 ($1): no SSE event carries the answer: $out"
  fi
}

declare -A RESULT CPU_US F_CPU SYS RSS_IDLE RSS_LOAD RSS_PEAK R_RESULT R_CPU R_SYS R_RSS_LOAD R_RSS_PEAK ROUND_RPS PICKED FIXED
method_of() { # method_of SCENARIO
  case "$1" in call*) echo tools/call ;; *) echo tools/list ;; esac
}
kind_of() { # kind_of SCENARIO
  case "$1" in *-sse) echo sse ;; *) echo json ;; esac
}
measure() { # measure SCENARIO TARGET ROUND: one warmup + one measured wrk run
  local s="$1" name="$2" round="$3" key="$1.$2.$3" k out before after requests r url method
  k="$(kind_of "$s")"
  url="${URL[$k.$name]}"
  method="$(method_of "$s")"
  local -a pids
  read -r -a pids <<<"${PROXY_PIDS[$k.$name]}"
  set -- "${pids[@]}"
  local authorization="${AUTH[$name]:-}"
  check_target "$s" "$name" "$url" "$authorization"
  log "$name, $s (round $round/$ROUNDS): warmup ${WARMUP}s, then ${DURATION}s measured, $CONNECTIONS connections"
  local distinct=0
  [ "$s" = call-distinct ] && distinct=1
  BENCH_AUTHORIZATION="$authorization" BENCH_METHOD="$method" BENCH_DISTINCT="$distinct" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$ROOT/bench/mcp-request.lua" "$url" >/dev/null
  before="$(cpu_ticks "$@")"
  [ $# -gt 0 ] && perf_start "$WORK/perf-$key.txt" "$@"
  out="$(BENCH_AUTHORIZATION="$authorization" BENCH_METHOD="$method" BENCH_DISTINCT="$distinct" wrk -t"$THREADS" -c"$CONNECTIONS" \
    -d"${DURATION}s" --latency -s "$ROOT/bench/mcp-request.lua" "$url")"
  after="$(cpu_ticks "$@")"
  [ $# -gt 0 ] && perf_stop
  printf '%s\n' "$out" >"$WORK/wrk-$key.txt"
  r="$(sed -n 's/^WRK_RESULT //p' <<<"$out")"
  [ -n "$r" ] || die "$name ($s): no result from wrk: $out"
  R_RESULT[$key]="$r"
  requests="$(json_get "$r" requests)"
  if [ $# -gt 0 ]; then
    R_CPU[$key]="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
      'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')"
    R_SYS[$key]="$(perf_rates "$WORK/perf-$key.txt" "$requests")"
    R_RSS_LOAD[$key]="$(rss_kib VmRSS "$@")"
    R_RSS_PEAK[$key]="$(rss_kib VmHWM "$@")"
  fi
  log "$name: $(json_get "$r" rps) req/s, p50 $(json_get "$r" p50) us, p99 $(json_get "$r" p99) us, errors {$(sed -n 's/.*"errors":{\(.*\)}}/\1/p' <<<"$r")}"
}
# measure_rate SCENARIO TARGET: the fixed-rate load (bench_client), after the same check.
measure_rate() {
  local s="$1" name="$2" k out url before after
  k="$(kind_of "$s")"
  url="${URL[$k.$name]}"
  local -a pids
  read -r -a pids <<<"${PROXY_PIDS[$k.$name]}"
  check_target "$s" "$name" "$url" "${AUTH[$name]:-}"
  log "$name, $s: ${RATE} req/s for ${WARMUP}s warmup + ${DURATION}s measured, $CONNECTIONS connections"
  before="$(cpu_ticks "${pids[@]}")"
  out="$(BENCH_AUTHORIZATION="${AUTH[$name]:-}" "$CLIENT_BIN" load --url "$url" --scenario "$s" \
    --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" --connections "$CONNECTIONS" \
    2>"$WORK/rate-$s.$name.err")" || die "$name ($s): bench_client failed: $(tail -3 "$WORK/rate-$s.$name.err")"
  after="$(cpu_ticks "${pids[@]}")"
  FIXED[$s.$name]="$out"
  # What a proxy that is not saturated spends on a request: its CPU over the whole fixed-rate
  # run (warmup included, as are its requests).
  [ "${#pids[@]}" -gt 0 ] && F_CPU[$s.$name]="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" \
    -v n="$(json_get "$out" sent_with_warmup)" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')"
  [ "$(json_get "$out" ok)" -gt 0 ] || die "$name ($s): no request answered correctly at $RATE req/s: $out"
  [ "$(json_get "$out" errors)" = 0 ] ||
    log "$name ($s): $(json_get "$out" errors) errors at $RATE req/s; first: $(sed -n 's/.*"first_error":"\([^"]*\)".*/\1/p' <<<"$out")"
  log "$name: at $RATE req/s p50 $(latency_get "$out" p50) us, p99 $(latency_get "$out" p99) us, p99.9 $(latency_get "$out" p999) us"
}

TARGETS=(direct)
[ -n "$NGINX_PID" ] && TARGETS+=(nginx)
TARGETS+=(sidecar)
[ "$WITH_OTLP_DOWN" = 1 ] && TARGETS+=(sidecar-otlp-down)
[ "$WITH_GOVERNED" = 1 ] && TARGETS+=(sidecar-governed)
[ "$WITH_NO_OTLP" = 1 ] && TARGETS+=(sidecar-governed-no-otlp)
[ "$WITH_LIMITS" = 1 ] && TARGETS+=(sidecar-limits sidecar-limits-redis)
for t in sidecar-governed sidecar-governed-no-otlp sidecar-limits sidecar-limits-redis; do AUTH[$t]="$GOV_AUTH"; done
if [ -n "$NGINX_PID" ]; then
  NGINX_PIDS="$NGINX_PID $(children "$NGINX_PID" | tr '\n' ' ')"
  # shellcheck disable=SC2086
  for k in "${KINDS[@]}"; do add_target nginx "$k" "${NGINX_PORT[$k]}" $NGINX_PIDS; done
fi
# Every proxy's resident set before any load.
for k in "${KINDS[@]}"; do
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    [ "$t" = direct ] || RSS_IDLE[$k.$t]="$(rss_kib VmRSS ${PROXY_PIDS[$k.$t]})"
  done
done

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for s in "${SCENARIOS[@]}"; do
  # Rounds rotate the order of the targets, so a change in background load does not always hit
  # the same one; each target's reported round is its median by req/s.
  for round in $(seq 1 "$ROUNDS"); do
    for i in "${!TARGETS[@]}"; do
      measure "$s" "${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}" "$round"
    done
  done
  if [ "$RATE" -gt 0 ]; then
    for t in "${TARGETS[@]}"; do measure_rate "$s" "$t"; done
  fi
done

# --streams: N sessions, each holding a standalone GET event stream open, through a sidecar of
# their own (governed when --governed) and through nginx, in front of a stateful example server.
declare -A ST_IDLE ST_OPEN ST_PEAK ST_RESULT
ST_TARGETS=()
hold_streams() { # hold_streams TARGET URL PIDS...: opens the streams, reads the RSS, closes them
  local t="$1" url="$2" pid i out
  shift 2
  ST_IDLE[$t]="$(rss_kib VmRSS "$@")"
  log "$t: opening $STREAMS sessions with a GET stream each"
  BENCH_AUTHORIZATION="${AUTH[$t]:-}" "$CLIENT_BIN" streams --url "$url" --sessions "$STREAMS" \
    >"$WORK/streams-$t.out" 2>"$WORK/streams-$t.err" &
  pid=$!
  PIDS+=("$pid")
  for i in $(seq 1 1200); do
    grep -q '"event":"open"' "$WORK/streams-$t.out" && break
    kill -0 "$pid" 2>/dev/null ||
      die "$t: the streams did not open: $(tail -3 "$WORK/streams-$t.err")"
    [ "$i" = 1200 ] && die "$t: $STREAMS streams not open after 120 s"
    sleep 0.1
  done
  sleep 1
  ST_OPEN[$t]="$(rss_kib VmRSS "$@")"
  ST_PEAK[$t]="$(rss_kib VmHWM "$@")"
  kill -TERM "$pid"
  wait "$pid" || die "$t: not every stream stayed open: $(tail -3 "$WORK/streams-$t.err")"
  ST_RESULT[$t]="$(grep '"event":"open"' "$WORK/streams-$t.out")"
  log "$t: RSS $(mib "${ST_IDLE[$t]}") MiB idle, $(mib "${ST_OPEN[$t]}") MiB with $STREAMS streams open"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
if [ "$STREAMS" -gt 0 ]; then
  start_upstream upstream-sessions
  ST_UP="$UP_STARTED"
  if [ "$WITH_GOVERNED" = 1 ]; then
    st_sidecar=sidecar-governed
    start_sidecar sidecar-governed-streams "$ST_UP" "${GOV_FLAGS[@]}" --policy-dir "$WORK/policy"
  else
    st_sidecar=sidecar
    start_sidecar sidecar-streams "$ST_UP"
  fi
  ST_TARGETS+=("$st_sidecar")
  hold_streams "$st_sidecar" "http://127.0.0.1:$S_PORT/mcp" "$S_PID"
  if [ "$WITH_NGINX" = 1 ]; then
    free_port ST_NGINX_PORT
    start_nginx nginx-streams $((STREAMS * 2 + 512)) "worker_rlimit_nofile $((STREAMS * 2 + 1024));" \
      "$(nginx_server "$ST_NGINX_PORT" "$ST_UP" mcp_sessions 'proxy_buffering off; proxy_read_timeout 1h;')"
    wait_nginx nginx-streams "$ST_NGINX_PORT"
    ST_TARGETS+=(nginx)
    # shellcheck disable=SC2046
    hold_streams nginx "http://127.0.0.1:$ST_NGINX_PORT/mcp" "$N_PID" $(children "$N_PID")
  fi
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

for s in "${SCENARIOS[@]}"; do
  for t in "${TARGETS[@]}"; do
    sorted="$(for round in $(seq 1 "$ROUNDS"); do
      printf '%s %s\n' "$(json_get "${R_RESULT[$s.$t.$round]}" rps)" "$round"
    done | sort -n -k1,1)"
    ROUND_RPS[$s.$t]="$(awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }' <<<"$(for round in $(seq 1 "$ROUNDS"); do json_get "${R_RESULT[$s.$t.$round]}" rps; done)")"
    pick="$(awk -v m=$(((ROUNDS + 1) / 2)) 'NR == m { print $2 }' <<<"$sorted")"
    PICKED[$s.$t]="$pick"
    RESULT[$s.$t]="${R_RESULT[$s.$t.$pick]}"
    if [ "$t" != direct ]; then
      CPU_US[$s.$t]="${R_CPU[$s.$t.$pick]}"
      SYS[$s.$t]="${R_SYS[$s.$t.$pick]}"
      RSS_LOAD[$s.$t]="${R_RSS_LOAD[$s.$t.$pick]}"
      RSS_PEAK[$s.$t]="$(for round in $(seq 1 "$ROUNDS"); do echo "${R_RSS_PEAK[$s.$t.$round]}"; done | sort -n | tail -1)"
    fi
  done
done

# The live receiver must have got the governed sidecars' spans (exported every few seconds).
declare -A SPANS
if [ -n "$RCV_PID" ]; then
  count_spans() { # count_spans: "service spans" lines from the receiver's summary
    "$OTLP_PYTHON" - "$WORK/otlp.jsonl" <<'EOF'
import collections, json, sys
counts = collections.Counter()
try:
    lines = open(sys.argv[1], encoding="utf-8")
except FileNotFoundError:
    lines = []
for line in lines:
    counts.update(json.loads(line).get("spans", {}))
for name, n in sorted(counts.items()):
    print(name, n)
EOF
  }
  for i in $(seq 1 30); do
    missing=""
    while read -r svc n; do SPANS[$svc]="$n"; done < <(count_spans)
    for k in "${KINDS[@]}"; do
      svc="$(proc_name sidecar-governed "$k")"
      [ "${SPANS[$svc]:-0}" -gt 0 ] || missing="$missing $svc"
    done
    [ -z "$missing" ] && break
    [ "$i" = 30 ] && die "the OTLP receiver got no span from$missing (log: $(tail -3 "$WORK/otlp-receiver.log"))"
    sleep 1
  done
  RCV_CPU_S="$(awk -v t="$(cpu_ticks "$RCV_PID")" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz }')"
fi

# --- report ----------------------------------------------------------------------------------
DATE="$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"
MD="$OUT/$DATE-$NAME.md"
JSON="$OUT/$DATE-$NAME.json"
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
DIRTY="$(cd "$ROOT" && { git diff --quiet HEAD 2>/dev/null && echo false || echo true; })"
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)"
NCPU="$(nproc)"
KERNEL="$(uname -r)"
RUSTC="$(rustc --version 2>/dev/null || echo unknown)"
WRK_VERSION="$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)"
NGINX_VERSION=""
[ -n "$NGINX_PID" ] && NGINX_VERSION="$(nginx -v 2>&1 | sed 's/.*nginx\///' || true)"
lines() { # lines FILE...: the lines of those that exist, summed
  local f n=0
  for f in "$@"; do [ ! -f "$f" ] || n=$((n + $(wc -l <"$f"))); done
  echo "$n"
}
SIDECAR_LOG_LINES="$(lines "$WORK/sidecar.log" "$WORK/sidecar-sse.log")"

ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
join() { # join SEPARATOR ITEM...: the items with SEPARATOR between them
  local sep="$1" out="" item first=1
  shift
  for item in "$@"; do
    [ "$first" = 1 ] || out+="$sep"
    out+="$item"
    first=0
  done
  printf '%s' "$out"
}
# shellcheck disable=SC2016 # Markdown's backquotes
scenario_label() { # scenario_label SCENARIO
  case "$1" in
    call) echo '`tools/call` of `echo`, JSON answer' ;;
    call-distinct) echo '`tools/call` of `echo` with a text of its own each time (no decision repeats), JSON answer' ;;
    list) echo '`tools/list`, JSON answer' ;;
    call-sse) echo '`tools/call` of `echo`, SSE answer' ;;
    list-sse) echo '`tools/list`, SSE answer' ;;
  esac
}
added() { # added SCENARIO TARGET FIELD: a fixed-rate percentile over direct's, µs
  echo $(($(latency_get "${FIXED[$1.$2]}" "$3") - $(latency_get "${FIXED[$1.direct]}" "$3")))
}
table() { # table SCENARIO: the markdown table of one scenario
  local s="$1" t r rps p50 p99 errs f d_rps d_p50 d_p99 sys_req sw_req
  d_rps="$(json_get "${RESULT[$s.direct]}" rps)"
  d_p50="$(json_get "${RESULT[$s.direct]}" p50)"
  d_p99="$(json_get "${RESULT[$s.direct]}" p99)"
  printf '| target | req/s | vs direct | p50 ms | +p50 ms | p99 ms | +p99 ms | proxy CPU µs/req | proxy syscalls/req | proxy switches/req | proxy RSS MiB (idle / load / peak) | errors |'
  [ "$RATE" -gt 0 ] && printf ' p50 ms @%s/s | +p50 ms @%s/s | p99 ms @%s/s | +p99 ms @%s/s | proxy CPU µs/req @%s/s | errors @%s/s |' "$RATE" "$RATE" "$RATE" "$RATE" "$RATE" "$RATE"
  printf '\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
  [ "$RATE" -gt 0 ] && printf -- '---:|---:|---:|---:|---:|---:|'
  printf '\n'
  for t in "${TARGETS[@]}"; do
    r="${RESULT[$s.$t]}"
    rps="$(json_get "$r" rps)"; p50="$(json_get "$r" p50)"; p99="$(json_get "$r" p99)"
    errs="$(awk -v a="$(json_get "$r" connect)" -v b="$(json_get "$r" read)" -v c="$(json_get "$r" write)" \
      -v d="$(json_get "$r" status)" -v e="$(json_get "$r" timeout)" 'BEGIN { print a + b + c + d + e }')"
    if [ "$t" = direct ]; then
      printf '| %s | %.0f | 100 %% | %s | – | %s | – | – | – | – | – | %s |' "$t" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$errs"
    else
      read -r sys_req sw_req <<<"${SYS[$s.$t]}"
      printf '| %s | %.0f | %s %% | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s |' "$t" "$rps" \
        "$(awk -v a="$rps" -v b="$d_rps" 'BEGIN { printf "%.0f", 100 * a / b }')" \
        "$(ms "$p50")" "$(ms $((p50 - d_p50)))" "$(ms "$p99")" "$(ms $((p99 - d_p99)))" \
        "${CPU_US[$s.$t]}" "$sys_req" "$sw_req" "$(mib "${RSS_IDLE[$(kind_of "$s").$t]}")" \
        "$(mib "${RSS_LOAD[$s.$t]}")" "$(mib "${RSS_PEAK[$s.$t]}")" "$errs"
    fi
    if [ "$RATE" -gt 0 ]; then
      f="${FIXED[$s.$t]}"
      if [ "$t" = direct ]; then
        printf ' %s | – | %s | – | – | %s |' "$(ms "$(latency_get "$f" p50)")" "$(ms "$(latency_get "$f" p99)")" "$(json_get "$f" errors)"
      else
        printf ' %s | %s | %s | %s | %s | %s |' "$(ms "$(latency_get "$f" p50)")" "$(ms "$(added "$s" "$t" p50)")" \
          "$(ms "$(latency_get "$f" p99)")" "$(ms "$(added "$s" "$t" p99)")" "${F_CPU[$s.$t]}" "$(json_get "$f" errors)"
      fi
    fi
    printf '\n'
  done
}
rate_notes() { # rate_notes SCENARIO: a line for each target that fell behind the fixed rate
  local t late notes=""
  [ "$RATE" -gt 0 ] || return 0
  for t in "${TARGETS[@]}"; do
    late="$(awk -v e="$(json_get "${FIXED[$1.$t]}" elapsed_s)" -v d="$DURATION" 'BEGIN { if (e - d > 0.5) printf "%.1f", e - d }')"
    [ -z "$late" ] || notes+="- \`$t\` fell behind $RATE req/s: its last answer came $late s after the last request was due, so its latencies at that rate are mostly time spent queueing."$'\n'
  done
  [ -z "$notes" ] || printf '%s\n' "$notes"
}
# verdict VALUE OP LIMIT UNIT: "met" or "missed by" how much
verdict() {
  awk -v v="$1" -v l="$3" -v op="$2" -v unit="$4" 'BEGIN {
    ok = (op == "<=") ? (v <= l) : (v >= l)
    if (ok) print "met"; else printf "missed by %.3g%s\n", (op == "<=") ? v - l : l - v, unit }'
}
# targets_table: issue 23's targets, read off the governed sidecar (the plain one without
# --governed) against nginx in the same run.
targets_table() {
  local s g="sidecar" k rps n_rps cpu n_cpu
  [ "$WITH_GOVERNED" = 1 ] && g=sidecar-governed
  printf '| scenario | %s req/s vs nginx (≥ 90 %%) | CPU µs/req vs nginx (≤ 1.5×) |' "$g"
  [ "$RATE" -gt 0 ] && printf ' CPU µs/req @%s/s vs nginx (≤ 1.5×) | +p50 @%s/s vs nginx (≤ nginx + 0.1 ms) | +p99 @%s/s (≤ 1 ms) |' "$RATE" "$RATE" "$RATE"
  printf ' RSS idle (≤ 15 MiB) | peak RSS under load (≤ 40 MiB) |\n|---|---|---|'
  [ "$RATE" -gt 0 ] && printf -- '---|---|---|'
  printf -- '---|---|\n'
  for s in "${SCENARIOS[@]}"; do
    k="$(kind_of "$s")"
    rps="$(json_get "${RESULT[$s.$g]}" rps)"; n_rps="$(json_get "${RESULT[$s.nginx]}" rps)"
    cpu="${CPU_US[$s.$g]}"; n_cpu="${CPU_US[$s.nginx]}"
    printf '| %s | %s %%: %s | %s×: %s |' "$s" "$(awk -v a="$rps" -v b="$n_rps" 'BEGIN { printf "%.0f", 100 * a / b }')" \
      "$(verdict "$(awk -v a="$rps" -v b="$n_rps" 'BEGIN { print 100 * a / b }')" ">=" 90 " points")" \
      "$(awk -v a="$cpu" -v b="$n_cpu" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')" \
      "$(verdict "$(awk -v a="$cpu" -v b="$n_cpu" 'BEGIN { print (b > 0 ? a / b : 0) }')" "<=" 1.5 ×)"
    if [ "$RATE" -gt 0 ]; then
      cpu="${F_CPU[$s.$g]}"; n_cpu="${F_CPU[$s.nginx]}"
      printf ' %s×: %s |' "$(awk -v a="$cpu" -v b="$n_cpu" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')" \
        "$(verdict "$(awk -v a="$cpu" -v b="$n_cpu" 'BEGIN { print (b > 0 ? a / b : 0) }')" "<=" 1.5 ×)"
      printf ' %s ms vs %s ms: %s | %s ms: %s |' "$(ms "$(added "$s" "$g" p50)")" "$(ms "$(added "$s" nginx p50)")" \
        "$(verdict "$(ms "$(added "$s" "$g" p50)")" "<=" "$(ms $(($(added "$s" nginx p50) + 100)))" " ms")" \
        "$(ms "$(added "$s" "$g" p99)")" "$(verdict "$(ms "$(added "$s" "$g" p99)")" "<=" 1 " ms")"
    fi
    printf ' %s MiB: %s | %s MiB: %s |\n' "$(mib "${RSS_IDLE[$k.$g]}")" "$(verdict "$(mib "${RSS_IDLE[$k.$g]}")" "<=" 15 " MiB")" \
      "$(mib "${RSS_PEAK[$s.$g]}")" "$(verdict "$(mib "${RSS_PEAK[$s.$g]}")" "<=" 40 " MiB")"
  done
}

# shellcheck disable=SC2016 # Markdown's backquotes
{
  printf '# Benchmark %s: %s\n\n' "$NAME" "$DATE"
  if [ "${#SCENARIOS[@]}" = 1 ] && [ "${SCENARIOS[0]}" = call ]; then
    printf 'MCP 2026-07-28 stateless `tools/call` of `echo` (POST /mcp, JSON answer) against the rmcp example\n'
    printf 'server in `--stateless-json` mode; wrk, %s connections, %s threads, %s s warmup then %s s measured per\n' \
      "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION"
  else
    items=()
    for s in "${SCENARIOS[@]}"; do items+=("$(scenario_label "$s") (\`$s\`)"); done
    printf 'MCP 2026-07-28 stateless requests (POST /mcp), one table per scenario: %s.' "$(join '; ' "${items[@]}")"
    printf '\nThe server is the rmcp example server in `--stateless-json` mode (JSON answers) or in\n'
    printf '`--stateless-sse` mode (SSE answers: a `text/event-stream` ending after the answer'"'"'s event), one process\n'
    printf 'each; wrk, %s connections, %s threads, %s s warmup then %s s measured per\n' "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION"
  fi
  printf 'target, all on loopback, targets measured one after the other in one run. Sidecar policy:\n'
  printf '`--deny-tools delete_everything`.\n'
  if [ "$WITH_GOVERNED" = 1 ]; then
    printf '`sidecar-governed`: the same, and every request carries a real OpenID provider'"'"'s RS256 JWT that\n'
    printf 'the sidecar verifies (`--issuer`; the verified token is cached, as for an agent reusing its token)\n'
    printf 'and turns into identity headers, each call is decided by `sidecar/benches/fixtures/realistic.rego`\n'
    printf '(about 20 rules, `--policy-dir`; a call repeated, as in `call`, is decided once and then\n'
    printf 'answered from the bundle'"'"'s memo of decisions; in `call-distinct` every call is evaluated)\n'
    printf 'and audited to stdout like the other sidecar, and its span is\n'
    printf 'exported over OTLP (HTTP/protobuf, every request sampled) to a live receiver on loopback\n'
    printf '(`tests/scripts/otlp_receiver.py --summary`, which parsed every export and counted its spans:\n'
    items=()
    for svc in "${!SPANS[@]}"; do items+=("${SPANS[$svc]} from \`$svc\`"); done
    printf '%s s of CPU during the run, not in the proxy column). Spans it received, by service name: %s.' \
      "$RCV_CPU_S" "$(join '; ' "${items[@]}")"
    printf '\n(The SDK'"'"'s batch queue drops the spans it cannot export in time; none are waited for.)\n'
  fi
  if [ "$WITH_NO_OTLP" = 1 ]; then
    printf '`sidecar-governed-no-otlp`: the governed sidecar without `--otlp-endpoint` (no spans, no OTLP\n'
    printf 'metrics): beside `sidecar-governed`, what OpenTelemetry export costs.\n'
  fi
  if [ "$WITH_LIMITS" = 1 ]; then
    printf '`sidecar-limits`: the governed sidecar with one more rule, a rate limit on every call\n'
    printf '(`{"key": "subject", "per": "1d", "requests": 1000000000}`: counted, never reached) in local buckets;\n'
    printf '`sidecar-limits-redis`: the same limit counted in Redis %s on loopback (one EVALSHA per call;\n' "$REDIS_VERSION"
    printf 'the Redis server'"'"'s own CPU is not in the proxy column).\n'
  fi
  if [ "$RATE" -gt 0 ]; then
    printf 'Columns `@%s/s`: each target then took a fixed, open-loop load of %s req/s on %s connections\n' "$RATE" "$RATE" "$CONNECTIONS"
    printf '(`tests/examples/bench_client.rs`; %s s warmup, %s s measured), every answer checked; a request'"'"'s\n' "$WARMUP" "$DURATION"
    printf 'latency runs from its intended send time (coordinated omission corrected) to its answer: the end\n'
    printf 'of a JSON body, or the arrival of the SSE event carrying it. `+` is over direct at the same rate.\n'
  fi
  printf '\n'
  for s in "${SCENARIOS[@]}"; do
    [ "${#SCENARIOS[@]}" -gt 1 ] && printf '### %s\n\n' "$(scenario_label "$s")"
    table "$s"
    printf '\n'
    rate_notes "$s"
  done
  if [ "$STREAMS" -gt 0 ]; then
    printf '### %s open GET streams\n\n' "$STREAMS"
    printf '%s MCP sessions (`initialize`, `notifications/initialized`, 2025-11-25) against the example server\n' "$STREAMS"
    printf 'in its default, stateful mode, each holding one standalone `GET /mcp` event stream (checked `200\n'
    printf 'text/event-stream`) on a connection of its own, through a fresh `%s`' "$st_sidecar"
    [ -n "${ST_NGINX_PORT:-}" ] && printf '\nand through nginx (`proxy_buffering off`)'
    printf '. RSS of the proxy (nginx: master and workers\nsummed) before, with every stream open, and its peak.\n\n'
    printf '| target | streams | opened in s | RSS idle MiB | RSS with the streams MiB | peak MiB |\n|---|---:|---:|---:|---:|---:|\n'
    for t in "${ST_TARGETS[@]}"; do
      printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$(json_get "${ST_RESULT[$t]}" open)" \
        "$(json_get "${ST_RESULT[$t]}" opening_s)" "$(mib "${ST_IDLE[$t]}")" "$(mib "${ST_OPEN[$t]}")" "$(mib "${ST_PEAK[$t]}")"
    done
    printf '\n'
  fi
  if [ -n "$NGINX_PID" ] && { [ "$RATE" -gt 0 ] || [ "$STREAMS" -gt 0 ] || [ "${#SCENARIOS[@]}" -gt 1 ]; }; then
    printf '### Targets\n\n'
    printf 'The performance targets (issue 23), as ratios within this run:\n\n'
    targets_table
    [ "$STREAMS" -gt 0 ] && printf '\nRSS with %s open streams (≤ 64 MiB): %s MiB: %s.\n' "$STREAMS" \
      "$(mib "${ST_PEAK[$st_sidecar]}")" "$(verdict "$(mib "${ST_PEAK[$st_sidecar]}")" "<=" 64 " MiB")"
    printf '\n'
  fi
  printf -- '- machine: %s × %s, Linux %s; %s; wrk %s' "$NCPU" "$CPU_MODEL" "$KERNEL" "$RUSTC" "$WRK_VERSION"
  [ -n "$NGINX_VERSION" ] && printf '; nginx %s (worker_processes auto, upstream keepalive)' "$NGINX_VERSION"
  printf '\n- commit: %s%s\n' "$COMMIT" "$([ "$DIRTY" = true ] && echo ' (with uncommitted changes)')"
  [ -z "$SIDECAR_OVERRIDE" ] || printf -- '- sidecar binary: %s (%s)\n' "$SIDECAR_BIN" "$(file -b "$SIDECAR_BIN" 2>/dev/null | cut -d, -f1,4 || true)"
  printf -- '- client, server and proxy share the same %s cores: the numbers compare targets within this run;\n' "$NCPU"
  printf '  they are not absolute capacities. CPU per request is the proxy process'"'"'s user+system time during\n'
  printf '  the measured window divided by the requests served (resolution 1/%s s).\n' "$CLK_TCK"
  if [ "$ROUNDS" -gt 1 ]; then
    printf -- '- %s rounds, targets taking turns (order rotated); each row is the target'"'"'s median round by req/s.\n' "$ROUNDS"
    printf '  req/s of every round:'
    for s in "${SCENARIOS[@]}"; do
      for t in "${TARGETS[@]}"; do printf ' %s%s [%s];' "$t" "$([ "${#SCENARIOS[@]}" -gt 1 ] && echo " ($s)")" "${ROUND_RPS[$s.$t]}"; done
    done
    printf '\n'
  fi
  printf -- '- load average (1, 5, 15 min) before: %s, after: %s\n' "$LOAD_BEFORE" "$LOAD_AFTER"
  printf -- '- sidecar stdout (audit) lines during the run: %s\n' "$SIDECAR_LOG_LINES"
  if [ "$WITH_GOVERNED" = 1 ]; then
    printf -- '- governed sidecar stdout (audit) lines during the run: %s\n' \
      "$(lines "$WORK/sidecar-governed.log" "$WORK/sidecar-governed-sse.log")"
  fi
  printf '\nRaw wrk output:\n'
  for s in "${SCENARIOS[@]}"; do
    for t in "${TARGETS[@]}"; do
      printf '\n<details><summary>%s%s (round %s)</summary>\n\n```\n' "$t" "$([ "${#SCENARIOS[@]}" -gt 1 ] && echo ", $s")" "${PICKED[$s.$t]}"
      grep -v '^WRK_RESULT' "$WORK/wrk-$s.$t.${PICKED[$s.$t]}.txt"
      printf '```\n</details>\n'
    done
  done
  if [ "$RATE" -gt 0 ]; then
    printf '\nbench_client output (latencies and the pacing thread'"'"'s lateness in µs):\n\n```\n'
    for s in "${SCENARIOS[@]}"; do
      for t in "${TARGETS[@]}"; do printf '%s %s %s\n' "$s" "$t" "${FIXED[$s.$t]}"; done
    done
    printf '```\n'
  fi
} >"$MD"

targets_json() { # targets_json SCENARIO INDENT: the "targets" object of one scenario
  local s="$1" ind="$2" n=0 t r f d_rps d_p50 d_p99 sys_req sw_req
  d_rps="$(json_get "${RESULT[$s.direct]}" rps)"
  d_p50="$(json_get "${RESULT[$s.direct]}" p50)"
  d_p99="$(json_get "${RESULT[$s.direct]}" p99)"
  printf '{\n'
  for t in "${TARGETS[@]}"; do
    n=$((n + 1))
    r="${RESULT[$s.$t]}"
    printf '%s  "%s": {"wrk": %s, "round": %s, "rps_by_round": [%s]' "$ind" "$t" "$r" "${PICKED[$s.$t]}" "${ROUND_RPS[$s.$t]}"
    if [ "$t" != direct ]; then
      printf ', "vs_direct": {"rps_ratio": %s, "p50_added_us": %s, "p99_added_us": %s}' \
        "$(awk -v a="$(json_get "$r" rps)" -v b="$d_rps" 'BEGIN { printf "%.4f", a / b }')" \
        "$(($(json_get "$r" p50) - d_p50))" "$(($(json_get "$r" p99) - d_p99))"
      read -r sys_req sw_req <<<"${SYS[$s.$t]}"
      printf ', "proxy_cpu_us_per_request": %s, "proxy_syscalls_per_request": %s, "proxy_switches_per_request": %s, "proxy_rss_kib": {"idle": %s, "load": %s, "peak": %s}' \
        "${CPU_US[$s.$t]}" "$([ "$sys_req" = – ] && echo null || echo "$sys_req")" \
        "$([ "$sw_req" = – ] && echo null || echo "$sw_req")" "${RSS_IDLE[$(kind_of "$s").$t]}" "${RSS_LOAD[$s.$t]}" "${RSS_PEAK[$s.$t]}"
    fi
    if [ "$RATE" -gt 0 ]; then
      f="${FIXED[$s.$t]}"
      printf ', "fixed_rate": %s' "$f"
      [ "$t" != direct ] && printf ', "fixed_rate_added_us": {"p50": %s, "p99": %s}, "fixed_rate_proxy_cpu_us_per_request": %s' \
        "$(added "$s" "$t" p50)" "$(added "$s" "$t" p99)" "${F_CPU[$s.$t]}"
    fi
    printf '}%s\n' "$([ "$n" -lt "${#TARGETS[@]}" ] && echo ,)"
  done
  printf '%s}' "$ind"
}
{
  printf '{\n  "name": "%s",\n  "date": "%s",\n  "commit": "%s",\n  "dirty": %s,\n' "$NAME" "$DATE" "$COMMIT" "$DIRTY"
  printf '  "machine": {"cpus": %s, "cpu_model": "%s", "kernel": "%s", "rustc": "%s", "wrk": "%s", "nginx": "%s"},\n' \
    "$NCPU" "$CPU_MODEL" "$KERNEL" "$RUSTC" "$WRK_VERSION" "$NGINX_VERSION"
  if [ "${#SCENARIOS[@]}" = 1 ] && [ "${SCENARIOS[0]}" = call ]; then
    printf '  "settings": {"scenario": "tools/call echo, MCP 2026-07-28 stateless, rmcp --stateless-json upstream", "connections": %s, "threads": %s, "warmup_s": %s, "duration_s": %s, "rounds": %s, "sidecar_flags": "--deny-tools delete_everything"' \
      "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION" "$ROUNDS"
  else
    printf '  "settings": {"scenarios": [%s], "connections": %s, "threads": %s, "warmup_s": %s, "duration_s": %s, "rounds": %s, "sidecar_flags": "--deny-tools delete_everything"' \
      "$(printf '"%s",' "${SCENARIOS[@]}" | sed 's/,$//')" "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION" "$ROUNDS"
  fi
  [ "$RATE" -gt 0 ] && printf ', "fixed_rate_rps": %s' "$RATE"
  [ "$STREAMS" -gt 0 ] && printf ', "streams": %s' "$STREAMS"
  printf '},\n'
  printf '  "loadavg": {"before": "%s", "after": "%s"},\n' "$LOAD_BEFORE" "$LOAD_AFTER"
  if [ -n "$RCV_PID" ]; then
    items=()
    for svc in "${!SPANS[@]}"; do items+=("\"$svc\": ${SPANS[$svc]}"); done
    printf '  "otlp_receiver": {"cpu_s": %s, "spans": {%s}},\n' "$RCV_CPU_S" "$(join ', ' "${items[@]}")"
  fi
  if [ "$STREAMS" -gt 0 ]; then
    items=()
    for t in "${ST_TARGETS[@]}"; do
      items+=("\"$t\": {\"client\": ${ST_RESULT[$t]}, \"rss_kib\": {\"idle\": ${ST_IDLE[$t]}, \"streams\": ${ST_OPEN[$t]}, \"peak\": ${ST_PEAK[$t]}}}")
    done
    printf '  "streams": {"sessions": %s, "targets": {%s}},\n' "$STREAMS" "$(join ', ' "${items[@]}")"
  fi
  if [ "${#SCENARIOS[@]}" = 1 ]; then
    printf '  "targets": %s\n' "$(targets_json "${SCENARIOS[0]}" '  ')"
  else
    items=()
    for s in "${SCENARIOS[@]}"; do items+=("    \"$s\": {\"targets\": $(targets_json "$s" '    ')}"); done
    printf '  "scenarios": {\n%s\n  }\n' "$(join $',\n' "${items[@]}")"
  fi
  printf '}\n'
} >"$JSON"

log "wrote $MD and $JSON"
sed -n '/^| target/,/^$/p' "$MD"
