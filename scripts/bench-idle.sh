#!/usr/bin/env bash
# What idle long-polling devices cost one qpcd (issue 17, docs/benchmarks.md
# "Idle connections"): for each count in DEVICES, a fresh qpcd on SQLCipher
# (ops_pprof on) and `qpc-bench -mode idle`: the devices register, log in
# and wait in FetchWait on their own QUIC connections while nothing is sent;
# qpcd's RSS, goroutines and heap before and while they wait, its CPU over
# IDLE, and its memory every second for AFTER once they have left. The heap
# profile and goroutine dump taken while they wait are kept in BENCH_OUT.
#
#   scripts/bench-idle.sh                          # 1 000 devices
#   DEVICES="1000 5000 10000" scripts/bench-idle.sh
#
# Extra qpcd settings can be passed in the environment (QPC_*), e.g. to
# compare a change measured before/after. Everything started here is stopped
# and the data directories removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
IDLE=${IDLE:-30s}   # at least limits.long_poll_max (30 s): one round of poll renewals
AFTER=${AFTER:-30s}
BENCH_OUT=${BENCH_OUT:-bench-out}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
LABEL=${LABEL:-}

log() { echo "bench-idle: $*" >&2; }
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
freeudp() { python3 -c 'import socket;s=socket.socket(type=socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

mkdir -p "$BENCH_OUT"
tmp=$(mktemp -d "$BENCH_TMP/bench-idle.XXXXXX")
pid=
cleanup() {
	set +e
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o bin/ ./cmd/qpcd ./cmd/qpc-bench
for n in $DEVICES; do
	port=$(freeudp)
	ops=$(freeport)
	dir="$tmp/d$n"
	mkdir -m 700 "$dir"
	QPC_DATA_DIR="$dir" QPC_LISTEN="127.0.0.1:$port" QPC_OPS_LISTEN="127.0.0.1:$ops" QPC_OPS_PPROF=on \
		QPC_LIMITS_MAX_CONNECTIONS=$((n + 64)) QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=$((n + 64)) \
		QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000 \
		bin/qpcd 2>"$tmp/qpcd-$n.log" &
	pid=$!
	for _ in $(seq 300); do
		curl -fs "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && [ -s "$dir/tls/cert.pem" ] && break
		kill -0 "$pid" 2>/dev/null || { cat "$tmp/qpcd-$n.log" >&2; exit 1; }
		sleep 0.1
	done
	out="$BENCH_OUT/idle${LABEL:+-$LABEL}-$n"
	log "$n devices against qpcd pid $pid (load average $(cut -d' ' -f1-3 /proc/loadavg))"
	bin/qpc-bench -mode idle -addr "127.0.0.1:$port" -data-dir "$dir" -ops "127.0.0.1:$ops" -server-pid "$pid" \
		-n "$n" -duration "$IDLE" -after "$AFTER" -profile-dir "$out.prof" -json "$out.json"
	log "load average after: $(cut -d' ' -f1-3 /proc/loadavg); results: $out.json, profiles: $out.prof/"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=
done
