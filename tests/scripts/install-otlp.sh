#!/usr/bin/env bash
# Installs the OTLP receiver's Python dependencies (PyPI opentelemetry-proto + protobuf) in a venv
# under ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/otlp/. A second run finds the stamp and returns
# at once. Writes $CACHE/otlp/env.sh (OTLP_PYTHON, OTLP_PROTO_VERSION) that tests/tests/otel_e2e.rs
# reads; the receiver itself is tests/scripts/otlp_receiver.py. Needs no stdin and no TTY; uses only
# PyPI.
set -euo pipefail

CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
PROTO_VERSION="1.39.1"
PROTOBUF_SPEC="protobuf>=5,<7"

log() { printf 'install-otlp: %s\n' "$*" >&2; }
die() { printf 'install-otlp: error: %s\n' "$*" >&2; exit 1; }

PY_BOOT="${PYTHON_BOOTSTRAP:-$(command -v python3 || true)}"
[ -n "$PY_BOOT" ] || die "python3 (>= 3.9) is required"

DIR="$CACHE/otlp/py-otlp-proto-$PROTO_VERSION"
if [ ! -f "$DIR/.installed" ]; then
  log "creating a venv with opentelemetry-proto==$PROTO_VERSION in $DIR"
  # A venv records its own path, so it is built in place; the stamp marks it complete.
  rm -rf "$DIR"
  "$PY_BOOT" -m venv "$DIR" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$DIR/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "opentelemetry-proto==$PROTO_VERSION" "$PROTOBUF_SPEC" </dev/null >&2 ||
    { rm -rf "$DIR"; die "pip install opentelemetry-proto failed"; }
  touch "$DIR/.installed"
fi
"$DIR/bin/python" -c 'from opentelemetry.proto.collector.trace.v1 import trace_service_pb2' ||
  die "$DIR/bin/python cannot import opentelemetry.proto"

ENV_FILE="$CACHE/otlp/env.sh"
cat >"$ENV_FILE.tmp" <<EOT
# Written by tests/scripts/install-otlp.sh; read by tests/tests/otel_e2e.rs. Plain KEY=VALUE lines.
OTLP_PYTHON=$DIR/bin/python
OTLP_PROTO_VERSION=$PROTO_VERSION
EOT
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "opentelemetry-proto $PROTO_VERSION installed under $DIR; env file: $ENV_FILE"
