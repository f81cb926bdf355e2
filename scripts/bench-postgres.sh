#!/usr/bin/env bash
# Durable enqueue throughput of qpcd on the PostgreSQL backend, one node and
# two nodes sharing one database, next to pgbench inserting the same 1 KiB
# rows at the same concurrency on the same PostgreSQL server (the ceiling).
#
#   scripts/bench-postgres.sh                      # 32 senders, 1 and 16 channels
#   N=64 CHANNELS="1 4 16" DURATION=15s scripts/bench-postgres.sh
#
# A throwaway PostgreSQL 15 cluster (fsync and synchronous_commit on, the
# defaults; loopback only; trust authentication for 127.0.0.1) is created in
# a temporary directory and removed at exit with every process started here.
# Run as root (PostgreSQL runs as the postgres user) or as a user that can
# run initdb itself. Nothing in the repository is changed except bin/.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-32}                       # senders (and pgbench clients)
CHANNELS=${CHANNELS:-"1 16"}     # group channels the senders are spread over
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RECEIVERS=${RECEIVERS:-1}
MAX_CONNS=${MAX_CONNS:-40}       # pool size per qpcd node
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
STEP_TIMEOUT=${STEP_TIMEOUT:-120} # seconds, any one bench step

tmp=$(mktemp -d /tmp/bench-pg.XXXXXX)
pids=()
cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	pgcluster_stop
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib/pgcluster.sh
. scripts/lib/pgcluster.sh
log() { echo "bench-postgres: $*" >&2; }

# --- PostgreSQL -----------------------------------------------------------
pgcluster_start 200 256MB
"$PGBIN/createdb" qpc
"$PGBIN/createdb" pgb
DSN="postgres://postgres@127.0.0.1:$PGPORT/qpc?sslmode=disable"
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT ($tmp/pg)"

# --- build ----------------------------------------------------------------
go build -o bin/ ./cmd/qpcd ./cmd/qpc-bench

# --- qpcd nodes -------------------------------------------------------------
declare -A nodeaddr nodepid
startnode() { # name
	local n=$1 port ops
	port=$(freeudp)
	ops=$(freeport)
	mkdir -m 700 -p "$tmp/$n"
	QPC_DATA_DIR="$tmp/$n" QPC_LISTEN="127.0.0.1:$port" QPC_OPS_LISTEN="127.0.0.1:$ops" \
		QPC_STORE_BACKEND=postgres QPC_POSTGRES_DSN="$DSN" QPC_POSTGRES_MAX_CONNS="$MAX_CONNS" \
		QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000 QPC_LIMITS_MAX_STREAMS_PER_CONN=1000 \
		QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000 \
		QPC_LIMITS_BYTE_RATE=1073741824 QPC_LIMITS_BYTE_BURST=1073741824 QPC_QUOTA_MESSAGES=0 QPC_QUOTA_MESSAGE_BYTES=0 \
		QPC_INVITATIONS_MAX_PER_HOUR=1000000000 QPC_INVITATIONS_MAX_PENDING=1000000000 \
		bin/qpcd 2>"$tmp/$n.log" &
	local pid=$!
	pids+=("$pid")
	for _ in $(seq 300); do
		if curl -fs "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && [ -s "$tmp/$n/tls/cert.pem" ]; then
			nodeaddr[$n]=127.0.0.1:$port
			nodepid[$n]=$pid
			log "qpcd $n: pid $pid, 127.0.0.1:$port"
			return
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			log "qpcd $n exited:"; cat "$tmp/$n.log" >&2; exit 1
		fi
		sleep 0.1
	done
	log "qpcd $n not ready after 30 s:"; tail -20 "$tmp/$n.log" >&2; exit 1
}

bench() { # node senders channels json
	timeout "$STEP_TIMEOUT" bin/qpc-bench -mode enqueue -addr "${nodeaddr[$1]}" -data-dir "$tmp/$1" \
		-server-pid "${nodepid[$1]}" -cpu-comm postgres -n "$2" -channels "$3" -receivers "$RECEIVERS" \
		-duration "$DURATION" -warmup "$WARMUP" -json "$4" >"$4.txt" 2>&1 || {
		log "qpc-bench against $1 failed:"; cat "$4.txt" >&2; tail -20 "$tmp/$1.log" >&2; exit 1; }
}

results=$tmp/results.tsv
: >"$results"
# One row: setup enqueues/s p50 p99 qpcd-µs postgres-µs errors, from the
# JSON reports of one or more qpc-bench processes run at the same time.
# Rates add up; qpcd CPU adds up over the nodes; every process metered all
# of PostgreSQL over (nearly) the same span, so PostgreSQL CPU is their mean
# divided by all the messages; latencies are the worst of the processes.
row() { # setup json...
	local setup=$1; shift
	jq -rs --arg setup "$setup" '[.[][0]] as $r |
		($r | map(.sent) | add) as $sent |
		[$setup,
		 ($r | map(.throughput_per_s) | add | floor),
		 ($r | map(.rpc_latency.p50_ms) | max),
		 ($r | map(.rpc_latency.p99_ms) | max),
		 (($r | map(.server_cpu_us) | add) / $sent | floor),
		 (($r | map(.comm_cpu_us) | add) / ($r | length) / $sent | floor),
		 ($r | map(.errors) | add)] | @tsv' "$@" >>"$results"
}

startnode n1
for c in $CHANNELS; do
	log "1 node, $N senders, $c channel(s)"
	bench n1 "$N" "$c" "$tmp/one-$c.json"
	cat "$tmp/one-$c.json.txt" >&2
	row "1 node, $c channel(s)" "$tmp/one-$c.json"
done

startnode n2
half=$((N / 2))
for c in $CHANNELS; do
	cc=$(((c + 1) / 2))
	log "2 nodes, $half senders each, $cc channel(s) each"
	bench n1 "$half" "$cc" "$tmp/two-a-$c.json" &
	a=$!
	bench n2 "$((N - half))" "$cc" "$tmp/two-b-$c.json" &
	b=$!
	wait "$a"
	wait "$b"
	cat "$tmp/two-a-$c.json.txt" "$tmp/two-b-$c.json.txt" >&2
	row "2 nodes, $((2 * cc)) channel(s)" "$tmp/two-a-$c.json" "$tmp/two-b-$c.json"
done

# --- pgbench ceiling ----------------------------------------------------------
# Stop the qpcd nodes first so that pgbench has the machine qpcd had.
for n in n1 n2; do kill "${nodepid[$n]}"; wait "${nodepid[$n]}" 2>/dev/null || true; done
pids=()
"$PGBIN/psql" -q -d pgb -c 'CREATE TABLE bench_rows (id bigserial PRIMARY KEY, body bytea NOT NULL)'
cat >"$tmp/insert.sql" <<'EOF'
INSERT INTO bench_rows (body) VALUES (decode(repeat('ab', 1024), 'hex'));
EOF
log "pgbench: -c $N -j 2 -T ${DURATION%s}, one 1 KiB INSERT per transaction"
timeout "$STEP_TIMEOUT" "$PGBIN/pgbench" -n -c "$N" -j 2 -T "${DURATION%s}" -f "$tmp/insert.sql" pgb >"$tmp/pgbench.txt" 2>&1 ||
	{ cat "$tmp/pgbench.txt" >&2; exit 1; }
cat "$tmp/pgbench.txt" >&2
tps=$(awk '/^tps = / {print int($3)}' "$tmp/pgbench.txt")
lat=$(awk '/^latency average = / {print $4}' "$tmp/pgbench.txt")

echo
echo "N=$N senders, $RECEIVERS receiver(s) per qpc-bench, ${DURATION} after ${WARMUP} warm-up; pgbench ceiling ${tps} tps (latency average ${lat} ms)"
printf '| %s | %s | %s | %s | %s | %s | %s |\n' "Setup" "enqueues/s" "enqueue p50 / p99 ms" \
	"CPU µs/msg qpcd" "CPU µs/msg postgres" "pgbench tps (ceiling)" "ratio to ceiling"
echo "|---|---:|---|---:|---:|---:|---:|"
while IFS=$'\t' read -r setup rate p50 p99 q p errs; do
	ratio=$(awk -v a="$rate" -v b="$tps" 'BEGIN {printf "%.2f", a / b}')
	extra=
	[ "$errs" != 0 ] && extra=" ($errs errors)"
	printf '| %s%s | %s | %.1f / %.1f | %s | %s | %s | %s |\n' "$setup" "$extra" "$rate" "$p50" "$p99" "$q" "$p" "$tps" "$ratio"
done <"$results"
