#!/usr/bin/env bash
# Installs the Debian packages the tests use (real servers, no mocks), if
# missing (procps for sysctl and git for the README test, which most images have
# anyway; systemd for systemd-socket-activate in the socket-activation tests;
# docker-compose, Compose v1, brings up examples/compose in the e2e tests).
# Needs root or sudo; does nothing when everything is present.
set -euo pipefail
need=()
for pkg in redis-server redis-tools chromium haproxy tcpdump iptables iproute2 procps git nginx curl iperf3 socat systemd bash-completion man-db groff-base docker-compose "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
