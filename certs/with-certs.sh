#!/usr/bin/env bash
# Prints the plain manifests (manifests/mcp-guard.yaml, or MANIFEST) with the certificate that
# certs/gen-dev-certs.sh wrote to CERTDIR in place of the one published with the repository: the
# Secret's tls.crt, tls.key and ca.crt, and the caBundle of both webhook configurations.
#
#   certs/gen-dev-certs.sh mcp-guard-webhook mcp-guard ./webhook-certs
#   kubectl create namespace mcp-guard
#   certs/with-certs.sh ./webhook-certs | kubectl apply -f -
#
# Fails (and prints nothing) when the manifest does not hold exactly one Secret certificate and
# two caBundles to replace, so a change of the rendering cannot leave the published key in place.
# The plain manifests use the default release name and namespace (`mcp-guard-webhook` in
# `mcp-guard`): generate the certificate for those.
set -euo pipefail

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    echo "usage: $0 CERTDIR [MANIFEST]" >&2
    exit 2
fi
DIR="$1"
MANIFEST="${2:-$(cd "$(dirname "$0")/.." && pwd)/manifests/mcp-guard.yaml}"
for f in ca.crt tls.crt tls.key; do
    [ -s "$DIR/$f" ] || { echo "$0: $DIR/$f is missing: run certs/gen-dev-certs.sh first" >&2; exit 1; }
done
[ -s "$MANIFEST" ] || { echo "$0: $MANIFEST is missing" >&2; exit 1; }

count() { grep -c -- "$1" "$MANIFEST" || true; }
[ "$(count '^  tls\.crt: ')" = 1 ] && [ "$(count '^  tls\.key: ')" = 1 ] &&
    [ "$(count '^  ca\.crt: ')" = 1 ] && [ "$(count '^      caBundle: ')" = 2 ] || {
    echo "$0: $MANIFEST does not have one Secret certificate and two caBundles to replace" >&2
    exit 1
}

CA="$(base64 -w0 < "$DIR/ca.crt")"
CRT="$(base64 -w0 < "$DIR/tls.crt")"
KEY="$(base64 -w0 < "$DIR/tls.key")"
sed -e "s|^  tls\.crt: .*|  tls.crt: $CRT|" \
    -e "s|^  tls\.key: .*|  tls.key: $KEY|" \
    -e "s|^  ca\.crt: .*|  ca.crt: $CA|" \
    -e "s|^      caBundle: .*|      caBundle: $CA|" \
    "$MANIFEST"
