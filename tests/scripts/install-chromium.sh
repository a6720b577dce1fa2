#!/usr/bin/env bash
# Installs a real browser for the dashboard suite (`the_dashboard_shows_…` in tests/tests/controller_apiserver.rs): Debian's
# `chromium` package, run headless by the suite (`--headless=new --dump-dom` for the rendered DOM,
# `--screenshot` for docs/img/). Writes ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/chromium/env.sh
# (CHROMIUM, CHROMIUM_VERSION) that the suite reads. Idempotent: apt-get runs only when the
# package is missing (and then needs root); a second run returns at once. Needs no stdin and no
# TTY (works with CI=true).
set -euo pipefail

# fonts-dejavu-core: the screenshots need one font with Latin glyphs.
PACKAGES=(chromium fonts-dejavu-core)

log() { printf 'install-chromium: %s\n' "$*" >&2; }
die() {
  printf 'install-chromium: error: %s\n' "$*" >&2
  exit 1
}

. "$(dirname "$0")/lib.sh"
export DEBIAN_FRONTEND=noninteractive

apt_ensure "${PACKAGES[@]}"

BROWSER="$(installed chromium)"
VERSION="$("$BROWSER" --version 2>/dev/null | sed -n 's/^Chromium \([0-9.]*\).*/\1/p')"
[ -n "$VERSION" ] || die "cannot read the version of $BROWSER"

ENV_FILE="$(write_env chromium "CHROMIUM=$BROWSER" "CHROMIUM_VERSION=$VERSION")"
echo "chromium $VERSION at $BROWSER; env file: $ENV_FILE"
