#!/usr/bin/env bash
# mcp-guard fleet benchmark: one refresh of the controller's fleet view (`GET /fleet`) with 500
# injected pods, and the controller's memory meanwhile (issue 21: under 2 s, under 64 MiB).
#
#   control plane  etcd + kube-apiserver from tests/scripts/install-kube.sh
#   controller     the release `mcp-guard-webhook serve --controller`, distributing a policy
#                  source (sidecar/benches/fixtures/realistic.rego and its data)
#   pods           created through the real admission webhook (injected as in a cluster), spread
#                  over namespaces, each given its own pod IP on loopback (127.77.x.y)
#   sidecars       one process listening on every pod IP's admin port, answering /policy,
#                  /metrics, /tools, /access, /denies with what a real release sidecar answered
#                  (captured at the start of the run); one pod in 25 enforces an older bundle
#   rounds         each a fresh controller: one cold GET /fleet once its caches synced, then warm
#                  ones each after the 5 s cache expired, and one served from the cache; every
#                  answer is checked (every row observed, exactly the stale pods flagged); the
#                  controller's RSS is read from /proc every 10 ms
#
# The work is tests/examples/fleet_bench.rs. Writes bench/results/<date>-<name>.md and .json.
#
# Usage: bench/fleet.sh [--name fleet] [--pods 500] [--namespaces 25] [--rounds 3] [--warm 5]
#                       [--no-build] [--out DIR]
# Environment: BENCH_NAME, BENCH_PODS, BENCH_ROUNDS, BENCH_BUILD=0, BENCH_OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${BENCH_NAME:-fleet}"
PODS="${BENCH_PODS:-500}"
NAMESPACES=25
ROUNDS="${BENCH_ROUNDS:-3}"
WARM=5
BUILD="${BENCH_BUILD:-1}"
OUT="${BENCH_OUT:-$ROOT/bench/results}"

while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --pods) PODS="$2"; shift 2 ;;
    --namespaces) NAMESPACES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --warm) WARM="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "bench-fleet: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

BENCH_TOOL=bench-fleet
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(uname -s)" = Linux ] || die "needs Linux (every 127.x.y.z address is loopback there)"
ENV_FILE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/kube/env.sh"
[ -f "$ENV_FILE" ] || die "$ENV_FILE missing: run tests/scripts/install-kube.sh first"
command -v openssl >/dev/null || die "openssl is required"
command -v curl >/dev/null || die "curl is required"

if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --locked -q -p mcp-guard-webhook --bin mcp-guard-webhook \
    -p mcp-guard-sidecar --bin mcp-guard-sidecar \
    -p mcp-guard-tests --bin mcp-guard-example-server --example fleet_bench) || die "cargo build failed"
fi
TARGET_DIR="$(target_dir)"
BENCH="$TARGET_DIR/release/examples/fleet_bench"
[ -x "$BENCH" ] || die "$BENCH missing (build it, or drop --no-build)"

# The bench finds the release binaries through CARGO_TARGET_DIR, and the workspace beside it.
cd "$ROOT"
CARGO_TARGET_DIR="$TARGET_DIR" "$BENCH" --name "$NAME" --pods "$PODS" --namespaces "$NAMESPACES" \
  --rounds "$ROUNDS" --warm "$WARM" --out "$OUT"
