#!/usr/bin/env bash
# ab.sh BIN_A BIN_B [cycles]
#
# Build the two binaries first, e.g. from two commits:
#   git worktree add /tmp/old OLD && (cd /tmp/old && CGO_ENABLED=0 go build -o /tmp/attache-old ./cmd/attache)
#   CGO_ENABLED=0 go build -o /tmp/attache-new ./cmd/attache
#   bench/ab.sh /tmp/attache-old /tmp/attache-new 6
#
# A/B benchmark of two attache binaries on bench's "attache-link" topology
# (bench/runner/links.go: client relay -> attache:// multiplexed mutual-TLS
# link -> link-server relay -> redis-server), redis-get metric
# (redis-benchmark -t get -c 50 -P 16 --csv, as bench/runner/metrics.go).
# Each cycle runs binA-link, binB-link and BIN_A's attache-2hop (plain TCP
# between the relays, --forward on both) as a reference; odd cycles run
# A then B, even cycles B then A, so slow drift cancels in the ratios.
# Right after 2hop, each cycle also measures bench's "haproxy-tls" reference
# (bench/runner/links.go startHAProxyTLS): two haproxy -db processes, the
# client side's `server ... ssl crt ... ca-file ... verify required` to the
# server side's `bind ... ssl crt ... ca-file ... verify required`, TLS 1.3
# only, global maxconn 8000, no nbthread/tune/splice settings (as bench).
#
# Env knobs: DUR (target seconds per measurement, default 10), N (requests
# per measurement; default: calibrated once from BIN_A's link path so a run
# lasts about DUR s), WARM_N (warm-up requests, default 200000), MODE
# (link.mode, default multiplexed), WORK (work dir, default ${TMPDIR:-/tmp}/attache-ab.PID),
# BASE (port base, default 16000).
#
# Ports (all below the ephemeral range 32768-60999 and off bench's 26000+):
#   BASE    redis-server          BASE+10 client relay (the measured listener)
#   BASE+11 link server (TLS)     BASE+12 link server's own service listener (unused)
#   BASE+13 2hop server relay (--forward BASE+13=BASE)
#   BASE+20 haproxy-tls client side (measured listener)
#   BASE+21 haproxy-tls server side (TLS)
set -uo pipefail

usage() { echo "usage: $0 BIN_A BIN_B [cycles]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
BIN_A=$(readlink -f "$1"); BIN_B=$(readlink -f "$2"); CYCLES=${3:-5}
for b in "$BIN_A" "$BIN_B"; do [ -x "$b" ] || { echo "ab.sh: $b is not an executable" >&2; exit 2; }; done
[[ $CYCLES =~ ^[1-9][0-9]*$ ]] || usage
for tool in redis-server redis-cli redis-benchmark ss awk haproxy; do
	command -v "$tool" >/dev/null || { echo "ab.sh: $tool is not installed (apt-get install redis-server redis-tools haproxy)" >&2; exit 2; }
done

DUR=${DUR:-10}
WARM_N=${WARM_N:-200000}
MODE=${MODE:-multiplexed}
BASE=${BASE:-16000}
P_REDIS=$BASE P_CLI=$((BASE + 10)) P_LINK=$((BASE + 11)) P_MID=$((BASE + 12)) P_HOP=$((BASE + 13))
P_HAPC=$((BASE + 20)) P_HAPS=$((BASE + 21))
WORK=${WORK:-${TMPDIR:-/tmp}/attache-ab.$$}
mkdir -p "$WORK" || exit 2
HZ=$(getconf CLK_TCK)
RESULTS=$WORK/results.tsv

# ---- process bookkeeping: everything we start is tracked by PID ----------
PIDS=()
stop_pid() { # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL; reap
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && { echo "ab.sh: pid $pid ignored SIGTERM, killing" >&2; kill -KILL "$pid" 2>/dev/null; }
	wait "$pid" 2>/dev/null
	local keep=() p
	for p in "${PIDS[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
	PIDS=("${keep[@]}")
}
cleanup() {
	local p
	for p in "${PIDS[@]}"; do stop_pid "$p"; done
}
trap cleanup EXIT
trap 'echo "ab.sh: interrupted" >&2; exit 130' INT TERM

die() { echo "ab.sh: $*" >&2; exit 1; }
port_free() { ! ss -Htln "sport = :$1" | grep -q .; }
wait_port() { # wait_port PORT PID: until something accepts on 127.0.0.1:PORT
	local i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
wait_ping() { # wait_ping PORT PID: until redis PING through the port answers PONG
	local i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$2" 2>/dev/null || return 1
		[ "$(timeout 2 redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
		sleep 0.1
	done
	return 1
}
ticks() { # utime+stime of PID in clock ticks (fields 14,15; comm may hold spaces)
	local s
	s=$(<"/proc/$1/stat") || { echo 0; return; }
	s=${s##*) }
	awk '{print $12 + $13}' <<<"$s"
}

# ---- redis-server, once ---------------------------------------------------
for p in $P_REDIS $P_CLI $P_LINK $P_MID $P_HOP $P_HAPC $P_HAPS; do port_free "$p" || die "port $p is in use"; done
redis-server --port "$P_REDIS" --save '' --appendonly no --bind 127.0.0.1 --maxclients 10000 \
	>"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_ping "$P_REDIS" "$REDIS_PID" || die "redis-server did not start (see $WORK/redis.log)"

# ---- certificates (as bench/runner/links.go benchPKI) and configs ----------
PKI=$WORK/pki
rm -rf "$PKI"
"$BIN_A" certs init --dir "$PKI" >"$WORK/certs.log" 2>&1 &&
	"$BIN_A" certs issue bench-client --dir "$PKI" >>"$WORK/certs.log" 2>&1 &&
	"$BIN_A" certs issue bench-server --dir "$PKI" --dns localhost --ip 127.0.0.1 >>"$WORK/certs.log" 2>&1 ||
	die "attache certs failed (see $WORK/certs.log)"

cat >"$WORK/link-server.yaml" <<EOF
link:
  listen: 127.0.0.1:$P_LINK
  cert: $PKI/bench-server.crt
  key: $PKI/bench-server.key
  ca: $PKI/fleet-ca.crt
  offer:
    bench-0: [bench-client]
services:
  - name: bench-0
    listen: 127.0.0.1:$P_MID
    backends: [127.0.0.1:$P_REDIS]
EOF
cat >"$WORK/link-client.yaml" <<EOF
link:
  cert: $PKI/bench-client.crt
  key: $PKI/bench-client.key
  ca: $PKI/fleet-ca.crt
  mode: $MODE
services:
  - name: bench-0
    listen: 127.0.0.1:$P_CLI
    backends: ["attache://127.0.0.1:$P_LINK/bench-0"]
EOF
COMMON=(--log-level warn --env-links=false)

# haproxy-tls, as bench/runner/links.go startHAProxyTLS: .pem = certificate
# then key (benchPKI), one config per side.
for who in bench-client bench-server; do
	(umask 077 && cat "$PKI/$who.crt" "$PKI/$who.key" >"$PKI/$who.pem") || die "cannot write $PKI/$who.pem"
done
for side in server client; do
	cat >"$WORK/haproxy-$side.cfg" <<EOF
global
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
EOF
done
cat >>"$WORK/haproxy-server.cfg" <<EOF

frontend f0
    bind 127.0.0.1:$P_HAPS ssl crt $PKI/bench-server.pem ca-file $PKI/fleet-ca.crt verify required
    default_backend b0

backend b0
    server s0 127.0.0.1:$P_REDIS
EOF
cat >>"$WORK/haproxy-client.cfg" <<EOF

frontend f0
    bind 127.0.0.1:$P_HAPC
    default_backend b0

backend b0
    server s0 127.0.0.1:$P_HAPS ssl crt $PKI/bench-client.pem ca-file $PKI/fleet-ca.crt verify required
EOF
for side in server client; do
	haproxy -c -q -f "$WORK/haproxy-$side.cfg" >"$WORK/haproxy-$side-check.log" 2>&1 ||
		die "haproxy-$side.cfg does not check (see $WORK/haproxy-$side-check.log)"
done

# ---- one measurement -------------------------------------------------------
SRV_PID= CLI_PID= MEAS_PORT=$P_CLI
start_relays() { # start_relays TOPO BIN LOGTAG (TOPO link, 2hop or hap; hap ignores BIN)
	local topo=$1 bin=$2 tag=$3 srv_port
	if [ "$topo" = hap ]; then
		# -db: foreground, no master-worker, so $! is the (multi-threaded) haproxy process
		haproxy -db -f "$WORK/haproxy-server.cfg" >"$WORK/$tag-server.log" 2>&1 &
		SRV_PID=$!
		PIDS+=("$SRV_PID")
		wait_port "$P_HAPS" "$SRV_PID" || die "$tag: haproxy server side not listening on $P_HAPS (see $WORK/$tag-server.log)"
		haproxy -db -f "$WORK/haproxy-client.cfg" >"$WORK/$tag-client.log" 2>&1 &
		CLI_PID=$!
		PIDS+=("$CLI_PID")
		MEAS_PORT=$P_HAPC
		wait_ping "$MEAS_PORT" "$CLI_PID" || die "$tag: no PONG through 127.0.0.1:$MEAS_PORT (see $WORK/$tag-*.log)"
		return 0
	fi
	MEAS_PORT=$P_CLI
	if [ "$topo" = link ]; then
		"$bin" -c "$WORK/link-server.yaml" "${COMMON[@]}" >"$WORK/$tag-server.log" 2>&1 &
		srv_port=$P_LINK
	else
		"$bin" --forward "127.0.0.1:$P_HOP=127.0.0.1:$P_REDIS" "${COMMON[@]}" >"$WORK/$tag-server.log" 2>&1 &
		srv_port=$P_HOP
	fi
	SRV_PID=$!
	PIDS+=("$SRV_PID")
	wait_port "$srv_port" "$SRV_PID" || die "$tag: server relay not listening on $srv_port (see $WORK/$tag-server.log)"
	if [ "$topo" = link ]; then
		"$bin" -c "$WORK/link-client.yaml" "${COMMON[@]}" >"$WORK/$tag-client.log" 2>&1 &
	else
		"$bin" --forward "127.0.0.1:$P_CLI=127.0.0.1:$P_HOP" "${COMMON[@]}" >"$WORK/$tag-client.log" 2>&1 &
	fi
	CLI_PID=$!
	PIDS+=("$CLI_PID")
	wait_ping "$MEAS_PORT" "$CLI_PID" || die "$tag: no PONG through 127.0.0.1:$MEAS_PORT (see $WORK/$tag-*.log)"
}
stop_relays() {
	stop_pid "$CLI_PID"
	stop_pid "$SRV_PID"
	local i
	for ((i = 0; i < 50; i++)); do
		port_free "$P_CLI" && port_free "$P_LINK" && port_free "$P_HOP" && port_free "$P_HAPC" && port_free "$P_HAPS" && return 0
		sleep 0.1
	done
	die "relay ports still in use after stop"
}
bench_get() { # bench_get N -> "rps p99" (redis-benchmark --csv, Redis 7 layout)
	redis-benchmark -h 127.0.0.1 -p "$MEAS_PORT" -t get -c 50 -P 16 -n "$1" --csv 2>/dev/null | awk -F, '
		{ gsub(/"/, "") }
		NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
		toupper($1) == "GET" { print $col["rps"], $col["p99_latency_ms"]; found = 1 }
		END { if (!found) exit 1 }'
}
# measure TOPO BIN LABEL CYCLE -> appends a row to RESULTS, echoes "rps p99 cpu_us_per_req"
measure() {
	local topo=$1 bin=$2 label=$3 cyc=$4 out rps p99 c0 s0 c1 s1 lc
	start_relays "$topo" "$bin" "c$cyc-$label"
	bench_get "$WARM_N" >/dev/null || die "$label: warm-up failed"
	c0=$(ticks "$CLI_PID") s0=$(ticks "$SRV_PID")
	out=$(bench_get "$N") || die "$label: redis-benchmark failed"
	c1=$(ticks "$CLI_PID") s1=$(ticks "$SRV_PID")
	# pooled link connections (client relay -> link server) still open after the run
	lc=$(ss -Htn state established "dport = :$P_LINK" | wc -l)
	[ "$topo" = link ] || lc=-
	stop_relays
	read -r rps p99 <<<"$out"
	awk -v cyc="$cyc" -v l="$label" -v r="$rps" -v p="$p99" -v dc=$((c1 - c0)) -v ds=$((s1 - s0)) -v hz="$HZ" -v n="$N" -v lc="$lc" \
		'BEGIN { cc = dc * 1e6 / hz / n; cs = ds * 1e6 / hz / n
		         printf "%d\t%s\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%s\n", cyc, l, r, p, cc, cs, cc + cs, lc }' >>"$RESULTS"
	printf '  cycle %d %-5s rps %8.0f  p99 %6.3f ms  cpu %s us/req (client+server)  link conns %s\n' "$cyc" "$label" "$rps" "$p99" \
		"$(tail -1 "$RESULTS" | cut -f7)" "$lc" >&2
}

# ---- calibrate N so one measurement lasts about DUR s ------------------------
if [ -z "${N:-}" ]; then
	start_relays link "$BIN_A" calib
	bench_get "$WARM_N" >/dev/null || die "calibration warm-up failed"
	cout=$(bench_get 500000) || die "calibration failed"
	read -r crps _ <<<"$cout"
	stop_relays
	N=$(awk -v r="$crps" -v d="$DUR" 'BEGIN { printf "%d", int(r * d / 10000 + 0.5) * 10000 }')
	[ "$N" -gt 0 ] || N=1000000
fi

{
	echo "ab.sh: A=$BIN_A"
	echo "ab.sh: B=$BIN_B"
	echo "ab.sh: cycles=$CYCLES, N=$N GETs per run (redis-benchmark -t get -c 50 -P 16), warm-up $WARM_N, link.mode $MODE, work dir $WORK"
} >&2
printf 'cycle\trun\trps\tp99_ms\tcpu_client_us\tcpu_server_us\tcpu_total_us\tlink_conns\n' >"$RESULTS"

busy_pct() { # machine-wide non-idle CPU % over 1 s (our relays are stopped between runs)
	local a b
	a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat); sleep 1
	b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); u = y[1] - x[1]; i = y[2] - x[2]; printf "%d", (u + i) ? 100 * u / (u + i) : 0 }'
}
for ((cyc = 1; cyc <= CYCLES; cyc++)); do
	busy=$(busy_pct)
	((busy > 10)) && echo "ab.sh: WARNING: machine ${busy}% busy before cycle $cyc (another load running?): this cycle is suspect" >&2
	if ((cyc % 2)); then order=(A B); else order=(B A); fi
	for w in "${order[@]}"; do
		if [ "$w" = A ]; then measure link "$BIN_A" A "$cyc"; else measure link "$BIN_B" B "$cyc"; fi
	done
	measure 2hop "$BIN_A" 2hop "$cyc"
	measure hap - hap "$cyc"
done

# ---- report ----------------------------------------------------------------
awk -F'\t' '
NR == 1 { next }
{ rps[$1, $2] = $3; p99[$1, $2] = $4; cpu[$1, $2] = $7; if ($1 > nc) nc = $1 }
function mm(v, k) { if (!(k in mn) || v < mn[k]) mn[k] = v; if (!(k in mx) || v > mx[k]) mx[k] = v; sum[k] += v; vals[k, ++cnt[k]] = v }
function med(k,   i, j, t, n, a) {
	n = cnt[k]; for (i = 1; i <= n; i++) a[i] = vals[k, i]
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
	printf "\n%-6s %9s %9s %9s %9s | %7s %7s %7s %7s %7s | %7s %7s %7s %7s | %7s %7s %7s %7s\n", "cycle", "A rps", "B rps", "2hop rps", "hap rps",
		"B/A", "A/2hop", "B/2hop", "A/hap", "B/hap", "A p99", "B p99", "2h p99", "hap p99", "A cpu", "B cpu", "2h cpu", "hap cpu"
	for (c = 1; c <= nc; c++) {
		a = rps[c, "A"]; b = rps[c, "B"]; h = rps[c, "2hop"]; x = rps[c, "hap"]
		printf "%-6d %9.0f %9.0f %9.0f %9.0f | %7.3f %7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f %7.3f\n", c, a, b, h, x,
			b / a, a / h, b / h, a / x, b / x, p99[c, "A"], p99[c, "B"], p99[c, "2hop"], p99[c, "hap"],
			cpu[c, "A"], cpu[c, "B"], cpu[c, "2hop"], cpu[c, "hap"]
		mm(a, "a"); mm(b, "b"); mm(h, "h"); mm(x, "x"); mm(b / a, "ba"); mm(a / h, "ah"); mm(b / h, "bh"); mm(a / x, "ax"); mm(b / x, "bx")
		mm(p99[c, "A"], "pa"); mm(p99[c, "B"], "pb"); mm(p99[c, "2hop"], "ph"); mm(p99[c, "hap"], "px")
		mm(cpu[c, "A"], "ca"); mm(cpu[c, "B"], "cb"); mm(cpu[c, "2hop"], "ch"); mm(cpu[c, "hap"], "cx")
	}
	printf "%-6s %9.0f %9.0f %9.0f %9.0f | %7.3f %7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f %7.3f | %7.3f %7.3f %7.3f %7.3f\n", "mean",
		sum["a"] / nc, sum["b"] / nc, sum["h"] / nc, sum["x"] / nc,
		sum["ba"] / nc, sum["ah"] / nc, sum["bh"] / nc, sum["ax"] / nc, sum["bx"] / nc,
		sum["pa"] / nc, sum["pb"] / nc, sum["ph"] / nc, sum["px"] / nc, sum["ca"] / nc, sum["cb"] / nc, sum["ch"] / nc, sum["cx"] / nc
	printf "%-6s %9.0f %9.0f %9.0f %9.0f | %7.3f %7.3f %7.3f %7.3f %7.3f |\n", "median", med("a"), med("b"), med("h"), med("x"),
		med("ba"), med("ah"), med("bh"), med("ax"), med("bx")
	printf "%-6s %9s %9s %9s %9s | %7.3f %7.3f %7.3f %7.3f %7.3f |\n", "min", "", "", "", "", mn["ba"], mn["ah"], mn["bh"], mn["ax"], mn["bx"]
	printf "%-6s %9s %9s %9s %9s | %7.3f %7.3f %7.3f %7.3f %7.3f |\n", "max", "", "", "", "", mx["ba"], mx["ah"], mx["bh"], mx["ax"], mx["bx"]
	print "ratios are per cycle, then averaged; p99 in ms; cpu = both relays (hap: both haproxy processes), us of CPU (utime+stime) per request"
}' "$RESULTS"
echo "raw rows: $RESULTS; logs: $WORK" >&2
