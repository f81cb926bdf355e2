#!/usr/bin/env bash
# testnet.sh up|down|status: a local multi-node qpcd testnet on loopback
# (`make testnet NODES=3`, `make testnet-down`; docs/operations.md
# "A local testnet").
#
# up starts, each in its own process group with a pid file in
# $TESTNET_STATE/pids:
#   - a throwaway PostgreSQL (qpc-testnet postgres: internal/store/pgtest,
#     run as the postgres user when started as root) with the database qpc;
#   - NODES qpcd nodes on it, on free loopback ports, sharing one TLS
#     certificate (node 1 generates it, the others get a copy) and, through
#     the database, the token-signing key, as docs/operations.md "Several
#     nodes on PostgreSQL" asks;
#   - Prometheus scraping every node with the shipped alert rules;
#   - CLIENTS chatting qpc users (packaging/docker/testnet-chat.sh, as in
#     docker-compose.yml), client i on node i mod NODES, in the group testnet.
# It prints the addresses and commands and writes them to
# $TESTNET_STATE/testnet.env. down stops everything up started (clients,
# Prometheus, nodes, then PostgreSQL: SIGTERM to each process group, SIGKILL
# after TESTNET_STOP_TIMEOUT seconds) and removes $TESTNET_STATE.
#
# STANDBY=sync|async adds a streaming-replication standby of the database
# (synchronous: every commit waits for it; asynchronous: it may lag) and
# gives the nodes a DSN naming both hosts, so a promoted standby takes over
# without a node restart (docs/operations.md "Database failover").
#
# TRACING=1 adds Jaeger all-in-one ($BIN/jaeger, `make jaeger`; in-memory,
# OTLP on loopback) and has every node and client send it every trace, so a
# latency exemplar in Prometheus leads to its trace (docs/operations.md
# "From an alert to a trace").
#
# Environment: NODES (3), CLIENTS (NODES, at least 2), STANDBY (none),
# TRACING (off), TESTNET_STATE
# (bin/testnet), BIN (bin: qpcd, qpcctl, qpc, qpc-testnet), PROMETHEUS
# (prometheus on PATH), TESTNET_SCRAPE_INTERVAL (5s), TESTNET_CHAT_EVERY
# (seconds between a client's messages, 10), TESTNET_STOP_TIMEOUT (20).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
NODES=${NODES:-3}
CLIENTS=${CLIENTS:-$NODES}
[ "$CLIENTS" -ge 2 ] || CLIENTS=2
STATE=${TESTNET_STATE:-$root/bin/testnet}
BIN=${BIN:-$root/bin}
PROMETHEUS=${PROMETHEUS:-prometheus}
SCRAPE=${TESTNET_SCRAPE_INTERVAL:-5s}
EVERY=${TESTNET_CHAT_EVERY:-10}
STOP_TIMEOUT=${TESTNET_STOP_TIMEOUT:-20}
STANDBY=${STANDBY:-}
TRACING=${TRACING:-}
TRACE_ENV=()
NAMES=(alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert sybil trent victor walter)

die() {
	echo "testnet: $*" >&2
	exit 1
}

# start NAME CMD...: runs CMD in its own session (process group), output in
# logs/NAME.log, pid in pids/NAME.pid.
start() {
	local name=$1
	shift
	setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$STATE/pids/$name.pid"
}

alive() { kill -0 "$1" 2>/dev/null; }

# wait_for SECONDS WHAT CMD...: polls CMD every 0.2 s until it succeeds.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@"; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.2
	done
}

# ready_field NODE FIELD: a field of node NODE's "qpcd ready" JSON log line.
ready_field() {
	grep -m1 '"msg":"qpcd ready' "$STATE/logs/node$1.log" 2>/dev/null |
		sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"
}

node_ready() {
	local pid
	pid=$(cat "$STATE/pids/node$1.pid")
	alive "$pid" || die "node $1 exited before it was ready; its log ($STATE/logs/node$1.log):
$(tail -20 "$STATE/logs/node$1.log")"
	[ -n "$(ready_field "$1" ops)" ]
}

start_node() {
	local i=$1 dir=$STATE/node$1
	mkdir -p "$dir"
	if [ "$i" -gt 1 ]; then
		cp -a "$STATE/node1/tls" "$dir/tls" # one certificate for every node
	fi
	start "node$i" env -u QPC_CONFIG "${TRACE_ENV[@]}" \
		QPC_STORE_BACKEND=postgres QPC_POSTGRES_DSN_FILE="$STATE/postgres.dsn" \
		QPC_CLUSTER_HEARTBEAT=2s QPC_AUTH_REGISTRATION=open QPC_LIMITS_DRAIN_TIMEOUT=2s \
		"$BIN/qpcd" --data-dir "$dir" --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --log-format json
}

up() {
	for b in qpcd qpcctl qpc qpc-testnet; do
		[ -x "$BIN/$b" ] || die "$BIN/$b is missing: run make build (or make testnet, which does)"
	done
	command -v "$PROMETHEUS" >/dev/null || die "no $PROMETHEUS: install Debian's prometheus (make deps-test does)"
	[ "$NODES" -ge 1 ] || die "NODES=$NODES: want at least 1"
	[ "$CLIENTS" -le ${#NAMES[@]} ] || die "CLIENTS=$CLIENTS: at most ${#NAMES[@]}"
	if [ -d "$STATE/pids" ]; then
		for f in "$STATE"/pids/*.pid; do
			[ -f "$f" ] && alive "$(cat "$f")" && die "a testnet runs in $STATE already: make testnet-down first"
		done
		rm -rf "$STATE"
	fi
	mkdir -p "$STATE/pids" "$STATE/logs"
	STATE=$(cd "$STATE" && pwd)
	# Whatever fails from here on, stop what was started.
	trap 'rc=$?; if [ $rc != 0 ]; then echo "testnet: up failed; stopping what it started" >&2; down; fi' EXIT

	case $STANDBY in '' | sync | async) ;; *) die "STANDBY=$STANDBY: want sync or async" ;; esac
	echo "testnet: starting PostgreSQL${STANDBY:+ with a $STANDBY standby}"
	start postgres "$BIN/qpc-testnet" postgres --dsn-file "$STATE/postgres.dsn" --dir-file "$STATE/postgres.dir" ${STANDBY:+--standby "$STANDBY"}
	pg_up() {
		alive "$(cat "$STATE/pids/postgres.pid")" || die "PostgreSQL did not start: $(cat "$STATE/logs/postgres.log")"
		[ -s "$STATE/postgres.dsn" ]
	}
	wait_for 120 PostgreSQL pg_up || die "PostgreSQL not ready after 120 s"

	local jaeger_ui=""
	if [ -n "$TRACING" ]; then
		[ -x "$BIN/jaeger" ] || die "TRACING=1 needs $BIN/jaeger: run make jaeger (or make testnet TRACING=1, which does)"
		echo "testnet: starting Jaeger"
		local jg jh jq jqg
		jg=$("$BIN/qpc-testnet" port) jh=$("$BIN/qpc-testnet" port) jq=$("$BIN/qpc-testnet" port) jqg=$("$BIN/qpc-testnet" port)
		# The configuration the tracing tests run (jaegertest.Config).
		"$BIN/qpc-testnet" jaeger-config --otlp-grpc "$jg" --otlp-http "$jh" --query "$jq" --query-grpc "$jqg" >"$STATE/jaeger.yaml"
		start jaeger "$BIN/jaeger" --config "file:$STATE/jaeger.yaml"
		jaeger_ready() {
			alive "$(cat "$STATE/pids/jaeger.pid")" || die "Jaeger exited: $(tail -20 "$STATE/logs/jaeger.log")"
			curl -fsS "http://127.0.0.1:$jq/api/services" >/dev/null 2>&1
		}
		wait_for 60 Jaeger jaeger_ready || die "Jaeger not ready after 60 s"
		jaeger_ui="http://127.0.0.1:$jq"
		TRACE_ENV=(QPC_TRACING_ENDPOINT="127.0.0.1:$jg" QPC_TRACING_PROTOCOL=grpc QPC_TRACING_SAMPLE_RATIO=1)
	fi

	echo "testnet: starting $NODES qpcd node(s)"
	start_node 1
	wait_for 60 "node 1" node_ready 1 || die "node 1 not ready after 60 s"
	for ((i = 2; i <= NODES; i++)); do start_node "$i"; done
	for ((i = 2; i <= NODES; i++)); do
		wait_for 60 "node $i" node_ready "$i" || die "node $i not ready after 60 s"
	done
	local pin targets="" quic=() ops=()
	pin=$(ready_field 1 cert_sha256)
	for ((i = 1; i <= NODES; i++)); do
		quic+=("$(ready_field "$i" quic | sed 's,/udp$,,')")
		ops+=("$(ready_field "$i" ops)")
		targets+="${targets:+, }\"${ops[$((i - 1))]}\""
		[ "$(ready_field "$i" cert_sha256)" = "$pin" ] || die "node $i serves another certificate than node 1"
	done

	echo "testnet: starting Prometheus"
	local prom_port
	prom_port=$("$BIN/qpc-testnet" port)
	cat >"$STATE/prometheus.yml" <<EOF
# Written by scripts/testnet.sh: every testnet node, with the shipped rules.
global:
  scrape_interval: $SCRAPE
  evaluation_interval: $SCRAPE
rule_files: ["$root/ops/alerts/qpcd.rules.yml"]
scrape_configs:
  - job_name: qpcd
    static_configs:
      - targets: [$targets]
EOF
	# Exemplar storage keeps the trace ids on the latency histograms.
	start prometheus "$PROMETHEUS" --config.file="$STATE/prometheus.yml" --storage.tsdb.path="$STATE/prometheus" \
		--enable-feature=exemplar-storage \
		--web.listen-address="127.0.0.1:$prom_port" --log.level=warn
	prom_ready() {
		alive "$(cat "$STATE/pids/prometheus.pid")" || die "Prometheus exited: $(tail -20 "$STATE/logs/prometheus.log")"
		curl -fsS "http://127.0.0.1:$prom_port/-/ready" >/dev/null 2>&1
	}
	wait_for 60 Prometheus prom_ready || die "Prometheus not ready after 60 s"

	echo "testnet: starting $CLIENTS chatting client(s)"
	local peers=("${NAMES[@]:1:$((CLIENTS - 1))}")
	for ((c = 0; c < CLIENTS; c++)); do
		local name=${NAMES[$c]} n=$((c % NODES + 1))
		mkdir -p "$STATE/clients/$name"
		local args=("$name")
		[ "$c" -eq 0 ] && args+=("${peers[@]}")
		start "client-$name" env "${TRACE_ENV[@]}" PATH="$BIN:$PATH" QPC_HOME="$STATE/clients/$name" \
			QPC_TESTNET_CREATOR="${NAMES[0]}" QPC_TESTNET_EVERY="$EVERY" \
			QPC_TESTNET_SERVER="${quic[$((n - 1))]}" QPC_TESTNET_CERT="$STATE/node$n/tls/cert.pem" \
			sh "$root/packaging/docker/testnet-chat.sh" "${args[@]}"
		echo "$name node$n" >>"$STATE/clients.txt"
	done
	trap - EXIT

	{
		echo "TESTNET_NODES=$NODES"
		echo "TESTNET_PIN=$pin"
		echo "TESTNET_PROMETHEUS=http://127.0.0.1:$prom_port"
		echo "TESTNET_POSTGRES_DSN_FILE=$STATE/postgres.dsn"
		[ -z "$jaeger_ui" ] || echo "TESTNET_JAEGER=$jaeger_ui"
		for ((i = 1; i <= NODES; i++)); do
			echo "TESTNET_NODE${i}_QUIC=${quic[$((i - 1))]}"
			echo "TESTNET_NODE${i}_OPS=${ops[$((i - 1))]}"
			echo "TESTNET_NODE${i}_DATA_DIR=$STATE/node$i"
		done
	} >"$STATE/testnet.env"

	cat <<EOF

testnet up: $NODES qpcd node(s) on one PostgreSQL, Prometheus, $CLIENTS chatting client(s)
EOF
	for ((i = 1; i <= NODES; i++)); do
		printf '  node%-3s quic %-22s ops http://%s/metrics\n' "$i" "${quic[$((i - 1))]}" "${ops[$((i - 1))]}"
	done
	cat <<EOF
  Prometheus  http://127.0.0.1:$prom_port  (try: up{job="qpcd"}, ALERTS)
  Jaeger      ${jaeger_ui:-off (TRACING=1 turns it on)}
  PostgreSQL  connection string in $STATE/postgres.dsn${STANDBY:+ (primary and $STANDBY standby: logs/postgres.log has both; stop the primary with pg_ctl stop -m immediate and pg_ctl promote the standby to watch the nodes follow)}
  certificate pin (every node) $pin
  clients     $(tr '\n' ' ' <"$STATE/clients.txt")
  logs        $STATE/logs/   addresses: $STATE/testnet.env

  $BIN/qpcctl --data-dir $STATE/node1 status          # the node registry lists every node
  QPC_HOME=$STATE/clients/${NAMES[0]} $BIN/qpc history testnet   # what the clients wrote
  $BIN/qpc --home /tmp/me init --server ${quic[0]} --server-name localhost --pin $pin
  kill \$(cat $STATE/pids/node1.pid)   # take a node down; watch QpcdInstanceDown
  make testnet-down                    # stop everything and remove $STATE
EOF
}

# stop_group NAME...: SIGTERM to each pid file's process group, then wait,
# then SIGKILL what is left; removes the pid files of ended processes.
stop_group() {
	local pids=() f pid
	for name in "$@"; do
		f=$STATE/pids/$name.pid
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		if alive "$pid"; then
			kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done
	local deadline=$((SECONDS + STOP_TIMEOUT))
	for pid in "${pids[@]}"; do
		while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
		if alive "$pid"; then
			echo "testnet: process group $pid did not stop in ${STOP_TIMEOUT}s; killing it" >&2
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	# A process group outlives its leader when a child ignored the SIGTERM.
	for pid in "${pids[@]}"; do
		kill -0 -- "-$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
	done
	for name in "$@"; do rm -f "$STATE/pids/$name.pid"; done
}

down() {
	[ -d "$STATE" ] || {
		echo "testnet: nothing runs in $STATE"
		return 0
	}
	local names=()
	for f in "$STATE"/pids/client-*.pid; do [ -f "$f" ] && names+=("$(basename "$f" .pid)"); done
	[ ${#names[@]} -eq 0 ] || stop_group "${names[@]}"
	stop_group prometheus
	names=()
	for f in "$STATE"/pids/node*.pid; do [ -f "$f" ] && names+=("$(basename "$f" .pid)"); done
	[ ${#names[@]} -eq 0 ] || stop_group "${names[@]}"
	stop_group jaeger # after the nodes, which flush their spans to it on SIGTERM
	stop_group postgres
	# The PostgreSQL helper stops its server; had it been SIGKILLed, the
	# server would still run: end it by its own pid file.
	# (With STANDBY, postgres.dir names the primary's and the standby's.)
	local pgdir pm
	if [ -s "$STATE/postgres.dir" ]; then while read -r pgdir; do
		[ -n "$pgdir" ] || continue
		if [ -s "$pgdir/data/postmaster.pid" ]; then
			pm=$(head -1 "$pgdir/data/postmaster.pid")
			kill -QUIT "$pm" 2>/dev/null || true
			local deadline=$((SECONDS + STOP_TIMEOUT))
			while alive "$pm" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
			alive "$pm" && kill -KILL "$pm" 2>/dev/null || true
		fi
		case $pgdir in */pgtest-*) rm -rf "$pgdir" ;; esac
	done <"$STATE/postgres.dir"; fi
	rm -rf "$STATE"
	echo "testnet: stopped; $STATE removed"
}

status() {
	[ -d "$STATE/pids" ] || {
		echo "testnet: not running ($STATE)"
		return 1
	}
	local rc=0
	for f in "$STATE"/pids/*.pid; do
		if alive "$(cat "$f")"; then
			echo "running  $(basename "$f" .pid) (pid $(cat "$f"))"
		else
			echo "STOPPED  $(basename "$f" .pid)"
			rc=1
		fi
	done
	[ -f "$STATE/testnet.env" ] && cat "$STATE/testnet.env"
	return $rc
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
	echo "usage: $0 up|down|status" >&2
	exit 2
	;;
esac
