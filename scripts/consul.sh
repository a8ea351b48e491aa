#!/usr/bin/env bash
# Builds the real Consul agent that the Consul discovery tests run against,
# once, into a cache directory outside the repository, and prints its path.
#
# Debian has no Consul package and `go install github.com/hashicorp/consul@…`
# is refused because Consul's go.mod replaces its sub-modules with local
# folders. So: download the module source, copy it somewhere writable, drop the
# three replace lines (the published api/sdk/proto-public versions it requires
# are used instead) and build it with -mod=mod. The first build takes about six
# minutes; later calls print the cached path at once.
#
# Environment: ATTACHE_CACHE (default $HOME/.cache/attache).
set -euo pipefail

version=1.14.11
cache="${ATTACHE_CACHE:-$HOME/.cache/attache}"
dest="$cache/consul-$version"
bin="$dest/consul"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dest"
# Two test packages (or CI and a developer) may ask at the same time; one
# builds, the other waits and then finds the binary.
exec 9>"$dest/.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

# Run the go commands outside any module so the caller's go.mod (attache's)
# plays no part.
cd "$dest"
unset GOFLAGS
json="$(GO111MODULE=on go mod download -json "github.com/hashicorp/consul@v$version")"
moddir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
if [ -z "$moddir" ] || [ ! -f "$moddir/go.mod" ]; then
  echo "consul.sh: go mod download gave no module dir for consul v$version:" >&2
  printf '%s\n' "$json" >&2
  exit 1
fi

src="$dest/src"
rm -rf "$src"
cp -R "$moddir" "$src"
chmod -R u+w "$src"
# The replace lines point at ./api, ./sdk and ./proto-public; keep every other
# line of go.mod as it is.
sed -i -E '/^replace[[:space:]]+github\.com\/hashicorp\/consul\/(api|sdk|proto-public)[[:space:]]+=>/d' "$src/go.mod"
if grep -qE 'github\.com/hashicorp/consul/(api|sdk|proto-public)[[:space:]]+=>' "$src/go.mod"; then
  echo "consul.sh: replace lines left in $src/go.mod (a replace block?)" >&2
  exit 1
fi

echo "consul.sh: building consul v$version in $src (first time: several minutes)" >&2
start=$(date +%s)
(cd "$src" && GOFLAGS=-mod=mod go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
rm -rf "$src"
echo "consul.sh: built $bin in $(( $(date +%s) - start ))s" >&2
echo "$bin"
