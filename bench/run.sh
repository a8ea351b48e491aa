#!/usr/bin/env bash
# Builds attache, the naive proxy, the idle-connection holder and the runner
# into bench/out/ (gitignored), then runs the benchmark. Every argument goes
# to the runner: bench/run.sh -quick, bench/run.sh -rounds 5 -only haproxy,attache,
# bench/run.sh -quick -metrics balance,balance-connect (balancing over 3 redis-servers).
# The report is printed and written to bench/out/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in socat haproxy iperf3 redis-server redis-benchmark; do
	command -v "$tool" >/dev/null || { echo "bench/run.sh: $tool is not installed" >&2; exit 2; }
done

out=bench/out
mkdir -p "$out"
rm -rf "$out/logs"
version=$(git describe --always --dirty 2>/dev/null || echo dev)
CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/attache/attache/internal/cli.Version=$version" \
	-o "$out/attache" ./cmd/attache
go build -trimpath -o "$out/naiveproxy" ./bench/naiveproxy
go build -trimpath -o "$out/idleconns" ./bench/idleconns
go build -trimpath -o "$out/udpload" ./bench/udpload
go build -trimpath -o "$out/runner" ./bench/runner

export BENCH_INVOCATION="bench/run.sh${*:+ $*}"
# exec: Ctrl-C goes straight to the runner, which stops what it started.
exec "$out/runner" -attache "$out/attache" -naive "$out/naiveproxy" -idleconns "$out/idleconns" -udpload "$out/udpload" \
	-out "$out/results.md" "$@"
