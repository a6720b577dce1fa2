#!/usr/bin/env bash
# Keeps the build cache bounded. Every change rebuilds the test binaries under a new hash and
# leaves the previous ones behind: hundreds of MB each with debug information, tens of GB after a
# day of runs on one machine, enough to fill its disk (and put the test node under disk pressure).
# Keeps the newest two of each name in the cache's deps directories (the current build and the
# one before it); cargo rebuilds anything it still wanted. Run it before a build, never beside one.
set -euo pipefail
dir="${CARGO_TARGET_DIR:-${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/target}"
removed=0
for deps in "$dir"/debug/deps "$dir"/release/deps; do
  [ -d "$deps" ] || continue
  # Executables named <name>-<16 hex digits>: test binaries and the workspace's programs.
  while IFS= read -r path; do
    rm -f -- "$path"
    removed=$((removed + 1))
  done < <(find "$deps" -maxdepth 1 -type f -perm -u+x -regextype posix-extended \
             -regex '.*/[^/.]+-[0-9a-f]{16}' -printf '%T@ %p\n' |
           sort -rn |
           awk '{ name = $2; sub(/-[0-9a-f]+$/, "", name); if (++seen[name] > 2) print $2 }')
done
echo "sweep-cache: removed $removed old executables from $dir"
