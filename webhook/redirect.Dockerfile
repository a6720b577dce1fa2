# syntax=docker/dockerfile:1
# mcp-guard-redirect: the init container of the `redirect` traffic mode, iptables on Debian
# bookworm-slim. The webhook gives it its whole command (webhook/src/inject.rs, redirect_container):
#   iptables -t nat -A PREROUTING -p tcp --dport <server port> -j REDIRECT --to-ports <sidecar port>
# run once in the pod's network namespace, as root with NET_ADMIN and NET_RAW, before the app starts.
# Build from the repository root (nothing of the workspace is copied in):
#   docker build -f webhook/redirect.Dockerfile -t ghcr.io/mcp-guard/redirect:0.1.0 .
# The chart's default image reference is ghcr.io/mcp-guard/redirect:<appVersion>, set by the value
# sidecar.redirectImage (the webhook's --redirect-image).
#
# iptables backend: nft by default (`iptables` is iptables-nft, Debian's own default). The rule
# lives in the pod's fresh network namespace, where no other tool's rules need to coexist with
# it (kube-proxy's are in the node's namespace), so the one question is what the node's kernel
# offers: nf_tables is in every kernel a supported Kubernetes node runs, while distributions are
# phasing out the legacy ip_tables modules. For a node kernel without nf_tables, build with
# `--build-arg IPTABLES=legacy`; both backends are in the image either way.

FROM debian:bookworm-slim
ARG IPTABLES=nft
RUN case "$IPTABLES" in nft|legacy) ;; *) echo "IPTABLES must be nft or legacy, not '$IPTABLES'" >&2; exit 1;; esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && update-alternatives --set iptables "/usr/sbin/iptables-$IPTABLES" \
 && iptables --version
# Root: changing the pod's nat table needs it (the webhook sets runAsUser 0 and adds only
# NET_ADMIN and NET_RAW, dropping every other capability).
USER 0:0
ENTRYPOINT ["/usr/sbin/iptables"]
