#!/usr/bin/env bash
# Regenerates manifests/mcp-guard.yaml from the chart with its default values (release
# `mcp-guard`, namespace `mcp-guard`). tests/tests/chart.rs fails when the file is out of date.
# Uses $HELM, else helm from tests/scripts/install-helm.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM="${HELM:-$(bash tests/scripts/install-helm.sh 2>/dev/null | tail -n1)}"
{
    cat <<'HEADER'
# mcp-guard, plain manifests: the Helm chart (charts/mcp-guard) rendered with its default values,
# release `mcp-guard` in namespace `mcp-guard`, by manifests/render.sh (run it after any chart
# change; tests/tests/chart.rs checks the file is in sync, ignoring generated certificate material).
#
# The Secret `mcp-guard-webhook-tls` and the caBundles below hold a CA and key generated when this
# file was rendered and published with the repository: fine for a trial, never for a real cluster.
# Before applying elsewhere, replace them: certs/gen-dev-certs.sh (then the Secret and both
# caBundles), certs/cert-manager.yaml, or install with the chart, which generates its own.
#
#   kubectl create namespace mcp-guard
#   kubectl apply -f manifests/mcp-guard.yaml
HEADER
    "$HELM" template mcp-guard charts/mcp-guard --namespace mcp-guard --include-crds
} > manifests/mcp-guard.yaml.tmp
mv manifests/mcp-guard.yaml.tmp manifests/mcp-guard.yaml
echo "wrote manifests/mcp-guard.yaml" >&2
