#!/usr/bin/env bash
# Assembles mcp-guard's container images without a container engine or a registry and imports them
# into containerd (the single-node cluster's, or any node's: air-gapped clusters import the same way).
#
#   tests/scripts/build-images.sh [pause] [sidecar] [webhook] [example-server]   (default: all four)
#
#   ghcr.io/mcp-guard/sidecar:<appVersion>   the chart's default references (charts/mcp-guard/
#   ghcr.io/mcp-guard/webhook:<appVersion>   values.yaml), so the chart works unchanged with
#                                            imagePullPolicy IfNotPresent (its default) or Never
#   localhost/mcp-guard/example-server:<appVersion>   the project's rmcp example MCP server
#   localhost/mcp-guard/pause:<kube version>  the pod sandbox (cluster-up.sh's sandbox_image)
#
# The sidecar and webhook binaries come from exactly the build stage of sidecar/Dockerfile and
# webhook/Dockerfile (one `cargo build --release --locked --target x86_64-unknown-linux-musl` of both,
# CARGO_PROFILE_RELEASE_STRIP=debuginfo; tests/tests/images.rs runs the same command, so the two share
# cargo's target dir and nothing builds twice). The images give what the Dockerfiles' distroless
# nonroot base gives: USER 65532:65532, ENTRYPOINT /usr/local/bin/<binary>, /etc/passwd and
# /etc/group, /tmp and the CA bundle /etc/ssl/certs/ca-certificates.crt (Debian's ca-certificates).
# The example server is built static for musl the same way (its own cargo invocation: adding it to
# the Dockerfiles' command would change their binaries' features). The pause binary is
# install-node.sh's build of Kubernetes' build/pause/linux/pause.c (musl-gcc -static).
#
# Each image is written as an OCI image layout archive to ${MCP_GUARD_IMAGES_DIR:-$CACHE/images}/
# (tests/scripts/oci_image.py: sorted entries, mtime 0, so the digest depends only on the content).
# When a containerd socket is known (CONTAINERD_SOCK, else the cluster's from cluster-env.sh, when it
# exists) each archive is imported with `ctr -a SOCK -n k8s.io images import`, skipped when the
# image with that digest is already there. Prints `<reference> <digest>` per image.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=cluster-env.sh
. "$HERE/cluster-env.sh"
OUT="${MCP_GUARD_IMAGES_DIR:-$CACHE/images}"
TARGET=x86_64-unknown-linux-musl

log() { printf 'build-images: %s\n' "$*" >&2; }
die() {
  printf 'build-images: error: %s\n' "$*" >&2
  exit 1
}

APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO/charts/mcp-guard/Chart.yaml")"
[ -n "$APP_VERSION" ] || die "no appVersion in charts/mcp-guard/Chart.yaml"
# repository NAME: the chart's default repository for the webhook or the sidecar.
repository() {
  awk -v s="$1" '$0 ~ "^"s":" { in_s = 1; next } /^[a-z]/ { in_s = 0 }
    in_s && $1 == "repository:" { print $2; exit }' "$REPO/charts/mcp-guard/values.yaml"
}

[ $# -gt 0 ] || set -- pause sidecar webhook example-server
SOCK="${CONTAINERD_SOCK:-$SOCK}"
CTR="${CTR:-$(command -v ctr || true)}"
mkdir -p "$OUT"

# The Dockerfiles' build stage, once for both binaries.
release_built=0
release_build() {
  [ "$release_built" = 1 ] && return 0
  log "cargo build --release --target $TARGET (sidecar/Dockerfile's build stage)"
  (cd "$REPO" && CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --target "$TARGET" \
    -p mcp-guard-sidecar --bin mcp-guard-sidecar -p mcp-guard-webhook --bin mcp-guard-webhook) >&2
  release_built=1
}
target_dir() {
  (cd "$REPO" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
}

# image REF ARCHIVE-NAME oci_image.py-ARGS...: writes the archive, imports it when a socket is known.
image() {
  local ref="$1" file="$OUT/$2.tar"
  shift 2
  local digest
  digest="$(python3 "$HERE/oci_image.py" "$file" --name "$ref" "$@")"
  if [ -S "$SOCK" ] && [ -n "$CTR" ]; then
    local have
    have="$("$CTR" -a "$SOCK" -n k8s.io images ls "name==$ref" 2>/dev/null | awk 'NR > 1 { print $3 }')"
    if [ "$have" = "$digest" ]; then
      log "$ref: $digest already in containerd"
    else
      log "$ref: importing $digest"
      "$CTR" -a "$SOCK" -n k8s.io images import "$file" >&2
    fi
  fi
  echo "$ref $digest"
}

for what in "$@"; do
  case "$what" in
  pause)
    # shellcheck disable=SC1091
    . "$CACHE/kube/node-env.sh" 2>/dev/null || die "run tests/scripts/install-node.sh first"
    # shellcheck disable=SC1091
    . "$CACHE/kube/env.sh"
    # The upstream pause image runs as 65535 too.
    image "localhost/mcp-guard/pause:$KUBE_VERSION" pause --entrypoint /pause --user 65535:65535 \
      "$PAUSE=/pause:0755"
    ;;
  sidecar | webhook)
    release_build
    bin="$(target_dir)/$TARGET/release/mcp-guard-$what"
    image "$(repository "$what"):$APP_VERSION" "$what" \
      --distroless --user 65532:65532 --entrypoint "/usr/local/bin/mcp-guard-$what" \
      "$bin=/usr/local/bin/mcp-guard-$what:0755"
    ;;
  example-server)
    log "cargo build --release --target $TARGET -p mcp-guard-tests --bin mcp-guard-example-server"
    (cd "$REPO" && CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --target "$TARGET" \
      -p mcp-guard-tests --bin mcp-guard-example-server) >&2
    bin="$(target_dir)/$TARGET/release/mcp-guard-example-server"
    image "localhost/mcp-guard/example-server:$APP_VERSION" example-server \
      --distroless --user 65532:65532 --entrypoint /usr/local/bin/mcp-guard-example-server \
      "$bin=/usr/local/bin/mcp-guard-example-server:0755"
    ;;
  *) die "unknown image $what (pause, sidecar, webhook, example-server)" ;;
  esac
done
