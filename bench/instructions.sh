#!/usr/bin/env bash
# mcp-guard: instructions per proxied request, counted by callgrind: the figure to compare before
# and after a change to the request path on a machine too busy (or too small) for wall-clock
# numbers to mean anything. Counted instructions do not move with other load.
#
#   plain     client -> mcp-guard-sidecar (--deny-tools delete_everything) -> example server
#   governed  (with --governed) the same sidecar verifying a real OpenID provider's JWT on every
#             request (cached after the first), deciding each call with
#             sidecar/benches/fixtures/realistic.rego and auditing it
#
# Every call is the same, so a governed sidecar decides the first and remembers the decision for
# the rest (the policy's memo). --distinct gives every call arguments of its own (`"text":
# "hello N"`): no decision repeats and each is evaluated, the cost of a call never seen. --list
# sends tools/list instead (the answer filtered by the sidecar) and counts that.
#
# The sidecar runs twice, each time given a warmup of sequential calls (keep-alive, one curl
# process) before the measured calls are sent the same way:
# - under `valgrind --tool=callgrind`, instrumentation switched on after the warmup: instructions
#   per request (total Ir / requests, every thread of the sidecar, the observation worker
#   included) and the functions with the most inclusive and self instructions (callgrind_annotate);
# - natively, `perf stat` attached for the measured calls (when perf may attach; Debian
#   linux-perf): system calls and context switches per request, also counted by the kernel.
# Report: bench/results/<date>-<name>-instructions.md.
#
# Usage: bench/instructions.sh [--name NAME] [--requests 2000] [--warmup 200] [--governed]
#                              [--distinct | --list] [--sidecar BIN] [--no-build] [--out DIR]
#                              [--keep-dump FILE] [--otlp]
# --sidecar measures another build of mcp-guard-sidecar (a copy of the binary before a change,
# say), with the example server of this tree. --keep-dump copies callgrind's dump to FILE, for
# callgrind_annotate --tree=calling or kcachegrind. --otlp has the sidecar export its spans and
# metrics over OTLP to a live receiver on loopback (tests/scripts/otlp_receiver.py, installed by
# tests/scripts/install-otlp.sh), as the harness's governed sidecar does: the export threads'
# instructions are counted with the rest, the receiver's are not.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${BENCH_NAME:-request-path}"
REQUESTS=2000
WARMUP=200
GOVERNED=0
DISTINCT=0
LIST=0
OTLP=0
BUILD=1
OUT="$ROOT/bench/results"
KEEP_DUMP=""
SIDECAR_BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --governed) GOVERNED=1; shift ;;
    --distinct) DISTINCT=1; shift ;;
    --list) LIST=1; shift ;;
    --otlp) OTLP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --keep-dump) KEEP_DUMP="$2"; shift 2 ;;
    --sidecar) SIDECAR_BIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "instructions: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

BENCH_TOOL=instructions
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[ "$DISTINCT" = 1 ] && [ "$LIST" = 1 ] && die "--distinct gives calls distinct arguments; --list sends no call: use one"
for tool in valgrind callgrind_control callgrind_annotate curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install valgrind curl)"
done

if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q --locked -p mcp-guard-sidecar -p mcp-guard-tests \
    --bin mcp-guard-sidecar --bin mcp-guard-example-server) || die "cargo build failed"
fi
TARGET_DIR="$(target_dir)"
SERVER_BIN="$TARGET_DIR/release/mcp-guard-example-server"
SIDECAR_BIN="${SIDECAR_BIN:-$TARGET_DIR/release/mcp-guard-sidecar}"
{ [ -x "$SERVER_BIN" ] && [ -x "$SIDECAR_BIN" ]; } || die "release binaries not found in $TARGET_DIR"

bench_workdir instructions

free_port UP_PORT
"$SERVER_BIN" --listen "127.0.0.1:$UP_PORT" --stateless-json >"$WORK/upstream.log" 2>&1 &
PIDS+=("$!")
wait_port "$UP_PORT" "$!" upstream

SIDECAR_ARGS=(--deny-tools delete_everything)
AUTH=()
if [ "$GOVERNED" = 1 ]; then
  start_idp
  RESOURCE="$BENCH_RESOURCE"
  TOKEN="$(admin_token)"
  AUTH=(header "=" "\"Authorization: Bearer $TOKEN\"")
  mkdir -p "$WORK/policy"
  cp "$ROOT/sidecar/benches/fixtures/realistic.rego" "$WORK/policy/realistic.rego"
  cp "$ROOT/sidecar/benches/fixtures/realistic.json" "$WORK/policy/data.json"
  # The periodic re-read of the bundle (every 2 s by default) is background work that valgrind's
  # slowness would spread over the requests: an hour keeps it out of the count.
  SIDECAR_ARGS+=(--issuer "http://127.0.0.1:$IDP_PORT" --resource-uri "$RESOURCE" --policy-dir "$WORK/policy"
    --policy-poll-interval 60m)
fi

if [ "$OTLP" = 1 ]; then
  start_otlp_receiver
  SIDECAR_ARGS+=(--otlp-endpoint "http://127.0.0.1:$RCV_PORT")
fi

free_port SC_PORT
free_port ADMIN_PORT
start_sidecar() { # start_sidecar [WRAPPER...]: the sidecar (under WRAPPER), ready; sets SC_PID
  "$@" "$SIDECAR_BIN" --listen "127.0.0.1:$SC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --upstream-host 127.0.0.1 --upstream-port "$UP_PORT" --path /mcp "${SIDECAR_ARGS[@]}" \
    >"$WORK/sidecar.log" 2>"$WORK/sidecar.err" &
  SC_PID=$!
  PIDS+=("$SC_PID")
  wait_ready "http://127.0.0.1:$ADMIN_PORT/readyz" "$SC_PID" sidecar 60 # valgrind starts slowly
}
stop_sidecar() {
  kill "$SC_PID" 2>/dev/null || true
  wait "$SC_PID" 2>/dev/null || true
}

META='"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"mcp-guard-bench","version":"0.1.0"},"io.modelcontextprotocol/clientCapabilities":{}}'
body() { # body TEXT: a call of echo with TEXT
  printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"%s"},%s}}' "$1" "$META"
}
body "hello from wrk" >"$WORK/body.json"
MIRROR=('header = "Mcp-Method: tools/call"' 'header = "Mcp-Name: echo"')
if [ "$LIST" = 1 ]; then
  printf '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{%s}}' "$META" >"$WORK/body.json"
  MIRROR=('header = "Mcp-Method: tools/list"')
fi
SENT=0
requests() { # requests N OUT: a curl config sending N calls one after the other on one connection
  local i file="$WORK/body.json"
  for i in $(seq 1 "$1"); do
    if [ "$i" -gt 1 ]; then echo next; fi
    if [ "$DISTINCT" = 1 ]; then
      SENT=$((SENT + 1))
      file="$WORK/bodies/$SENT.json"
      mkdir -p "$WORK/bodies"
      body "hello $SENT" >"$file"
    fi
    cat <<EOF
url = "http://127.0.0.1:$SC_PORT/mcp"
data-binary = "@$file"
header = "Content-Type: application/json"
header = "Accept: application/json, text/event-stream"
header = "MCP-Protocol-Version: 2026-07-28"
$(printf '%s\n' "${MIRROR[@]}")
write-out = "%{http_code}\n"
output = "/dev/null"
EOF
    if [ "${#AUTH[@]}" -gt 0 ]; then echo "${AUTH[*]}"; fi
  done >"$2"
}
send() { # send N WHAT: N calls, every one answered 200
  requests "$1" "$WORK/$2.curl"
  local codes
  codes="$(curl -sS -K "$WORK/$2.curl")" || die "$2: curl failed"
  [ "$(grep -c '^200$' <<<"$codes")" = "$1" ] ||
    die "$2: not every call was answered 200: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
}

log "callgrind: $WARMUP calls of warmup, then $REQUESTS measured"
start_sidecar valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out"
send "$WARMUP" warmup
callgrind_control -i on "$SC_PID" >/dev/null
callgrind_control -z "$SC_PID" >/dev/null
send "$REQUESTS" measured
callgrind_control -d "$SC_PID" >/dev/null
DUMP="$WORK/callgrind.out.1"
for _ in $(seq 1 100); do [ -s "$DUMP" ] && break; sleep 0.1; done
[ -s "$DUMP" ] || die "callgrind wrote no dump ($(ls "$WORK"))"
stop_sidecar
TOTAL="$(sed -n 's/^summary: \([0-9]*\).*/\1/p; s/^totals: \([0-9]*\).*/\1/p' "$DUMP" | head -1)"
[ -n "$TOTAL" ] || die "no totals in $DUMP"
PER="$(awk -v t="$TOTAL" -v n="$REQUESTS" 'BEGIN { printf "%.0f", t / n }')"
WHAT="$([ "$GOVERNED" = 1 ] && echo governed || echo plain)"
if [ "$DISTINCT" = 1 ]; then WHAT="$WHAT, every call distinct"; fi
if [ "$LIST" = 1 ]; then WHAT="$WHAT, tools/list"; fi
log "$WHAT: $PER instructions per request ($TOTAL over $REQUESTS)"

SYSCALLS="–"
SWITCHES="–"
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter,context-switches -- true >/dev/null 2>&1; then
  log "natively, perf stat: $WARMUP calls of warmup, then $REQUESTS counted"
  start_sidecar
  send "$WARMUP" warmup-native
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$SC_PID" -o "$WORK/perf.txt" &
  PERF_PID=$!
  sleep 0.5
  send "$REQUESTS" measured-native
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  stop_sidecar
  read -r SYSCALLS SWITCHES < <(awk -F, -v n="$REQUESTS" '
    $3 ~ /raw_syscalls:sys_enter/ { s = $1 }
    $3 ~ /context-switches/ { c = $1 }
    END { printf "%.2f %.2f\n", s / n, c / n }' "$WORK/perf.txt")
  log "$WHAT: $SYSCALLS system calls and $SWITCHES context switches per request"
else
  log "perf stat cannot count system calls here: that line of the report stays empty"
fi

mkdir -p "$OUT"
MD="$OUT/$(date -u +%Y-%m-%d)-$NAME-instructions.md"
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
DIRTY="$(cd "$ROOT" && { git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'; })"
{
  printf '# Instructions per request: %s (%s)\n\n' "$NAME" "$WHAT"
  printf -- '- **%s instructions per request** (%s over %s sequential %s on one keep-alive connection, after %s unmeasured)\n' \
    "$PER" "$TOTAL" "$REQUESTS" "$([ "$LIST" = 1 ] && echo tools/list || echo tools/call)" "$WARMUP"
  printf -- '- **%s system calls and %s context switches per request** (natively, the same calls, perf stat)\n' \
    "$SYSCALLS" "$SWITCHES"
  printf -- '- sidecar: %s\n' "$SIDECAR_BIN"
  printf -- '- commit %s%s; %s; valgrind %s\n' "$COMMIT" "$DIRTY" "$(rustc --version)" "$(valgrind --version)"
  printf '\nTop functions, inclusive:\n\n```\n'
  callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '1,45p'
  # shellcheck disable=SC2016 # the backquotes are Markdown's
  printf '```\n\nTop functions, self:\n\n```\n'
  callgrind_annotate "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '1,45p'
  printf '```\n'
} >"$MD"
log "wrote $MD"
if [ -n "$KEEP_DUMP" ]; then cp "$DUMP" "$KEEP_DUMP" && log "kept the dump as $KEEP_DUMP"; fi
echo "$PER $SYSCALLS $SWITCHES"
