#!/usr/bin/env bash
# Installs the real OpenID provider the identity suites run against: npm `oidc-provider` (pinned in
# tests/scripts/oidc/package.json) on Node 22, cached under
# ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/oidc/<hash of package.json>. A second run finds the stamp
# and returns at once. Writes $CACHE/oidc/env.sh (OIDC_NODE, OIDC_APP, OIDC_PROVIDER_VERSION) that
# tests/src/oidc.rs reads. Node 22 comes from tests/scripts/install-peers.sh (run here when its env
# file is missing). Needs no stdin and no TTY; uses only the npm registry.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/oidc"
CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
PEERS_ENV="$CACHE/peers/env.sh"

log() { printf 'install-oidc: %s\n' "$*" >&2; }
die() { printf 'install-oidc: error: %s\n' "$*" >&2; exit 1; }

if [ ! -f "$PEERS_ENV" ]; then
  log "no $PEERS_ENV: running install-peers.sh for Node 22"
  bash "$HERE/install-peers.sh" >&2
fi
NODE22="$(sed -n 's/^NODE22=//p' "$PEERS_ENV" | head -n1)"
[ -x "$NODE22" ] || die "NODE22 from $PEERS_ENV is not executable; rerun tests/scripts/install-peers.sh"
command -v npm >/dev/null || die "npm is required"

KEY="$(cat "$SRC/package.json" | sha256sum | cut -c1-16)"
VERSION="$(sed -n 's/.*"oidc-provider": *"\([^"]*\)".*/\1/p' "$SRC/package.json")"
DIR="$CACHE/oidc/oidc-provider-$VERSION-$KEY"
if [ ! -f "$DIR/.installed" ]; then
  log "installing oidc-provider@$VERSION into $DIR"
  tmp="$DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp "$SRC/package.json" "$tmp/package.json"
  export npm_config_yes=true npm_config_fund=false npm_config_audit=false \
    npm_config_update_notifier=false npm_config_loglevel=error
  (cd "$tmp" && npm install --no-save --ignore-scripts --no-package-lock </dev/null >&2) ||
    { rm -rf "$tmp"; die "npm install failed"; }
  rm -rf "$DIR"
  mv "$tmp" "$DIR"
  touch "$DIR/.installed"
fi
# The app is copied beside its node_modules (Node resolves packages from the real path) on every
# run, so edits to provider.mjs need no reinstall.
cp -f "$SRC/provider.mjs" "$DIR/provider.mjs.tmp" && mv -f "$DIR/provider.mjs.tmp" "$DIR/provider.mjs"
"$NODE22" -e "import('$DIR/node_modules/oidc-provider/lib/index.js').then(()=>process.exit(0),e=>{console.error(e);process.exit(1)})" ||
  die "oidc-provider does not load on $NODE22"

ENV_FILE="$CACHE/oidc/env.sh"
cat >"$ENV_FILE.tmp" <<EOT
# Written by tests/scripts/install-oidc.sh; read by tests/src/oidc.rs. Plain KEY=VALUE lines.
OIDC_NODE=$NODE22
OIDC_APP=$DIR/provider.mjs
OIDC_PROVIDER_VERSION=$VERSION
EOT
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "oidc-provider $VERSION installed under $DIR; env file: $ENV_FILE"
