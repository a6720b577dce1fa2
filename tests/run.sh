#!/usr/bin/env bash
# Runs every mcp-guard test: installs the real peers the end-to-end suites drive (MCP servers and
# clients, a kube-apiserver built from source, a single-node cluster's kubelet, kube-proxy,
# kube-scheduler and containerd, an OIDC provider, an OTLP receiver, helm; all cached under
# ~/.cache/mcp-guard) and the musl toolchain the Dockerfiles build with, builds the binaries the
# suites start, then runs the workspace's tests (node_e2e brings a single-node cluster up and down
# itself, and builds and imports the images it runs).
# The first run on a fresh machine takes about 10 minutes (the kube-apiserver build) and 2 more for
# the node's (install-node.sh), plus about 7 for the images' static release build (tests/tests/
# images.rs; node_e2e reuses it) and a few for the example server's static build (node_e2e); later
# runs reuse the cache.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh -p mcp-guard-sidecar`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/scripts/install-peers.sh
bash tests/scripts/install-kube.sh
bash tests/scripts/install-node.sh
bash tests/scripts/install-oidc.sh
bash tests/scripts/install-otlp.sh
bash tests/scripts/install-redis.sh
bash tests/scripts/install-chromium.sh
bash tests/scripts/install-helm.sh
bash tests/scripts/install-musl.sh
cargo build --workspace --bins --locked
# With the peers installed, a suite that cannot find one fails instead of skipping a check.
export MCP_GUARD_REQUIRE_KUBE=1
export MCP_GUARD_REQUIRE_MUSL=1
export MCP_GUARD_REQUIRE_NODE=1
cargo test --workspace --locked "$@"
