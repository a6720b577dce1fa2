#!/usr/bin/env bash
# Installs what the build stage of sidecar/Dockerfile and webhook/Dockerfile installs, on this
# machine, so that their static build (`cargo build --release --target x86_64-unknown-linux-musl`)
# runs here too (tests/tests/images.rs runs it):
#
#   x86_64-unknown-linux-musl   rustup's standard library for the musl target
#   musl-tools                  Debian: x86_64-linux-musl-gcc (alias musl-gcc), gcc over musl's
#                               headers and libc. The cc crate picks it for the musl target to
#                               compile ring's C and assembly (ring is rustls's crypto provider);
#                               without it the build stops at ring.
#
# Keep this list and the Dockerfiles' `RUN apt-get install ... && rustup target add ...` the same.
# Idempotent: what is already installed is left alone, and a second run returns at once. Needs no
# stdin and no TTY (works with CI=true); apt-get runs only when musl-tools is missing, and then
# needs root. Prints the C compiler's path on its last line.
set -euo pipefail

TARGET=x86_64-unknown-linux-musl
PACKAGES=(musl-tools)

log() { printf 'install-musl: %s\n' "$*" >&2; }
die() {
  printf 'install-musl: error: %s\n' "$*" >&2
  exit 1
}

. "$(dirname "$0")/lib.sh"
export DEBIAN_FRONTEND=noninteractive

# --- rustup target ---------------------------------------------------------------------------
command -v rustup >/dev/null || die "rustup is required (the musl standard library comes from it)"
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "rustup target add $TARGET"
  rustup target add "$TARGET" </dev/null >&2
fi

# --- Debian packages -------------------------------------------------------------------------
apt_ensure "${PACKAGES[@]}"

MUSL_GCC="$(command -v x86_64-linux-musl-gcc || true)"
[ -x "$MUSL_GCC" ] || die "musl-tools installed but no x86_64-linux-musl-gcc on PATH"
rustup target list --installed | grep -qx "$TARGET" || die "rustup did not install $TARGET"
echo "$MUSL_GCC"
