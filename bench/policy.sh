#!/usr/bin/env bash
# Policy decision and list-filtering costs (criterion, sidecar/benches/policy.rs), recorded in
# bench/results/<date>-policy.md. All strategies run in one process, side by side, so the ratios
# hold on a noisy machine.
set -euo pipefail
cd "$(dirname "$0")/.."

out="bench/results/$(date -u +%Y-%m-%d)-policy.md"
log=$(mktemp)
cargo bench -p mcp-guard-sidecar --bench policy -- --warm-up-time 2 --measurement-time 5 2>&1 | tee "$log" >&2

# criterion prints "name\n   time:   [low median high]" (or on one line for short names).
rows=$(awk '
  /^(decision|filter)\// { name=$1; if ($0 ~ /time:/) { sub(/.*time: *\[/, ""); print name "|" $0 } ; next }
  /time:/ && name != "" { line=$0; sub(/.*time: *\[/, "", line); print name "|" line; name="" }
' "$log" | sed 's/\]$//')

{
  echo "# Policy benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); commit $(git describe --always --dirty)."
  echo "Policy: sidecar/benches/fixtures/realistic.rego (about 20 rules) with 50 tools in data."
  echo "Targets (issue: sidecar policy): median decision <= 10 us; filtering 1,000 tools <= 2 ms."
  echo
  echo "| benchmark | low | median | high |"
  echo "|---|---|---|---|"
  echo "$rows" | while IFS='|' read -r name t; do
    # t: "9.01 µs 9.04 µs 9.08 µs"
    set -- $t
    echo "| \`$name\` | $1 $2 | **$3 $4** | $5 $6 |"
  done
  echo
  echo "- \`request_path_check\`: what a tools/call costs in the sidecar (input frame + bytecode VM);"
  echo "  \`allow\` and \`deny\` repeat one call, whose decision the bundle remembers"
  echo "  (sidecar/policy/src/memo.rs); \`distinct\` gives every call arguments of its own, so each"
  echo "  decision is evaluated."
  echo "- \`bytecode_reused_vm\`, \`interpreter_reused_engine\`, \`interpreter_clone_per_decision\`: one"
  echo "  decision from a JSON input under each strategy, evaluated every time (the first is what the"
  echo "  sidecar uses); \`remembered\`: the same decision from the bundle's memo."
  echo "- \`filter/tools_list_1000/...\`: visibility decided per tool (the policy has no \`visible_tools\`)."
  echo "  \`cold\`: the sidecar's first listing (every definition pinned, every decision evaluated);"
  echo "  \`new_caller\`: a caller's first listing of tools the sidecar has seen, after another caller"
  echo "  the policy can tell apart (another role: one decision evaluated per tool class, the tools no"
  echo "  rule can tell apart, sidecar/policy/src/classes.rs, or per tool for a bundle without classes);"
  echo "  \`new_caller_same_terms\`: the same after another user no rule can tell apart (same roles,"
  echo "  another email of the same domain, which the policy reads only through \`endswith\`: equal caller"
  echo "  terms, decisions shared, sidecar/policy/src/terms.rs);"
  echo "  \`new_caller_alike\`: the same after a caller who differs only in fields no rule reads (a"
  echo "  refreshed token: decisions shared by what the bundle reads, sidecar/policy/src/reads.rs);"
  echo "  \`warm\`: a caller listing tools it listed before under the same bundle (decisions remembered)."
  echo "- \`filter/tools_list_1000/visible_tools/...\`: the same visibility from the policy's \`visible_tools\`"
  echo "  rule (sidecar/benches/fixtures/realistic_visible_tools.rego), one evaluation per list; the bench"
  echo "  first checks that both show the same tools for callers of every role."
} > "$out"
rm -f "$log"
echo "recorded $out"
