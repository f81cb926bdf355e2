#!/usr/bin/env bash
# qpcd's durable enqueue next to the systems that make the same promise, in
# one run (issue 17, docs/benchmarks.md "Peers"): `make bench-peers`.
#
#   scripts/bench-peers.sh                     # 3 rounds x 15 s after 3 s warm-up, 32 and 64 senders
#   BENCH_QUICK=1 scripts/bench-peers.sh       # one short round of each: a smoke check
#   SYSTEMS="qpcd-sqlcipher nats-sync" SENDERS=64 ROUNDS=5 scripts/bench-peers.sh
#   BASE=main SYSTEMS="qpcd-sqlcipher qpcd-sqlcipher-base" ROUNDS=5 scripts/bench-peers.sh
#   BATCH=16 scripts/bench-peers.sh            # the default systems plus the two -batch ones
#   CPUS="0 0-1" SYSTEMS="qpcd-sqlcipher pgbench" SENDERS=32 scripts/bench-peers.sh
#
# Systems, run interleaved round-robin (every system at every concurrency in
# round 1, then round 2, ...) so that a change in the machine's load falls
# on all of them alike; every sender is a closed loop that waits for each
# acknowledgement before sending the next 1 KiB message:
#   qpcd-sqlcipher  qpc-bench -mode enqueue against qpcd as its own process on
#                   SQLCipher (ack = committed with synchronous=FULL); one
#                   receiver long-polls with FetchWait and acks every 250 ms
#   qpcd-postgres   the same against a second qpcd on the throwaway PostgreSQL
#                   (both: all senders in one group channel; CHANNELS=16 spreads them)
#   nats-sync       NATS JetStream (nats-server v2.15.3, tools/nats), file
#                   storage, `sync_interval: always` (ack = fsynced); each
#                   publisher on its own connection awaits every ack; one
#                   consumer receives everything (tools/nats/main.go)
#   nats-default    the same with JetStream's default deferred sync: NOT
#                   durable when acknowledged (a crash loses up to 2 minutes)
#   pgbench         one 1 KiB bytea INSERT per transaction, synchronous_commit
#                   on, on the throwaway PostgreSQL (no receiver)
#   quic-bare       qpc-bench -mode baseline: the bare quic-go echo loop, in
#                   one process (no storage, no receiver), one stream per request
#   quic-bare-kept  the same with every request of a client on one kept
#                   stream (-keep-stream), as qpcd's clients now send them
#   qpcd-sqlcipher-base, qpcd-postgres-base
#                   with BASE=REV (a git revision): the same against qpcd
#                   built from REV, interleaved with this tree's, so that a
#                   change is compared with its base under the same load
#                   (on PostgreSQL in a database of its own)
#   qpcd-sqlcipher-batch, qpcd-postgres-batch
#                   qpc-bench -batch BATCH (default 16) against a qpcd of
#                   their own (on PostgreSQL in a database of its own):
#                   each sender sends BATCH messages per EnqueueBatch and
#                   waits for its one answer (every message acknowledged
#                   durable). Messages/s and CPU per message count
#                   messages, not RPCs; ack latency is per RPC. Run when
#                   listed in SYSTEMS, or added to the default list by
#                   setting BATCH. Not the same workload as pgbench's one
#                   row per transaction: a batch amortises one round trip
#                   (and, with one channel, one commit) over BATCH messages.
# CPUS="0 0-1" (CPU lists as taskset takes them, space separated) runs every
# system once per list, each run with every process of the system pinned to
# it (taskset: the client, qpcd or nats-server with all their threads, and
# PostgreSQL's whole process tree, re-pinned before each run); the rows are
# named system@cpus (qpcd-sqlcipher@0). Default: no pinning.
# CPU µs per message is summed over every process of the system (client and
# servers; PostgreSQL's whole process tree, exited backends included),
# divided by every message acknowledged while metered (warm-up included);
# the server's share (qpcd, nats-server) and PostgreSQL's are kept apart too.
#
# Output in BENCH_OUT (default bench-out/): bench-peers.json (rows of
# medians per system and concurrency, every run, each round's load average,
# the machine), bench-peers.png (gnuplot) and bench-peers.md (the table).
# A throwaway PostgreSQL cluster (fsync and synchronous_commit on) and data
# directories are made under BENCH_TMP (default /var/tmp, a disk: fsync on a
# tmpfs would cost nothing) and removed at exit with every process started
# here. Run as root (PostgreSQL then runs as the postgres user) or as a user
# that can run initdb.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=
if [ -n "${BENCH_QUICK:-}" ] && [ "${BENCH_QUICK}" != 0 ]; then quick=1; fi
if [ -n "$quick" ]; then
	ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2} WARMUP=${WARMUP:-1}
else
	ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-15} WARMUP=${WARMUP:-3}
fi
DURATION=${DURATION%s} WARMUP=${WARMUP%s} # whole seconds (pgbench -T)
SENDERS=${SENDERS:-"32 64"}
SYSTEMS=${SYSTEMS:-"qpcd-sqlcipher qpcd-postgres nats-sync nats-default pgbench quic-bare${BATCH:+ qpcd-sqlcipher-batch qpcd-postgres-batch}"}
BATCH_N=${BATCH:-16}               # messages per EnqueueBatch for the -batch systems
SIZE=${SIZE:-1024}
CHANNELS=${CHANNELS:-1}            # qpcd: group channels the senders are spread over (qpc-bench -channels)
CPUS=${CPUS:-}                     # CPU lists to pin each system to in turn (taskset -c), e.g. "0 0-1"
BENCH_OUT=${BENCH_OUT:-bench-out}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
MAX_CONNS=${MAX_CONNS:-40}         # qpcd's PostgreSQL pool
STEP_TIMEOUT=${STEP_TIMEOUT:-300}  # seconds, any one run
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
# shellcheck source=scripts/lib/pgcluster.sh
. scripts/lib/pgcluster.sh

log() { echo "bench-peers: $*" >&2; }
die() { log "$*"; exit 1; }
for v in ROUNDS DURATION WARMUP SIZE CHANNELS BATCH_N; do
	[[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "$v=${!v}: want a positive whole number (seconds for DURATION and WARMUP)"
done
for s in $SYSTEMS; do
	case $s in qpcd-sqlcipher | qpcd-postgres | nats-sync | nats-default | pgbench | quic-bare | quic-bare-kept) ;;
	qpcd-sqlcipher-base | qpcd-postgres-base) [ -n "${BASE:-}" ] || die "$s needs BASE=REV (the revision to build it from)" ;;
	qpcd-sqlcipher-batch | qpcd-postgres-batch) [ "$BATCH_N" -le 64 ] || die "BATCH=$BATCH_N: EnqueueBatch carries at most 64" ;;
	*) die "unknown system $s" ;;
	esac
done
wants() { [[ " $SYSTEMS " == *" $1 "* ]]; }
for t in jq curl python3 /usr/bin/time; do command -v "$t" >/dev/null || die "needs $t"; done
if [ -n "$CPUS" ]; then
	command -v taskset >/dev/null || die "CPUS needs taskset (Debian: util-linux)"
	for c in $CPUS; do taskset -c "$c" true 2>/dev/null || die "CPUS: taskset cannot pin to CPU list $c"; done
fi
# The row names, in order: system, or system@cpus for each CPU list of CPUS.
labels=
for s in $SYSTEMS; do
	if [ -z "$CPUS" ]; then labels="$labels $s"; else for c in $CPUS; do labels="$labels $s@$c"; done; fi
done
if wants qpcd-postgres || wants qpcd-postgres-base || wants qpcd-postgres-batch || wants pgbench; then
	[ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pgbench" ] || die "needs PostgreSQL's server and pgbench (Debian: postgresql); PGBIN=$PGBIN"
fi

mkdir -p "$BENCH_OUT"
tmp=$(mktemp -d "$BENCH_TMP/bench-peers.XXXXXX")
[ "$(stat -f -c %T "$tmp")" = tmpfs ] && log "warning: $tmp is on a tmpfs, where fsync costs nothing; set BENCH_TMP to a disk"
pids=()
cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	pgcluster_stop
	rm -rf "$tmp"
	[ -n "${BASE:-}" ] && git worktree prune 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load1() { cut -d' ' -f1 /proc/loadavg; }

# treecpu PID: CPU ticks (1/100 s) of PID and its descendants, with the
# children they have waited for (cutime/cstime): what `qpc-bench -cpu-tree`
# meters, for pgbench's runs.
treecpu() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || :; } | awk -v root="$1" '
		{ pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
		  ppid[pid] = f[2]; t[pid] = f[12] + f[13] + f[14] + f[15] }
		END { n = 1; q[1] = root; sum = 0
		      for (p in ppid) kids[ppid[p]] = kids[ppid[p]] " " p
		      while (n > 0) { p = q[n--]; sum += t[p]
		          c = split(kids[p], k, " "); for (i = 1; i <= c; i++) q[++n] = k[i] }
		      print sum }'
}

# treepids PID: PID and its descendants.
treepids() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || :; } | awk -v root="$1" '
		{ pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " "); kids[f[2]] = kids[f[2]] " " pid }
		END { n = 1; q[1] = root
		      while (n > 0) { p = q[n--]; print p; c = split(kids[p], k, " "); for (i = 1; i <= c; i++) q[++n] = k[i] } }'
}

# pin CPULIST PID...: every thread of each PID onto CPULIST. A process that
# has exited meanwhile (a PostgreSQL backend) is skipped; one still running
# that cannot be pinned stops the script.
pin() {
	local c=$1 p
	shift
	for p in "$@"; do
		taskset -a -p -c "$c" "$p" >/dev/null 2>&1 || ! kill -0 "$p" 2>/dev/null || die "taskset cannot pin pid $p to $c"
	done
}

# --- build ------------------------------------------------------------------
log "building qpcd, qpc-bench, nats-server and natsbench"
go build -o bin/ ./cmd/qpcd ./cmd/qpc-bench
if [ -n "${BASE:-}" ]; then
	log "building qpcd at $BASE as bin/qpcd-base"
	git worktree add -q --detach "$tmp/base-src" "$BASE"
	(cd "$tmp/base-src" && go build -o "$OLDPWD/bin/qpcd-base" ./cmd/qpcd)
	git worktree remove --force "$tmp/base-src"
fi
if wants nats-sync || wants nats-default; then
	(cd tools/nats && go build -o ../../bin/nats-server github.com/nats-io/nats-server/v2 && go build -o ../../bin/natsbench .)
fi

# --- PostgreSQL -------------------------------------------------------------
chmod 755 "$tmp"
pgversion=
if wants qpcd-postgres || wants qpcd-postgres-base || wants qpcd-postgres-batch || wants pgbench; then
	conf=()
	# PG_STATEMENTS=1: count the statements qpcd sends (pg_stat_statements,
	# in the postgres database so that qpc's stays empty for qpcd).
	[ -n "${PG_STATEMENTS:-}" ] && conf+=("shared_preload_libraries = 'pg_stat_statements'" "pg_stat_statements.track_planning = on")
	# PG_STATEMENTS=all: the statements inside functions too (qpc_fetch,
	# qpc_enqueue_lock), each listed beside the call that ran it.
	[ "${PG_STATEMENTS:-}" = all ] && conf+=("pg_stat_statements.track = all")
	pgcluster_start 200 256MB "${conf[@]}"
	"$PGBIN/createdb" qpc
	"$PGBIN/createdb" qpc_base
	"$PGBIN/createdb" qpc_batch
	[ -n "${PG_STATEMENTS:-}" ] && "$PGBIN/psql" -q -d postgres -c 'CREATE EXTENSION pg_stat_statements'
	"$PGBIN/createdb" pgb
	"$PGBIN/psql" -q -d pgb -c 'CREATE TABLE bench_rows (id bigserial PRIMARY KEY, body bytea NOT NULL)'
	printf "INSERT INTO bench_rows (body) VALUES (decode(repeat('ab', %d), 'hex'));\n" "$SIZE" >"$tmp/insert.sql"
	postmaster=$(head -1 "$tmp/pg/postmaster.pid")
	pgversion=$("$PGBIN/postgres" --version | awk '{print $3}')
	log "PostgreSQL $pgversion on 127.0.0.1:$PGPORT, postmaster $postmaster"
fi

# --- qpcd -------------------------------------------------------------------
declare -A qaddr qpid qops
startqpcd() { # name backend [binary [database]]
	local n=$1 port ops env=() bin=${3:-bin/qpcd} db=${4:-qpc}
	port=$(freeudp)
	ops=$(freeport)
	mkdir -m 700 -p "$tmp/$n"
	if [ "$2" = postgres ]; then
		env=(QPC_STORE_BACKEND=postgres "QPC_POSTGRES_DSN=postgres://postgres@127.0.0.1:$PGPORT/$db?sslmode=disable"
			"QPC_POSTGRES_MAX_CONNS=$MAX_CONNS")
	fi
	# Rate limits and quotas out of the way: every bench client shares
	# 127.0.0.1, and a long run sends more than a week of ordinary use.
	env "${env[@]}" QPC_DATA_DIR="$tmp/$n" QPC_LISTEN="127.0.0.1:$port" QPC_OPS_LISTEN="127.0.0.1:$ops" \
		QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000 QPC_LIMITS_MAX_STREAMS_PER_CONN=1000 \
		QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000 \
		QPC_OPS_PPROF=$([ -n "${PROFILE:-}" ] && echo on || echo off) QPC_LIMITS_BYTE_RATE=1073741824 QPC_LIMITS_BYTE_BURST=1073741824 QPC_QUOTA_MESSAGES=0 QPC_QUOTA_MESSAGE_BYTES=0 QPC_INVITATIONS_MAX_PER_HOUR=100000 QPC_INVITATIONS_MAX_PENDING=100000 \
		"$bin" 2>"$tmp/$n.log" &
	local pid=$!
	pids+=("$pid")
	for _ in $(seq 300); do
		if curl -fs "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && [ -s "$tmp/$n/tls/cert.pem" ]; then
			qaddr[$n]=127.0.0.1:$port qpid[$n]=$pid qops[$n]=127.0.0.1:$ops
			log "qpcd $n ($2): pid $pid, 127.0.0.1:$port"
			return
		fi
		kill -0 "$pid" 2>/dev/null || { log "qpcd $n exited:"; cat "$tmp/$n.log" >&2; exit 1; }
		sleep 0.1
	done
	log "qpcd $n not ready after 30 s:"; tail -20 "$tmp/$n.log" >&2; exit 1
}
wants qpcd-sqlcipher && startqpcd qpcd-sqlcipher sqlcipher
wants qpcd-postgres && startqpcd qpcd-postgres postgres
wants qpcd-sqlcipher-base && startqpcd qpcd-sqlcipher-base sqlcipher bin/qpcd-base
wants qpcd-postgres-base && startqpcd qpcd-postgres-base postgres bin/qpcd-base qpc_base
wants qpcd-sqlcipher-batch && startqpcd qpcd-sqlcipher-batch sqlcipher
wants qpcd-postgres-batch && startqpcd qpcd-postgres-batch postgres bin/qpcd qpc_batch

# --- NATS -------------------------------------------------------------------
declare -A nurl npid
startnats() { # name sync-line
	local n=$1 port http
	port=$(freeport)
	http=$(freeport)
	mkdir -p "$tmp/$n"
	cat >"$tmp/$n.conf" <<-EOF
		listen: 127.0.0.1:$port
		http: 127.0.0.1:$http
		jetstream {
		  store_dir: "$tmp/$n"
		  $2
		}
	EOF
	bin/nats-server -c "$tmp/$n.conf" >"$tmp/$n.log" 2>&1 &
	local pid=$!
	pids+=("$pid")
	for _ in $(seq 300); do
		if curl -fs "http://127.0.0.1:$http/healthz?js-enabled-only=true" >/dev/null 2>&1; then
			nurl[$n]=nats://127.0.0.1:$port npid[$n]=$pid
			log "nats-server $n: pid $pid, 127.0.0.1:$port${2:+ ($2)}"
			return
		fi
		kill -0 "$pid" 2>/dev/null || { log "nats-server $n exited:"; cat "$tmp/$n.log" >&2; exit 1; }
		sleep 0.1
	done
	log "nats-server $n not ready after 30 s:"; tail -20 "$tmp/$n.log" >&2; exit 1
}
wants nats-sync && startnats nats-sync "sync_interval: always"
wants nats-default && startnats nats-default ""

# --- one run of one system ----------------------------------------------------
mkdir "$tmp/runs"
# normalize SYSTEM SENDERS ROUND LOAD_START RAW.json: qpc-bench's (and
# natsbench's) report as one row of the runs list.
normalize() {
	jq -c --arg sys "$1" --argjson n "$2" --argjson round "$3" --argjson l0 "$4" --argjson l1 "$(load1)" '.[0] |
		def del(f): if (.delivered // 0) > 0 then f else null end;
		{system: $sys, senders: $n, round: $round, msgs_per_s: .throughput_per_s,
		 cpu_us_per_msg: ((.cpu_us_per_request // 0) + (.tree_cpu_us_per_request // 0)),
		 server_cpu_us_per_msg: (.server_cpu_us_per_request // (if (.server_cpu_us // 0) > 0 and .sent > 0 then .server_cpu_us / .sent else null end)),
		 db_cpu_us_per_msg: .tree_cpu_us_per_request,
		 ack_p50_ms: .rpc_latency.p50_ms, ack_p99_ms: .rpc_latency.p99_ms, ack_p999_ms: .rpc_latency.p999_ms,
		 delivery_p50_ms: del(.delivery_latency.p50_ms), delivery_p99_ms: del(.delivery_latency.p99_ms),
		 delivery_p999_ms: del(.delivery_latency.p999_ms), errors: .errors, first_error: .first_error,
		 load1_start: $l0, load1_end: $l1}' "$5"
}

# failed SYSTEM SENDERS ROUND RAW: one run failed. The round goes on (a
# long benchmark is not thrown away for one bad run); the row says so, and
# the client's output and the server's log (without audit lines) are kept
# in BENCH_OUT.
failed() {
	local keep="$BENCH_OUT/failed-$1-$2-$3"
	log "round $3 $1 $2 senders FAILED; client output and server log in $keep.*"
	cp "$4.txt" "$keep.client.txt" 2>/dev/null || :
	[ -f "$tmp/${1%@*}.log" ] && grep -v 'level=AUDIT' "$tmp/${1%@*}.log" | tail -200 >"$keep.server.log"
	tail -5 "$4.txt" >&2 || :
	jq -nc --arg sys "$1" --argjson n "$2" --argjson round "$3" --arg err "$(tail -1 "$4.txt" 2>/dev/null | cut -c1-300)" \
		'{system: $sys, senders: $n, round: $round, failed: true, error: $err}' >"$4.row"
}

runone() { # system senders round [cpus]
	local sys=$1 n=$2 r=$3 c=${4:-} raw l0 label=$1 run=()
	if [ -n "$c" ]; then
		label="$sys@$c" run=(taskset -c "$c")
		case $sys in
		qpcd-postgres | qpcd-postgres-base | qpcd-postgres-batch) pin "$c" "${qpid[$sys]}" $(treepids "$postmaster") ;;
		qpcd-*) pin "$c" "${qpid[$sys]}" ;;
		nats-*) pin "$c" "${npid[$sys]}" ;;
		pgbench) pin "$c" $(treepids "$postmaster") ;;
		esac
	fi
	raw="$tmp/runs/$label-$n-$r"
	l0=$(load1)
	case $sys in
	qpcd-sqlcipher | qpcd-postgres | qpcd-sqlcipher-base | qpcd-postgres-base | qpcd-sqlcipher-batch | qpcd-postgres-batch)
		local extra=()
		[[ $sys == qpcd-postgres* ]] && extra=(-cpu-tree "$postmaster")
		[[ $sys == *-batch ]] && extra+=(-batch "$BATCH_N")
		# PROFILE=S: a CPU profile of qpcd over S seconds after the warm-up.
		# With it, an allocation profile over the same span (a delta:
		# allocs?seconds=S), to be read with -sample_index=alloc_space.
		[ -n "${PROFILE:-}" ] && (sleep "$WARMUP" && curl -fs "http://${qops[$sys]}/debug/pprof/profile?seconds=$PROFILE" \
			-o "$BENCH_OUT/$label-$n-$r.cpu.pb.gz") &
		[ -n "${PROFILE:-}" ] && (sleep "$WARMUP" && curl -fs "http://${qops[$sys]}/debug/pprof/allocs?seconds=$PROFILE" \
			-o "$BENCH_OUT/$label-$n-$r.allocs.pb.gz") &
		timeout "$STEP_TIMEOUT" "${run[@]}" bin/qpc-bench -mode enqueue -addr "${qaddr[$sys]}" -data-dir "$tmp/$sys" \
			-server-pid "${qpid[$sys]}" "${extra[@]}" -n "$n" -channels "$CHANNELS" -receivers 1 -size "$SIZE" \
			-duration "${DURATION}s" -warmup "${WARMUP}s" -json "$raw.json" >"$raw.txt" 2>&1 ||
			{ failed "$label" "$n" "$r" "$raw"; return; }
		# With PROFILE, qpcd's metrics after the run too (counters are
		# cumulative over the rounds: compare consecutive files).
		[ -n "${PROFILE:-}" ] && curl -fs "http://${qops[$sys]}/metrics" -o "$BENCH_OUT/$label-$n-$r.metrics.txt"
		;;
	nats-sync | nats-default)
		timeout "$STEP_TIMEOUT" "${run[@]}" bin/natsbench -url "${nurl[$sys]}" -server-pid "${npid[$sys]}" -n "$n" -size "$SIZE" \
			-duration "${DURATION}s" -warmup "${WARMUP}s" -json "$raw.json" >"$raw.txt" 2>&1 ||
			{ failed "$label" "$n" "$r" "$raw"; return; }
		;;
	quic-bare | quic-bare-kept)
		local keep=false
		[ "$sys" = quic-bare-kept ] && keep=true
		timeout "$STEP_TIMEOUT" "${run[@]}" bin/qpc-bench -mode baseline -keep-stream=$keep -n "$n" -size "$SIZE" \
			-duration "${DURATION}s" -warmup "${WARMUP}s" -json "$raw.json" >"$raw.txt" 2>&1 ||
			{ failed "$label" "$n" "$r" "$raw"; return; }
		;;
	pgbench)
		local pgb=("${run[@]}" "$PGBIN/pgbench" -n -c "$n" -j 2 -f "$tmp/insert.sql")
		timeout "$STEP_TIMEOUT" "${pgb[@]}" -T "$WARMUP" pgb >"$raw.txt" 2>&1 ||
			{ failed "$label" "$n" "$r" "$raw"; return; }
		mkdir -p "$raw.logs"
		chmod 777 "$raw.logs"
		local c0 c1
		c0=$(treecpu "$postmaster")
		(cd "$raw.logs" && timeout "$STEP_TIMEOUT" /usr/bin/time -f '%U %S' -o "$raw.time" \
			"${pgb[@]}" -T "$DURATION" -l pgb) >"$raw.txt" 2>&1 || { failed "$label" "$n" "$r" "$raw"; return; }
		c1=$(treecpu "$postmaster")
		# Per-transaction latencies (µs, the log's third column), as one
		# JSON report in qpc-bench's shape.
		cat "$raw.logs"/pgbench_log.* | awk '{print $3}' | sort -n >"$raw.lat"
		awk -v ticks=$((c1 - c0)) -v n="$n" -v client="$(awk '{print $1 + $2}' "$raw.time")" \
			-v tps="$(awk '/^tps = / {print $3}' "$raw.txt")" \
			-v failed="$(awk '/^number of failed transactions:/ {print $5}' "$raw.txt")" '
			{ v[NR] = $1 }
			function pct(q,   i) { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; return v[i] / 1000 }
			END { if (NR == 0) exit 1
			      printf "[{\"mode\":\"pgbench\",\"clients\":%d,\"throughput_per_s\":%s,\"cpu_us_per_request\":%.3f,", n, tps, client * 1e6 / NR
			      printf "\"tree_cpu_us_per_request\":%.3f,", ticks * 10000 / NR
			      printf "\"rpc_latency\":{\"count\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f},", NR, pct(0.5), pct(0.99), pct(0.999), v[NR] / 1000
			      printf "\"errors\":%d,\"sent\":%d}]\n", failed + 0, NR }' "$raw.lat" >"$raw.json" ||
			{ echo "pgbench wrote no transaction log" >>"$raw.txt"; failed "$label" "$n" "$r" "$raw"; return; }
		rm -rf "$raw.logs" "$raw.lat"
		;;
	esac
	normalize "$label" "$n" "$r" "$l0" "$raw.json" >"$raw.row" || { echo "unreadable report $raw.json" >>"$raw.txt"; failed "$label" "$n" "$r" "$raw"; return; }
	jq -r '"bench-peers: round \(.round) \(.system) \(.senders) senders: \(.msgs_per_s | floor) msg/s, \(.cpu_us_per_msg | floor) CPU µs/msg, ack p50/p99/p999 \(.ack_p50_ms*100|round/100)/\(.ack_p99_ms*100|round/100)/\(.ack_p999_ms*100|round/100) ms, delivery p99 \(if .delivery_p99_ms then (.delivery_p99_ms*100|round/100|tostring) else "-" end) ms, \(.errors) errors, load \(.load1_start)-\(.load1_end)"' "$raw.row" >&2
}

# --- the rounds ---------------------------------------------------------------
log "$ROUNDS round(s) of ${DURATION} s after ${WARMUP} s warm-up, senders: $SENDERS, systems: $SYSTEMS"
: >"$tmp/rounds.jsonl"
for r in $(seq "$ROUNDS"); do
	l0=$(load1)
	t0=$(date -u +%FT%TZ)
	for n in $SENDERS; do
		for c in ${CPUS:-""}; do
			for s in $SYSTEMS; do runone "$s" "$n" "$r" "$c"; done
		done
	done
	jq -nc --argjson round "$r" --argjson l0 "$l0" --argjson l1 "$(load1)" --arg t0 "$t0" --arg t1 "$(date -u +%FT%TZ)" \
		--arg avg "$(cut -d' ' -f1-3 /proc/loadavg)" \
		'{round: $round, started: $t0, ended: $t1, load1_start: $l0, load1_end: $l1, loadavg_end: $avg}' >>"$tmp/rounds.jsonl"
done

# --- results ------------------------------------------------------------------
if [ -n "${PG_STATEMENTS:-}" ]; then
	# Statements per stored message: every statement qpcd ran on its
	# database (the set-up's too, a few hundred), by calls; the base's
	# qpcd (BASE=REV) in pg-statements-base.txt.
	pgstatements() { # database, output file
		local msgs
		msgs=$("$PGBIN/psql" -qtA -d "$1" -c 'SELECT count(*) FROM messages')
		"$PGBIN/psql" -q -d postgres -c "SELECT s.calls, round(s.calls::numeric / $msgs, 3) AS per_msg, round(s.total_exec_time::numeric / $msgs * 1000, 1) AS exec_us_per_msg, round(s.total_plan_time::numeric / $msgs * 1000, 1) AS plan_us_per_msg, left(regexp_replace(s.query, '\s+', ' ', 'g'), 110) AS query
			FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '$1' ORDER BY s.calls DESC LIMIT 40" >"$2"
		echo "messages stored: $msgs" >>"$2"
		log "statements: $2"
	}
	if wants qpcd-postgres; then pgstatements qpc "$BENCH_OUT/pg-statements.txt"; fi
	if wants qpcd-postgres-base; then pgstatements qpc_base "$BENCH_OUT/pg-statements-base.txt"; fi
fi
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit-dirty"
jq -s --slurpfile rounds "$tmp/rounds.jsonl" --arg systems "$labels" --arg cpus "$CPUS" \
	--arg cpu "$cpu" --argjson nproc "$(nproc)" --arg kernel "$(uname -r)" --arg go "$(go env GOVERSION)" \
	--arg pg "$pgversion" --arg nats "$([ -x bin/nats-server ] && bin/nats-server --version | awk '{print $2}')" --arg commit "$commit" \
	--arg date "$(date -u +%FT%TZ)" --argjson duration "$DURATION" --argjson warmup "$WARMUP" --argjson size "$SIZE" --argjson channels "$CHANNELS" --argjson batch "$BATCH_N" \
	--argjson quick "$([ -n "$quick" ] && echo true || echo false)" '
	def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
		else (.[length / 2 - 1] + .[length / 2]) / 2 end;
	def med(f): map(f) | map(select(. != null)) | median;
	($systems | split(" ") | map(select(. != ""))) as $order |
	{machine: {cpu: $cpu, nproc: $nproc, kernel: $kernel, go: $go, postgres: $pg, nats_server: $nats},
	 commit: $commit, date: $date, quick: $quick,
	 config: {duration_s: $duration, warmup_s: $warmup, size_bytes: $size, qpcd_channels: $channels, qpcd_batch: $batch, rounds: ($rounds | length), cpus: $cpus},
	 rounds: $rounds,
	 rows: (group_by([.system, .senders]) | map((map(select(.failed | not))) as $ok | {
		system: .[0].system, senders: .[0].senders, runs: ($ok | length), failed_runs: (map(select(.failed)) | length),
		durable: (.[0].system | startswith("nats-default") | not),
		msgs_per_s: med(.msgs_per_s), msgs_per_s_min: ($ok | map(.msgs_per_s) | min), msgs_per_s_max: ($ok | map(.msgs_per_s) | max),
		cpu_us_per_msg: med(.cpu_us_per_msg), server_cpu_us_per_msg: med(.server_cpu_us_per_msg),
		db_cpu_us_per_msg: med(.db_cpu_us_per_msg), ack_p50_ms: med(.ack_p50_ms), ack_p99_ms: med(.ack_p99_ms),
		ack_p999_ms: med(.ack_p999_ms), delivery_p50_ms: med(.delivery_p50_ms), delivery_p99_ms: med(.delivery_p99_ms),
		delivery_p999_ms: med(.delivery_p999_ms), errors: ($ok | map(.errors) | add),
		load1: ($ok | map(.load1_end))})
		| sort_by(.system as $s | [($order | index($s)), .senders])),
	 runs: sort_by(.round, .senders, (.system as $s | $order | index($s)))}' "$tmp"/runs/*.row >"$BENCH_OUT/bench-peers.json"

# The table (Markdown), also kept beside the JSON.
jq -r '
	def r0: if . == null then "-" else (. + 0.5 | floor | tostring) end;
	def r2: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
	"Machine: \(.machine.nproc) × \(.machine.cpu), Linux \(.machine.kernel), \(.machine.go), PostgreSQL \(.machine.postgres), nats-server \(.machine.nats_server); commit \(.commit), \(.date)",
	"\(.config.rounds) round(s) of \(.config.duration_s) s after \(.config.warmup_s) s warm-up, \(.config.size_bytes)-byte messages, closed loop; medians over the rounds",
	"Load average (1 min) per round, start → end: \([.rounds[] | "\(.load1_start) → \(.load1_end)"] | join(", "))",
	"",
	"| System | Senders | msgs/s median (min-max) | CPU µs/msg | ack p50 / p99 / p999 ms | delivery p99 ms | errors | failed runs |",
	"|---|---:|---|---:|---|---:|---:|---:|",
	(.rows[] | "| \(.system)\(if .durable then "" else " (not durable)" end) | \(.senders) | \(if .msgs_per_s == null then "-" else "\(.msgs_per_s | r0) (\(.msgs_per_s_min | r0)-\(.msgs_per_s_max | r0))" end) | \(.cpu_us_per_msg | r0) | \(.ack_p50_ms | r2) / \(.ack_p99_ms | r2) / \(.ack_p999_ms | r2) | \(.delivery_p99_ms | r2) | \(.errors // "-") | \(.failed_runs) |")
	' "$BENCH_OUT/bench-peers.json" | tee "$BENCH_OUT/bench-peers.md"

# The chart: one line per system with each concurrency's median, min and
# max rate and median CPU µs per message.
if command -v gnuplot >/dev/null; then
	jq -r --arg senders "$SENDERS" '
		($senders | split(" ") | map(select(. != "") | tonumber)) as $ns | .rows as $rows |
		([$rows[].system] | reduce .[] as $s ([]; if index([$s]) then . else . + [$s] end))[] as $s |
		[$s] + [$ns[] as $n | ($rows[] | select(.system == $s and .senders == $n)) //
			{msgs_per_s: 0, msgs_per_s_min: 0, msgs_per_s_max: 0, cpu_us_per_msg: 0}
			| (.msgs_per_s // 0), (.msgs_per_s_min // 0), (.msgs_per_s_max // 0), (.cpu_us_per_msg // 0)] | @tsv' \
		"$BENCH_OUT/bench-peers.json" >"$BENCH_OUT/bench-peers.tsv"
	sub1=$(jq -r '"\(.machine.nproc) × \(.machine.cpu), commit \(.commit), \(.date); \(.config.rounds) round(s) × \(.config.duration_s) s, \(.config.size_bytes) B, closed loop"' "$BENCH_OUT/bench-peers.json")
	sub2=$(jq -r '"load average (1 min) per round, start → end: \([.rounds[] | "\(.load1_start) → \(.load1_end)"] | join(", "))"' "$BENCH_OUT/bench-peers.json")
	gnuplot -e "tsv='$BENCH_OUT/bench-peers.tsv'; png='$BENCH_OUT/bench-peers.png'; senders='$SENDERS'; sub1='$sub1'; sub2='$sub2'" scripts/bench-peers.gp &&
		log "chart: $BENCH_OUT/bench-peers.png"
else
	log "gnuplot not installed: no chart (Debian: apt-get install gnuplot-nox)"
fi
log "results: $BENCH_OUT/bench-peers.json"
nfailed=$(jq '[.rows[].failed_runs] | add' "$BENCH_OUT/bench-peers.json")
[ "$nfailed" = 0 ] || die "$nfailed run(s) failed: see $BENCH_OUT/failed-*"
