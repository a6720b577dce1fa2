#!/usr/bin/env bash
# Installs Redis for the rate-limit suites (tests/tests/rate_limits.rs): Debian's `redis-server`
# package (7.0 on bookworm). The suites start their own redis-server on a free loopback port,
# without persistence; nothing here starts one. Writes ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/
# redis/env.sh (REDIS_SERVER, REDIS_VERSION) that the suites read. Idempotent: apt-get runs only
# when the package is missing (and then needs root); a second run returns at once. Needs no stdin
# and no TTY (works with CI=true).
set -euo pipefail

PACKAGES=(redis-server)

log() { printf 'install-redis: %s\n' "$*" >&2; }
die() {
  printf 'install-redis: error: %s\n' "$*" >&2
  exit 1
}

. "$(dirname "$0")/lib.sh"
export DEBIAN_FRONTEND=noninteractive

apt_ensure "${PACKAGES[@]}"

SERVER="$(installed redis-server)"
VERSION="$("$SERVER" --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')"
[ -n "$VERSION" ] || die "cannot read the version of $SERVER"

ENV_FILE="$(write_env redis "REDIS_SERVER=$SERVER" "REDIS_VERSION=$VERSION")"
echo "redis-server $VERSION at $SERVER; env file: $ENV_FILE"
