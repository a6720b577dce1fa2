#!/usr/bin/env bash
# Runs every mcp-guard test: installs the real peers the end-to-end suites drive (cached under
# ~/.cache/mcp-guard), builds the binaries they start, then runs the workspace's tests.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh -p mcp-guard-sidecar`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/scripts/install-peers.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
