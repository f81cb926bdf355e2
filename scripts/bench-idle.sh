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
#   FANOUT=1000 DEVICES=1000 BACKENDS="sqlcipher postgres" scripts/bench-idle.sh
#
# FANOUT=N: N of the devices join one group channel before they poll; once
# every device waits, a sender enqueues FANOUT_MESSAGES (20) messages one at
# a time, each after every receiver got the previous one: the time from the
# send to each receipt (p50/p99/max) and to the last receiver's.
# BACKENDS: sqlcipher and/or postgres (a throwaway PostgreSQL cluster,
# fsync on; needs PostgreSQL's server binaries, PGBIN).
#
# Extra qpcd settings can be passed in the environment (QPC_*), e.g. to
# compare a change measured before/after; QPCD=path runs another qpcd
# binary (a base build) with this qpc-bench. Everything started here is stopped
# and the data directories removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-1000}
IDLE=${IDLE:-30s}   # renewals are spread over limits.long_poll_max (5 min): a window of 30 s sees a tenth of them
AFTER=${AFTER:-30s}
BENCH_OUT=${BENCH_OUT:-bench-out}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
LABEL=${LABEL:-}
FANOUT=${FANOUT:-0}
FANOUT_MESSAGES=${FANOUT_MESSAGES:-20}
KEEPALIVE=${KEEPALIVE:-0} # the devices' QUIC keep-alive period (0: the client's default, 15 s)
BACKENDS=${BACKENDS:-sqlcipher}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

log() { echo "bench-idle: $*" >&2; }
# shellcheck source=scripts/lib/pgcluster.sh
. scripts/lib/pgcluster.sh

mkdir -p "$BENCH_OUT"
tmp=$(mktemp -d "$BENCH_TMP/bench-idle.XXXXXX")
pid=
cleanup() {
	set +e
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	pgcluster_stop
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in $BACKENDS; do
	case $b in sqlcipher | postgres) ;; *) log "BACKENDS: unknown backend $b (want sqlcipher, postgres)"; exit 2 ;; esac
done
if [[ " $BACKENDS " == *" postgres "* ]]; then
	[ -x "$PGBIN/initdb" ] || { log "BACKENDS=postgres needs PostgreSQL's server (Debian: postgresql); PGBIN=$PGBIN"; exit 1; }
	pgcluster_start 100 128MB
	log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"
fi

go build -o bin/ ./cmd/qpcd ./cmd/qpc-bench
db=0
for backend in $BACKENDS; do
for n in $DEVICES; do
	port=$(freeudp)
	ops=$(freeport)
	dir="$tmp/d$backend$n"
	mkdir -m 700 "$dir"
	env=()
	if [ "$backend" = postgres ]; then
		db=$((db + 1))
		PGHOST=127.0.0.1 PGPORT=$PGPORT PGUSER=postgres "$PGBIN/createdb" "qpc$db"
		env=(QPC_STORE_BACKEND=postgres "QPC_POSTGRES_DSN=postgres://postgres@127.0.0.1:$PGPORT/qpc$db?sslmode=disable")
	fi
	env "${env[@]}" QPC_DATA_DIR="$dir" QPC_LISTEN="127.0.0.1:$port" QPC_OPS_LISTEN="127.0.0.1:$ops" QPC_OPS_PPROF=on \
		QPC_LIMITS_MAX_CONNECTIONS=$((n + 64)) QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=$((n + 64)) \
		QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000 \
		QPC_INVITATIONS_MAX_PER_HOUR=1000000 QPC_INVITATIONS_MAX_PENDING=1000000 \
		"${QPCD:-bin/qpcd}" 2>"$tmp/qpcd-$backend-$n.log" &
	pid=$!
	for _ in $(seq 300); do
		curl -fs "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && [ -s "$dir/tls/cert.pem" ] && break
		kill -0 "$pid" 2>/dev/null || { cat "$tmp/qpcd-$backend-$n.log" >&2; exit 1; }
		sleep 0.1
	done
	sfx=
	[ "$backend" = postgres ] && sfx=-pg
	out="$BENCH_OUT/idle${LABEL:+-$LABEL}$sfx-$n"
	log "$n devices against qpcd pid $pid on $backend (load average $(cut -d' ' -f1-3 /proc/loadavg))"
	bin/qpc-bench -mode idle -addr "127.0.0.1:$port" -data-dir "$dir" -ops "127.0.0.1:$ops" -server-pid "$pid" \
		-n "$n" -duration "$IDLE" -after "$AFTER" -profile-dir "$out.prof" -json "$out.json" \
		-fanout "$((FANOUT < n ? FANOUT : n))" -fanout-messages "$FANOUT_MESSAGES" -keepalive "$KEEPALIVE" ||
		{ log "qpc-bench failed; qpcd's log ends:"; tail -20 "$tmp/qpcd-$backend-$n.log" >&2; exit 1; }
	cp "$tmp/qpcd-$backend-$n.log" "$out.qpcd.log"
	log "load average after: $(cut -d' ' -f1-3 /proc/loadavg); results: $out.json, profiles: $out.prof/"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=
done
done
