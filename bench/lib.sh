# mcp-guard's benchmark scripts: what they share. Sourced, never run. Before sourcing, set
# BENCH_TOOL (the name every message starts with) and ROOT (the repository); the functions that
# start processes need WORK (a scratch directory) and PIDS (an array the caller's cleanup kills).
# shellcheck shell=bash
# shellcheck disable=SC2034 # WORK and PIDS are the caller's

log() { printf '%s: %s\n' "$BENCH_TOOL" "$*" >&2; }
die() { printf '%s: error: %s\n' "$BENCH_TOOL" "$*" >&2; exit 1; }

# target_dir: cargo's target directory for this workspace (CARGO_TARGET_DIR honoured).
target_dir() {
  local dir
  dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  printf '%s\n' "${dir:-$ROOT/target}"
}

# bench_workdir NAME: a scratch directory in WORK and an empty PIDS; on exit, every process in
# PIDS is stopped and WORK removed.
bench_workdir() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcp-guard-$1.XXXXXX")"
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# wait_ready URL PID WHAT SECONDS: until URL answers 2xx; WHAT's errors are in $WORK/WHAT.err.
wait_ready() {
  local i
  for i in $(seq 1 $(($4 * 10))); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited at start: $(tail -5 "$WORK/$3.err" 2>/dev/null)"
    sleep 0.1
  done
  die "$3 not ready at $1 after $4 s: $(tail -5 "$WORK/$3.err" 2>/dev/null)"
}

# --- ports -------------------------------------------------------------------------------------
# Ports are drawn below the kernel's ephemeral range, where no outgoing connection of a run (a
# load run opens thousands) holds one that a server then could not bind; and never twice in a run.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
BENCH_PORTS_TAKEN=""
read -r BENCH_EPH_LOW BENCH_EPH_HIGH </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null ||
  { BENCH_EPH_LOW=32768; BENCH_EPH_HIGH=60999; }
if [ "$BENCH_EPH_LOW" -ge 12000 ]; then
  BENCH_PORT_LOW=10000; BENCH_PORT_SPAN=$((BENCH_EPH_LOW - BENCH_PORT_LOW))
else
  BENCH_PORT_LOW=$((BENCH_EPH_HIGH + 1)); BENCH_PORT_SPAN=$((65536 - BENCH_PORT_LOW))
fi
[ "$BENCH_PORT_SPAN" -ge 1000 ] || { BENCH_PORT_LOW=20000; BENCH_PORT_SPAN=40000; }
free_port() { # free_port VAR: a loopback port nobody listens on and not handed out before
  local p
  for _ in $(seq 1 200); do
    p=$((BENCH_PORT_LOW + RANDOM % BENCH_PORT_SPAN))
    if port_free "$p" && [[ " $BENCH_PORTS_TAKEN " != *" $p "* ]]; then
      BENCH_PORTS_TAKEN="$BENCH_PORTS_TAKEN $p"
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free loopback port"
}
wait_port() { # wait_port PORT PID WHAT: until PORT listens; WHAT's log is $WORK/WHAT.log
  for _ in $(seq 1 400); do
    port_free "$1" || return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (log: $(tail -5 "$WORK/$3.log" 2>/dev/null))"
    sleep 0.05
  done
  die "$3 did not listen on 127.0.0.1:$1"
}

# --- the tests' OpenID provider ----------------------------------------------------------------
# The resource the benchmarks' sidecars protect, and their tokens name.
BENCH_RESOURCE="https://mcp.example.test/mcp"

# start_idp: the OpenID provider tests/scripts/install-oidc.sh installs, with a signing key of
# its own and tokens valid for an hour; sets IDP_PORT and IDP_PID (in PIDS).
start_idp() {
  local env_file="${MCP_GUARD_CACHE:-${HOME:-/root}/.cache/mcp-guard}/oidc/env.sh" node app
  [ -f "$env_file" ] || die "no $env_file: run tests/scripts/install-oidc.sh"
  node="$(sed -n 's/^OIDC_NODE=//p' "$env_file")"
  app="$(sed -n 's/^OIDC_APP=//p' "$env_file")"
  "$node" "$app" genkey "$WORK/idp-key.json" bench-k1 >/dev/null || die "genkey failed"
  free_port IDP_PORT
  "$node" "$app" --port "$IDP_PORT" --keys "$WORK/idp-key.json" --ttl 3600 >"$WORK/idp.log" 2>&1 &
  IDP_PID=$!
  PIDS+=("$IDP_PID")
  wait_port "$IDP_PORT" "$IDP_PID" idp
}

# start_otlp_receiver: the live OTLP receiver (tests/scripts/otlp_receiver.py on the Python that
# tests/scripts/install-otlp.sh installs, PyPI opentelemetry-proto): every export parsed and its
# spans counted (--summary: dumping them as JSON costs more CPU than the sidecar spends on a span,
# on the same cores); sets RCV_PORT, RCV_PID (in PIDS) and OTLP_PYTHON.
start_otlp_receiver() {
  local env_file="${MCP_GUARD_CACHE:-${HOME:-/root}/.cache/mcp-guard}/otlp/env.sh"
  [ -f "$env_file" ] || die "no $env_file: run tests/scripts/install-otlp.sh"
  OTLP_PYTHON="$(sed -n 's/^OTLP_PYTHON=//p' "$env_file")"
  [ -x "$OTLP_PYTHON" ] || die "$env_file names no OTLP_PYTHON that runs: run tests/scripts/install-otlp.sh"
  free_port RCV_PORT
  "$OTLP_PYTHON" "$ROOT/tests/scripts/otlp_receiver.py" --port "$RCV_PORT" --out "$WORK/otlp.jsonl" --summary \
    >"$WORK/otlp-receiver.log" 2>&1 &
  RCV_PID=$!
  PIDS+=("$RCV_PID")
  wait_port "$RCV_PORT" "$RCV_PID" otlp-receiver
}

# admin_token: on stdout, the admin agent's client-credentials token (roles mcp-admin, scopes
# mcp:tools mcp:admin) for BENCH_RESOURCE, from the provider start_idp started.
admin_token() {
  local token
  token="$(curl -fsS --max-time 10 -u agent-admin:admin-secret -d grant_type=client_credentials \
    --data-urlencode "resource=$BENCH_RESOURCE" --data-urlencode "scope=mcp:tools mcp:admin" \
    "http://127.0.0.1:$IDP_PORT/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
  [ -n "$token" ] || die "no access token from the provider (log: $(tail -5 "$WORK/idp.log"))"
  printf '%s\n' "$token"
}
