#!/usr/bin/env bash
# Creates a CA and a serving certificate for the mcp-guard webhook Service, with openssl.
#
#   certs/gen-dev-certs.sh SERVICE NAMESPACE OUTDIR
#
# Writes OUTDIR/ca.crt, ca.key, tls.crt, tls.key (SANs: SERVICE, SERVICE.NAMESPACE,
# SERVICE.NAMESPACE.svc, SERVICE.NAMESPACE.svc.cluster.local) and prints the base64 caBundle on
# stdout (the last and only stdout line), for the webhook configurations' `caBundle` or the
# chart's `certificates.secret.caBundle`. Then:
#
#   kubectl -n NAMESPACE create secret tls SERVICE-tls --cert=OUTDIR/tls.crt --key=OUTDIR/tls.key
#
# For development and tests. Keep ca.key out of the cluster and out of version control; rotate
# by running the script again and updating the Secret (the webhook reloads it without a restart)
# and the caBundle. Validity: MCP_GUARD_CERT_DAYS (default 365).
set -euo pipefail

if [ "$#" -ne 3 ]; then
    echo "usage: $0 SERVICE NAMESPACE OUTDIR" >&2
    exit 2
fi
SERVICE="$1"
NAMESPACE="$2"
OUT="$3"
DAYS="${MCP_GUARD_CERT_DAYS:-365}"
label='^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
[[ "$SERVICE" =~ $label ]] || { echo "$0: SERVICE must be a DNS label: $SERVICE" >&2; exit 2; }
[[ "$NAMESPACE" =~ $label ]] || { echo "$0: NAMESPACE must be a DNS label: $NAMESPACE" >&2; exit 2; }
command -v openssl >/dev/null || { echo "$0: openssl is required" >&2; exit 1; }

mkdir -p "$OUT"
umask 077
FQDN="$SERVICE.$NAMESPACE.svc"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$OUT/ca.key" -out "$OUT/ca.crt" -days "$DAYS" \
    -subj "/CN=$SERVICE-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$OUT/tls.key" -out "$OUT/tls.csr" -subj "/CN=$FQDN" 2>/dev/null

cat > "$OUT/tls.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$SERVICE,DNS:$SERVICE.$NAMESPACE,DNS:$FQDN,DNS:$FQDN.cluster.local
EXT
openssl x509 -req -in "$OUT/tls.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
    -out "$OUT/tls.crt" -days "$DAYS" -extfile "$OUT/tls.ext" 2>/dev/null
rm -f "$OUT/tls.csr" "$OUT/tls.ext" "$OUT/ca.srl"
chmod 0644 "$OUT/ca.crt" "$OUT/tls.crt"

openssl verify -CAfile "$OUT/ca.crt" "$OUT/tls.crt" >/dev/null
echo "wrote $OUT/{ca.crt,ca.key,tls.crt,tls.key} for $FQDN; caBundle:" >&2
base64 -w0 < "$OUT/ca.crt"
echo
