#!/usr/bin/env bash
# mcp-guard benchmark: MCP tools/call throughput and latency, side by side in one run:
#
#   direct    wrk -> rmcp example server (stateless, JSON answers)
#   nginx     wrk -> nginx (plain reverse proxy, upstream keep-alive) -> the same server
#   sidecar   wrk -> mcp-guard-sidecar (--deny-tools delete_everything) -> the same server
#   sidecar-otlp-down (with --otlp-down) the same sidecar, exporting OTLP to a dead endpoint
#   sidecar-governed  (with --governed) the same sidecar governing as in production: every request
#                     carries a real OpenID provider's JWT (verified), is decided by a realistic
#                     Rego policy (sidecar/benches/fixtures/realistic.rego) and audited
#   sidecar-limits    (with --limits, implies --governed) the governed sidecar whose policy also puts
#                     every call under a rate limit (per subject, never reached): counted in the
#                     sidecar's local buckets
#   sidecar-limits-redis  the same limit counted fleet-wide in a real Redis (Debian redis-server,
#                     tests/scripts/install-redis.sh) on loopback: one EVALSHA per call
#
# Each target: a warmup (discarded), then a measured wrk run with the same connections; with
# --rounds N the targets take turns N times (order rotated) and each reports its median round. Reports
# req/s, p50/p99 latency, ratios against direct, the proxy's CPU time per request and the
# sidecar's RSS; writes bench/results/<date>-<name>.md and .json. See bench/README.md.
#
# Usage: bench/run.sh [--name foundation] [--duration 10] [--warmup 2] [--connections 16]
#                     [--threads 2] [--rounds 1] [--no-nginx] [--otlp-down] [--governed] [--limits] [--no-install]
#                     [--no-build] [--out DIR]
# Everything also reads from the environment: BENCH_NAME, BENCH_DURATION, BENCH_WARMUP,
# BENCH_CONNECTIONS, BENCH_THREADS, BENCH_ROUNDS, BENCH_NGINX=0, BENCH_INSTALL=0,
# BENCH_BUILD=0 (use the release binaries already built), BENCH_OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${BENCH_NAME:-foundation}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-16}"
THREADS="${BENCH_THREADS:-2}"
ROUNDS="${BENCH_ROUNDS:-1}"
WITH_NGINX="${BENCH_NGINX:-1}"
INSTALL="${BENCH_INSTALL:-1}"
BUILD="${BENCH_BUILD:-1}"
OUT="${BENCH_OUT:-$ROOT/bench/results}"

while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --no-nginx) WITH_NGINX=0; shift ;;
    --otlp-down) WITH_OTLP_DOWN=1; shift ;;
    --governed) WITH_GOVERNED=1; shift ;;
    --limits) WITH_GOVERNED=1; WITH_LIMITS=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

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

# --- binaries --------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p mcp-guard-sidecar -p mcp-guard-tests \
    --bin mcp-guard-sidecar --bin mcp-guard-example-server) || die "cargo build failed"
fi
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[ -n "$TARGET_DIR" ] || TARGET_DIR="$ROOT/target"
SERVER_BIN="$TARGET_DIR/release/mcp-guard-example-server"
SIDECAR_BIN="$TARGET_DIR/release/mcp-guard-sidecar"
[ -x "$SERVER_BIN" ] && [ -x "$SIDECAR_BIN" ] || die "release binaries not found in $TARGET_DIR"

# --- processes -------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcp-guard-bench.XXXXXX")"
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p" && [[ " ${TAKEN:-} " != *" $p "* ]]; then TAKEN="${TAKEN:-} $p"; echo "$p"; return; fi
  done
  die "no free loopback port"
}
wait_port() { # wait_port PORT PID WHAT
  for _ in $(seq 1 200); do
    port_free "$1" || return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (log: $(tail -5 "$WORK/$3.log" 2>/dev/null))"
    sleep 0.05
  done
  die "$3 did not listen on 127.0.0.1:$1"
}

WITH_OTLP_DOWN="${WITH_OTLP_DOWN:-0}"
WITH_GOVERNED="${WITH_GOVERNED:-0}"
UP_PORT="$(free_port)"
SC_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
NGINX_PORT="$(free_port)"

"$SERVER_BIN" --listen "127.0.0.1:$UP_PORT" --stateless-json >"$WORK/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP_PORT" "$UP_PID" upstream

"$SIDECAR_BIN" --listen "127.0.0.1:$SC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream-host 127.0.0.1 --upstream-port "$UP_PORT" --path /mcp \
  --deny-tools delete_everything >"$WORK/sidecar.log" 2>"$WORK/sidecar.err" &
SC_PID=$!
PIDS+=("$SC_PID")
for i in $(seq 1 200); do
  curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break
  kill -0 "$SC_PID" 2>/dev/null || die "sidecar exited at start: $(tail -5 "$WORK/sidecar.err")"
  [ "$i" = 200 ] && die "sidecar not ready after 10 s: $(tail -5 "$WORK/sidecar.err")"
  sleep 0.05
done

# --otlp-down: a second sidecar exporting spans and metrics to an OTLP endpoint that refuses
# every connection, measured beside the first: export trouble must not reach the request path.
OTLP_PID=""
if [ "$WITH_OTLP_DOWN" = 1 ]; then
  OTLP_PORT="$(free_port)"
  OTLP_ADMIN_PORT="$(free_port)"
  DEAD_PORT="$(free_port)"
  "$SIDECAR_BIN" --listen "127.0.0.1:$OTLP_PORT" --admin-listen "127.0.0.1:$OTLP_ADMIN_PORT" \
    --upstream-host 127.0.0.1 --upstream-port "$UP_PORT" --path /mcp \
    --deny-tools delete_everything --otlp-endpoint "http://127.0.0.1:$DEAD_PORT" \
    >"$WORK/sidecar-otlp-down.log" 2>"$WORK/sidecar-otlp-down.err" &
  OTLP_PID=$!
  PIDS+=("$OTLP_PID")
  wait_port "$OTLP_PORT" "$OTLP_PID" sidecar-otlp-down
fi

# --governed: a sidecar that verifies a real provider's JWT on every request, decides each call
# with a realistic Rego bundle and audits it: what governing costs, beside the plain filter.
GOV_PID=""
GOV_AUTH=""
if [ "$WITH_GOVERNED" = 1 ]; then
  if [ "$INSTALL" = 1 ]; then
    log "installing the OpenID provider (tests/scripts/install-oidc.sh)"
    bash "$ROOT/tests/scripts/install-oidc.sh" >&2 || die "tests/scripts/install-oidc.sh failed"
  fi
  OIDC_ENV="${MCP_GUARD_CACHE:-${HOME:-/root}/.cache/mcp-guard}/oidc/env.sh"
  [ -f "$OIDC_ENV" ] || die "no $OIDC_ENV: run tests/scripts/install-oidc.sh"
  OIDC_NODE="$(sed -n 's/^OIDC_NODE=//p' "$OIDC_ENV")"
  OIDC_APP="$(sed -n 's/^OIDC_APP=//p' "$OIDC_ENV")"
  "$OIDC_NODE" "$OIDC_APP" genkey "$WORK/idp-key.json" bench-k1 >/dev/null || die "genkey failed"
  IDP_PORT="$(free_port)"
  "$OIDC_NODE" "$OIDC_APP" --port "$IDP_PORT" --keys "$WORK/idp-key.json" --ttl 3600 \
    >"$WORK/idp.log" 2>&1 &
  IDP_PID=$!
  PIDS+=("$IDP_PID")
  wait_port "$IDP_PORT" "$IDP_PID" idp
  RESOURCE="https://mcp.example.test/mcp"
  # The admin agent's client-credentials token (roles mcp-admin), valid for the whole run.
  TOKEN="$(curl -fsS --max-time 10 -u agent-admin:admin-secret -d grant_type=client_credentials \
    --data-urlencode "resource=$RESOURCE" --data-urlencode "scope=mcp:tools mcp:admin" \
    "http://127.0.0.1:$IDP_PORT/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
  [ -n "$TOKEN" ] || die "no access token from the provider (log: $(tail -5 "$WORK/idp.log"))"
  GOV_AUTH="Bearer $TOKEN"
  mkdir -p "$WORK/policy"
  cp "$ROOT/sidecar/benches/fixtures/realistic.rego" "$WORK/policy/realistic.rego"
  cp "$ROOT/sidecar/benches/fixtures/realistic.json" "$WORK/policy/data.json"
  GOV_PORT="$(free_port)"
  GOV_ADMIN_PORT="$(free_port)"
  "$SIDECAR_BIN" --listen "127.0.0.1:$GOV_PORT" --admin-listen "127.0.0.1:$GOV_ADMIN_PORT" \
    --upstream-host 127.0.0.1 --upstream-port "$UP_PORT" --path /mcp \
    --deny-tools delete_everything --issuer "http://127.0.0.1:$IDP_PORT" --resource-uri "$RESOURCE" \
    --policy-dir "$WORK/policy" >"$WORK/sidecar-governed.log" 2>"$WORK/sidecar-governed.err" &
  GOV_PID=$!
  PIDS+=("$GOV_PID")
  for i in $(seq 1 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$GOV_ADMIN_PORT/readyz" 2>/dev/null && break
    kill -0 "$GOV_PID" 2>/dev/null || die "governed sidecar exited at start: $(tail -5 "$WORK/sidecar-governed.err")"
    [ "$i" = 200 ] && die "governed sidecar not ready after 10 s: $(tail -5 "$WORK/sidecar-governed.err")"
    sleep 0.05
  done
  # Governing for real: the same call without the token is refused.
  code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -X POST "http://127.0.0.1:$GOV_PORT/mcp" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    --data '{"jsonrpc":"2.0","id":1,"method":"tools/list"}')" || true
  [ "$code" = 401 ] || die "governed sidecar: a request without a token got HTTP $code, not 401"
fi

# --limits: the governed sidecar's policy plus one rate limit on every call (a billion a day per
# subject: counted on every request, never reached), counted locally and, in a second sidecar,
# fleet-wide in Redis.
LIM_PID=""
LIMR_PID=""
if [ "${WITH_LIMITS:-0}" = 1 ]; then
  if [ "$INSTALL" = 1 ]; then
    bash "$ROOT/tests/scripts/install-redis.sh" >&2 || die "tests/scripts/install-redis.sh failed"
  fi
  REDIS_ENV="${MCP_GUARD_CACHE:-${HOME:-/root}/.cache/mcp-guard}/redis/env.sh"
  [ -f "$REDIS_ENV" ] || die "no $REDIS_ENV: run tests/scripts/install-redis.sh"
  REDIS_SERVER="$(sed -n 's/^REDIS_SERVER=//p' "$REDIS_ENV")"
  REDIS_VERSION="$(sed -n 's/^REDIS_VERSION=//p' "$REDIS_ENV")"
  REDIS_PORT="$(free_port)"
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
  start_limited() { # start_limited NAME EXTRA...: prints "PID PORT ADMIN_PORT"
    local name="$1" port admin pid
    shift
    port="$(free_port)"
    admin="$(free_port)"
    "$SIDECAR_BIN" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
      --upstream-host 127.0.0.1 --upstream-port "$UP_PORT" --path /mcp \
      --deny-tools delete_everything --issuer "http://127.0.0.1:$IDP_PORT" --resource-uri "$RESOURCE" \
      --policy-dir "$WORK/policy-limits" "$@" >"$WORK/$name.log" 2>"$WORK/$name.err" &
    pid=$!
    echo "$pid $port $admin"
  }
  read -r LIM_PID LIM_PORT LIM_ADMIN < <(start_limited sidecar-limits)
  read -r LIMR_PID LIMR_PORT LIMR_ADMIN < <(start_limited sidecar-limits-redis \
    --rate-limit-redis-url "redis://127.0.0.1:$REDIS_PORT")
  PIDS+=("$LIM_PID" "$LIMR_PID")
  for i in $(seq 1 200); do
    up="$(curl -fsS "http://127.0.0.1:$LIMR_ADMIN/metrics" 2>/dev/null | sed -n 's/^mcp_guard_rate_limit_store_up //p' || true)"
    curl -fsS -o /dev/null "http://127.0.0.1:$LIM_ADMIN/readyz" 2>/dev/null && [ "$up" = 1 ] && break
    kill -0 "$LIM_PID" 2>/dev/null || die "sidecar-limits exited at start: $(tail -5 "$WORK/sidecar-limits.err")"
    kill -0 "$LIMR_PID" 2>/dev/null || die "sidecar-limits-redis exited at start: $(tail -5 "$WORK/sidecar-limits-redis.err")"
    [ "$i" = 200 ] && die "limited sidecars not ready (or Redis not reached) after 10 s"
    sleep 0.05
  done
fi

NGINX_PID=""
if [ "$WITH_NGINX" = 1 ]; then
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream mcp { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mcp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$UP_PORT;
    }
  }
}
EOF
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_port "$NGINX_PORT" "$NGINX_PID" nginx
fi

# --- measurement helpers ---------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
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
json_get() { # json_get JSON KEY: a number from the flat wrk result
  sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"
}

BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello from wrk"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"mcp-guard-bench","version":"0.1.0"},"io.modelcontextprotocol/clientCapabilities":{}}}}'
check_target() { # check_target NAME URL [AUTHORIZATION]: one request with curl, the answer must be the echo
  local out auth=()
  [ -n "${3:-}" ] && auth=(-H "Authorization: $3")
  out="$(curl -sS --max-time 5 -X POST "$2" "${auth[@]}" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \
    -H 'Mcp-Method: tools/call' -H 'Mcp-Name: echo' --data "$BODY" -w '\nHTTP %{http_code} %{content_type}')" ||
    die "$1: request failed"
  grep -q '"text":"hello from wrk"' <<<"$out" || die "$1: unexpected answer: $out"
  grep -q '^HTTP 200 application/json' <<<"$out" || die "$1: expected HTTP 200 JSON: $out"
}

declare -A RESULT CPU_US SYS RSS_IDLE RSS_LOAD RSS_PEAK R_RESULT R_CPU R_SYS R_RSS_LOAD R_RSS_PEAK ROUND_RPS PICKED
measure() { # measure NAME ROUND URL PROXY_PIDS...: one warmup + one measured wrk run
  local name="$1" round="$2" url="$3" key="$1.$2" out before after requests r
  shift 3
  local authorization="${AUTH[$name]:-}"
  check_target "$name" "$url" "$authorization"
  if [ $# -gt 0 ] && [ "$round" = 1 ]; then RSS_IDLE[$name]="$(rss_kib VmRSS "$@")"; fi
  log "$name (round $round/$ROUNDS): warmup ${WARMUP}s, then ${DURATION}s measured, $CONNECTIONS connections"
  BENCH_AUTHORIZATION="$authorization" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$ROOT/bench/mcp-tools-call.lua" "$url" >/dev/null
  before="$(cpu_ticks "$@")"
  [ $# -gt 0 ] && perf_start "$WORK/perf-$key.txt" "$@"
  out="$(BENCH_AUTHORIZATION="$authorization" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$ROOT/bench/mcp-tools-call.lua" "$url")"
  after="$(cpu_ticks "$@")"
  [ $# -gt 0 ] && perf_stop
  printf '%s\n' "$out" >"$WORK/wrk-$key.txt"
  r="$(sed -n 's/^WRK_RESULT //p' <<<"$out")"
  [ -n "$r" ] || die "$name: no result from wrk: $out"
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

declare -A URL PROXY_PIDS AUTH
TARGETS=(direct)
URL[direct]="http://127.0.0.1:$UP_PORT/mcp"
PROXY_PIDS[direct]=""
if [ -n "$NGINX_PID" ]; then
  TARGETS+=(nginx)
  URL[nginx]="http://127.0.0.1:$NGINX_PORT/mcp"
  PROXY_PIDS[nginx]="$NGINX_PID $(children "$NGINX_PID" | tr '\n' ' ')"
fi
TARGETS+=(sidecar)
URL[sidecar]="http://127.0.0.1:$SC_PORT/mcp"
PROXY_PIDS[sidecar]="$SC_PID"
if [ -n "$OTLP_PID" ]; then
  TARGETS+=(sidecar-otlp-down)
  URL[sidecar-otlp-down]="http://127.0.0.1:$OTLP_PORT/mcp"
  PROXY_PIDS[sidecar-otlp-down]="$OTLP_PID"
fi
if [ -n "$GOV_PID" ]; then
  TARGETS+=(sidecar-governed)
  URL[sidecar-governed]="http://127.0.0.1:$GOV_PORT/mcp"
  PROXY_PIDS[sidecar-governed]="$GOV_PID"
  AUTH[sidecar-governed]="$GOV_AUTH"
fi
if [ -n "$LIM_PID" ]; then
  TARGETS+=(sidecar-limits sidecar-limits-redis)
  URL[sidecar-limits]="http://127.0.0.1:$LIM_PORT/mcp"
  PROXY_PIDS[sidecar-limits]="$LIM_PID"
  AUTH[sidecar-limits]="$GOV_AUTH"
  URL[sidecar-limits-redis]="http://127.0.0.1:$LIMR_PORT/mcp"
  PROXY_PIDS[sidecar-limits-redis]="$LIMR_PID"
  AUTH[sidecar-limits-redis]="$GOV_AUTH"
fi

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
# Rounds rotate the order of the targets, so a change in background load does not always hit
# the same one; each target's reported round is its median by req/s.
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!TARGETS[@]}"; do
    t="${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}"
    # shellcheck disable=SC2086
    measure "$t" "$round" "${URL[$t]}" ${PROXY_PIDS[$t]}
  done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

for t in "${TARGETS[@]}"; do
  sorted="$(for round in $(seq 1 "$ROUNDS"); do
    printf '%s %s\n' "$(json_get "${R_RESULT[$t.$round]}" rps)" "$round"
  done | sort -n -k1,1)"
  ROUND_RPS[$t]="$(awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }' <<<"$(for round in $(seq 1 "$ROUNDS"); do json_get "${R_RESULT[$t.$round]}" rps; done)")"
  pick="$(awk -v m=$(((ROUNDS + 1) / 2)) 'NR == m { print $2 }' <<<"$sorted")"
  PICKED[$t]="$pick"
  RESULT[$t]="${R_RESULT[$t.$pick]}"
  if [ "$t" != direct ]; then
    CPU_US[$t]="${R_CPU[$t.$pick]}"
    SYS[$t]="${R_SYS[$t.$pick]}"
    RSS_LOAD[$t]="${R_RSS_LOAD[$t.$pick]}"
    RSS_PEAK[$t]="$(for round in $(seq 1 "$ROUNDS"); do echo "${R_RSS_PEAK[$t.$round]}"; done | sort -n | tail -1)"
  fi
done

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
SIDECAR_LOG_LINES="$(wc -l <"$WORK/sidecar.log")"

D_RPS="$(json_get "${RESULT[direct]}" rps)"
D_P50="$(json_get "${RESULT[direct]}" p50)"
D_P99="$(json_get "${RESULT[direct]}" p99)"
ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

{
  printf '# Benchmark %s: %s\n\n' "$NAME" "$DATE"
  printf 'MCP 2026-07-28 stateless `tools/call` of `echo` (POST /mcp, JSON answer) against the rmcp example\n'
  printf 'server in `--stateless-json` mode; wrk, %s connections, %s threads, %s s warmup then %s s measured per\n' \
    "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION"
  printf 'target, all on loopback, targets measured one after the other in one run. Sidecar policy:\n'
  printf '`--deny-tools delete_everything`.\n'
  if [ -n "$GOV_PID" ]; then
    printf '`sidecar-governed`: the same, and every request carries a real OpenID provider'"'"'s RS256 JWT that\n'
    printf 'the sidecar verifies (`--issuer`; the verified token is cached, as for an agent reusing its token)\n'
    printf 'and turns into identity headers, each call is decided by `sidecar/benches/fixtures/realistic.rego`\n'
    printf '(about 20 rules, `--policy-dir`) and audited to stdout like the other sidecar.\n'
  fi
  if [ -n "$LIM_PID" ]; then
    printf '`sidecar-limits`: the governed sidecar with one more rule, a rate limit on every call\n'
    printf '(`{"key": "subject", "per": "1d", "requests": 1000000000}`: counted, never reached) in local buckets;\n'
    printf '`sidecar-limits-redis`: the same limit counted in Redis %s on loopback (one EVALSHA per call;\n' "$REDIS_VERSION"
    printf 'the Redis server'"'"'s own CPU is not in the proxy column).\n'
  fi
  printf '\n'
  printf '| target | req/s | vs direct | p50 ms | +p50 ms | p99 ms | +p99 ms | proxy CPU µs/req | proxy syscalls/req | proxy switches/req | proxy RSS MiB (idle / load / peak) | errors |\n'
  printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
  for t in "${TARGETS[@]}"; do
    r="${RESULT[$t]}"
    rps="$(json_get "$r" rps)"; p50="$(json_get "$r" p50)"; p99="$(json_get "$r" p99)"
    errs="$(awk -v a="$(json_get "$r" connect)" -v b="$(json_get "$r" read)" -v c="$(json_get "$r" write)" \
      -v d="$(json_get "$r" status)" -v e="$(json_get "$r" timeout)" 'BEGIN { print a + b + c + d + e }')"
    if [ "$t" = direct ]; then
      printf '| %s | %.0f | 100 %% | %s | – | %s | – | – | – | – | – | %s |\n' "$t" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$errs"
    else
      read -r sys_req sw_req <<<"${SYS[$t]}"
      printf '| %s | %.0f | %s %% | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s |\n' "$t" "$rps" \
        "$(awk -v a="$rps" -v b="$D_RPS" 'BEGIN { printf "%.0f", 100 * a / b }')" \
        "$(ms "$p50")" "$(ms $((p50 - D_P50)))" "$(ms "$p99")" "$(ms $((p99 - D_P99)))" \
        "${CPU_US[$t]}" "$sys_req" "$sw_req" "$(mib "${RSS_IDLE[$t]}")" "$(mib "${RSS_LOAD[$t]}")" "$(mib "${RSS_PEAK[$t]}")" "$errs"
    fi
  done
  printf '\n- machine: %s × %s, Linux %s; %s; wrk %s' "$NCPU" "$CPU_MODEL" "$KERNEL" "$RUSTC" "$WRK_VERSION"
  [ -n "$NGINX_VERSION" ] && printf '; nginx %s (worker_processes auto, upstream keepalive)' "$NGINX_VERSION"
  printf '\n- commit: %s%s\n' "$COMMIT" "$([ "$DIRTY" = true ] && echo ' (with uncommitted changes)')"
  printf -- '- client, server and proxy share the same %s cores: the numbers compare targets within this run;\n' "$NCPU"
  printf '  they are not absolute capacities. CPU per request is the proxy process'"'"'s user+system time during\n'
  printf '  the measured window divided by the requests served (resolution 1/%s s).\n' "$CLK_TCK"
  if [ "$ROUNDS" -gt 1 ]; then
    printf -- '- %s rounds, targets taking turns (order rotated); each row is the target'"'"'s median round by req/s.\n' "$ROUNDS"
    printf '  req/s of every round:'
    for t in "${TARGETS[@]}"; do printf ' %s [%s];' "$t" "${ROUND_RPS[$t]}"; done
    printf '\n'
  fi
  printf -- '- load average (1, 5, 15 min) before: %s, after: %s\n' "$LOAD_BEFORE" "$LOAD_AFTER"
  printf -- '- sidecar stdout (audit) lines during the run: %s\n' "$SIDECAR_LOG_LINES"
  [ -n "$GOV_PID" ] && printf -- '- governed sidecar stdout (audit) lines during the run: %s\n' "$(wc -l <"$WORK/sidecar-governed.log")"
  printf '\nRaw wrk output:\n'
  for t in "${TARGETS[@]}"; do
    printf '\n<details><summary>%s (round %s)</summary>\n\n```\n' "$t" "${PICKED[$t]}"
    grep -v '^WRK_RESULT' "$WORK/wrk-$t.${PICKED[$t]}.txt"
    printf '```\n</details>\n'
  done
} >"$MD"

{
  printf '{\n  "name": "%s",\n  "date": "%s",\n  "commit": "%s",\n  "dirty": %s,\n' "$NAME" "$DATE" "$COMMIT" "$DIRTY"
  printf '  "machine": {"cpus": %s, "cpu_model": "%s", "kernel": "%s", "rustc": "%s", "wrk": "%s", "nginx": "%s"},\n' \
    "$NCPU" "$CPU_MODEL" "$KERNEL" "$RUSTC" "$WRK_VERSION" "$NGINX_VERSION"
  printf '  "settings": {"scenario": "tools/call echo, MCP 2026-07-28 stateless, rmcp --stateless-json upstream", "connections": %s, "threads": %s, "warmup_s": %s, "duration_s": %s, "rounds": %s, "sidecar_flags": "--deny-tools delete_everything"},\n' \
    "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION" "$ROUNDS"
  printf '  "loadavg": {"before": "%s", "after": "%s"},\n' "$LOAD_BEFORE" "$LOAD_AFTER"
  printf '  "targets": {\n'
  n=0
  for t in "${TARGETS[@]}"; do
    n=$((n + 1))
    r="${RESULT[$t]}"
    printf '    "%s": {"wrk": %s, "round": %s, "rps_by_round": [%s]' "$t" "$r" "${PICKED[$t]}" "${ROUND_RPS[$t]}"
    if [ "$t" != direct ]; then
      printf ', "vs_direct": {"rps_ratio": %s, "p50_added_us": %s, "p99_added_us": %s}' \
        "$(awk -v a="$(json_get "$r" rps)" -v b="$D_RPS" 'BEGIN { printf "%.4f", a / b }')" \
        "$(($(json_get "$r" p50) - D_P50))" "$(($(json_get "$r" p99) - D_P99))"
      read -r sys_req sw_req <<<"${SYS[$t]}"
      printf ', "proxy_cpu_us_per_request": %s, "proxy_syscalls_per_request": %s, "proxy_switches_per_request": %s, "proxy_rss_kib": {"idle": %s, "load": %s, "peak": %s}' \
        "${CPU_US[$t]}" "$([ "$sys_req" = – ] && echo null || echo "$sys_req")" \
        "$([ "$sw_req" = – ] && echo null || echo "$sw_req")" "${RSS_IDLE[$t]}" "${RSS_LOAD[$t]}" "${RSS_PEAK[$t]}"
    fi
    printf '}%s\n' "$([ "$n" -lt "${#TARGETS[@]}" ] && echo ,)"
  done
  printf '  }\n}\n'
} >"$JSON"

log "wrote $MD and $JSON"
sed -n '/^| target/,/^$/p' "$MD"
