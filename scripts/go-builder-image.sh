#!/usr/bin/env bash
# Makes a stand-in for the official Go image out of this machine's own Go
# toolchain and module cache, and prints its tag, for building the
# multi-stage Dockerfile where no registry can be reached:
#
#   docker build --build-arg GO_IMAGE=$(bash scripts/go-builder-image.sh) -t attache .
#
# The image is FROM scratch (made with `docker import`: no base image, no
# builder) and holds:
#   /usr/local/go                     this machine's GOROOT (without its test/ tree)
#   /go/pkg/mod/cache/download        the module zips go.sum names, so the
#                                     Dockerfile's `go mod download` and
#                                     `go build` run with GOPROXY=off
#   /tmp                              for the go command's work directories
# and the official image's environment (PATH, GOPATH=/go, GOTOOLCHAIN=local).
# It has no shell: the Dockerfile's RUN lines are in exec form for that.
#
# The tag is attache-go-builder:<go version>-<hash of go.sum>, so a new Go or
# a module change makes a new image and an unchanged one is reused at once.
# The modules come from the local module cache, else from GOPROXY.
set -euo pipefail
cd "$(dirname "$0")/.."

goversion="$(go env GOVERSION)"
goroot="$(go env GOROOT)"
sum="$(sha256sum go.sum | cut -c1-12)"
tag="attache-go-builder:${goversion}-${sum}"

if docker image inspect --format '{{.Id}}' "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

# Two callers at once (a test and a developer): one builds, the other waits.
cache="${ATTACHE_CACHE:-$HOME/.cache/attache}"
mkdir -p "$cache"
exec 9>"$cache/go-builder-image.lock"
flock 9
if docker image inspect --format '{{.Id}}' "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

stage="$(mktemp -d)"
trap 'chmod -R u+w "$stage" 2>/dev/null; rm -rf "$stage"' EXIT
mkdir -p "$stage/tmp" "$stage/go/bin"
chmod 1777 "$stage/tmp"

# Only the download cache (zips, go.mod and info files) is shipped: the go
# command extracts a module from it on first use, and the extracted trees
# would double the image.
hostcache="$(go env GOMODCACHE)/cache/download"
GOMODCACHE="$stage/go/pkg/mod" GOFLAGS=-modcacherw GOTOOLCHAIN=local \
  GOPROXY="file://$hostcache,$(go env GOPROXY)" go mod download
find "$stage/go/pkg/mod" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +

start=$(date +%s)
tar -c -f - --numeric-owner --owner=0 --group=0 -C "$stage" ./tmp ./go \
  -C "$(dirname "$goroot")" --exclude="$(basename "$goroot")/test" \
  --transform="s,^$(basename "$goroot")\(/\|\$\),usr/local/go\1," "$(basename "$goroot")" |
  docker image import \
    --change 'ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV GOPATH=/go' \
    --change 'ENV GOTOOLCHAIN=local' \
    --change 'ENV GOPROXY=off' \
    --change 'ENV GOCACHE=/tmp/go-build' \
    --change 'WORKDIR /go' \
    --message "attache builder: ${goversion} and the modules of go.sum ${sum}" \
    - "$tag" >/dev/null
echo "go-builder-image.sh: made $tag in $(( $(date +%s) - start ))s" >&2
echo "$tag"
