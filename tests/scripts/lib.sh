# Shared by the install scripts (source it after defining `log` and `die`).

# apt_ensure PKG...: install the Debian packages that are not installed yet (root only when
# something is missing; waits for another apt run's lock instead of failing).
apt_ensure() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or install them)"
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null ||
    log "apt-get update failed; trying the install anyway"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    --no-install-recommends "${missing[@]}" </dev/null >/dev/null
}

# installed NAME: the path of the program NAME a package just installed (dies when there is none).
installed() {
  local p
  p="$(command -v "$1" || true)"
  [ -x "$p" ] || p="/usr/bin/$1"
  [ -x "$p" ] || die "$1 installed but not found"
  printf '%s\n' "$p"
}

# write_env DIR KEY=VALUE...: writes ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/DIR/env.sh, the
# plain KEY=VALUE lines a suite reads (tests/src/lib.rs installed_bin), atomically; prints its path.
write_env() {
  local dir="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/$1"
  shift
  mkdir -p "$dir"
  {
    printf '# Written by tests/scripts/%s. Plain KEY=VALUE lines.\n' "$(basename "$0")"
    printf '%s\n' "$@"
  } >"$dir/env.sh.tmp"
  mv "$dir/env.sh.tmp" "$dir/env.sh"
  printf '%s\n' "$dir/env.sh"
}
