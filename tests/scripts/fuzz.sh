#!/usr/bin/env bash
# Runs the fuzz targets in tests/fuzz (cargo-fuzz, libFuzzer) for a bounded time each.
#
#   tests/scripts/fuzz.sh                 every target, MCP_GUARD_FUZZ_SECONDS (default 60) each
#   tests/scripts/fuzz.sh sse_rewrite 3600   one target, an hour (the documented long run)
#
# Installs what it needs: the nightly toolchain must be there (rustup; these machines have it) and
# cargo-fuzz comes from the crates registry (`cargo install --locked`, once). The build is cached
# under ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/fuzz-target. Each target starts from its corpus
# in tests/fuzz/corpus/<target> (kept in the repository, seeded from the test fixtures) and adds what
# it finds to a scratch copy, so a run leaves the tree as it was. A crash stops the run with exit
# status 1 and leaves the input under tests/fuzz/artifacts/<target>/: turn it into a regression
# test beside the code it exercises, then add it to the corpus. In CI (CI set) the seed is fixed
# and the executions are capped (MCP_GUARD_FUZZ_RUNS, default 200,000) as well as the time, so a
# CI run explores at most what the same command explored on a developer's machine: a red CI is
# reproducible, and never a new find by chance. Runs without CI explore freely.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_DIR="$PWD/fuzz"
CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
SECONDS_EACH="${2:-${MCP_GUARD_FUZZ_SECONDS:-60}}"
CARGO_FUZZ_VERSION=0.13.2

log() { printf 'fuzz: %s\n' "$*" >&2; }

if ! rustup toolchain list | grep -q '^nightly'; then
  log "error: the nightly toolchain is not installed (rustup toolchain install nightly)"
  exit 1
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked </dev/null
fi

export CARGO_TARGET_DIR="$CACHE/fuzz-target"
targets=()
if [ $# -ge 1 ]; then
  targets=("$1")
else
  for f in "$FUZZ_DIR"/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

cd "$FUZZ_DIR"
start=$(date +%s)
cargo +nightly fuzz build --release >&2
log "built in $(($(date +%s) - start)) s"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "corpus/$t"
  cp -r "corpus/$t/." "$scratch/$t/" 2>/dev/null || true
  log "$t: ${SECONDS_EACH} s"
  out="$scratch/$t.log"
  if ! cargo +nightly fuzz run --release "$t" "$scratch/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 ${CI:+-seed=1 -runs=${MCP_GUARD_FUZZ_RUNS:-200000}} >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    log "$t: FAILED (the input is under tests/fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' || echo "?")
  summary+=("$t: $runs executions (at most ${SECONDS_EACH} s), no crash")
done
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} passed, 0 failed"
