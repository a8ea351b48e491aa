# attache image: one static binary and nothing else.
#
#   docker build -t attache .
#   docker build --build-arg VERSION=$(git describe --always) \
#                --build-arg REVISION=$(git rev-parse HEAD) -t attache .
#
# Stage 1 compiles attache in the official Go image; stage 2 is FROM scratch
# and holds only /attache: no libc (CGO_ENABLED=0), shell or CA bundle are
# needed. Without an /etc/nsswitch.conf Go's resolver reads /etc/hosts first,
# then DNS, so both --link aliases and user-defined networks' embedded DNS
# resolve.
#
# Every RUN is in exec form, so the builder may be any image with the Go
# toolchain on its PATH, shell or not: a machine that cannot pull
# golang:1.26 builds one from its own Go and module cache
# (scripts/go-builder-image.sh prints its tag) and passes
# --build-arg GO_IMAGE=<that tag>. The version goes in through GOFLAGS (an
# ENV, where the builder substitutes ${VERSION}; exec-form RUN substitutes
# nothing), whose quoting the go command understands.
#
# `make image` builds the same final image from a binary compiled on the host
# instead (Dockerfile.dist); keep the two final stages alike.
ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
# The modules first, in a layer of their own: a source change then reuses it.
COPY go.mod go.sum ./
RUN ["go", "mod", "download"]
COPY . .
ARG VERSION=dev
# GOTOOLCHAIN=local: build with the image's Go, never download another.
ENV CGO_ENABLED=0 GOTOOLCHAIN=local \
    GOFLAGS="-buildvcs=false -trimpath '-ldflags=-s -w -X github.com/attache/attache/internal/cli.Version=${VERSION}'"
RUN ["go", "build", "-o", "/out/attache", "./cmd/attache"]

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="attache" \
      org.opencontainers.image.description="L4 ambassador proxy: forwards TCP and UDP to services found by Docker links, DNS, etcd, Consul or the Docker engine" \
      org.opencontainers.image.source="https://github.com/attache/attache" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/attache /attache
# Non-root by default: uid and gid 65532 ("nonroot" in distroless images;
# numeric, as scratch has no /etc/passwd). This is enough for an ambassador,
# ports below 1024 included: since Docker 20.10 every container's network
# namespace has net.ipv4.ip_unprivileged_port_start=0 (not with
# --network host, where the host's setting applies).
#
# What needs more:
#   * --tproxy (transparent mode with TPROXY rules): the listener sets
#     IP_TRANSPARENT, which needs CAP_NET_ADMIN (or CAP_NET_RAW, in Docker's
#     default set), and Docker gives capabilities to root's processes only
#     (a non-root user's effective set is empty, --cap-add or not):
#     --user 0 --cap-add NET_ADMIN.
#   * transparent mode with REDIRECT rules: no privilege to read a
#     connection's original destination, but run attache on the host
#     network (--network host), and install the rules on the host:
#     `attache iptables ... --apply` runs the iptables and ip commands,
#     which this image does not have.
#   * the Docker socket (discovery.docker, per_consumer), owned by
#     root:docker with mode 660: --group-add <the socket's gid>, or --user 0.
USER 65532:65532
# Exit 0 when every listener serves (or, with --admin/$ATTACHE_ADMIN, when
# /readyz says ready); it reads pid 1's arguments and environment, so no
# arguments are needed here. Every 10 s rather than Docker's 30 s, so that
# Compose's `depends_on: {condition: service_healthy}` waits little.
HEALTHCHECK --interval=10s --timeout=10s --start-period=5s --retries=3 \
    CMD ["/attache", "healthcheck"]
ENTRYPOINT ["/attache"]
