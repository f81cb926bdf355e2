# shellcheck shell=bash
# A qpcd for the enqueue benchmarks (bench-ab, bench-half), sourced by them
# so that it is started one way: SQLCipher in a fresh data dir, loopback
# ports, every rate limit and quota out of the way (the bench clients all
# share 127.0.0.1, and a long run sends more than a week of ordinary use).
#
#   benchqpcd_setup [BASE]
#       makes the temp dir tmp (removed on exit, with the qpcd still
#       running), builds qpcd and qpc-bench from this tree into $tmp/new
#       and, given BASE (a git revision), from BASE into $tmp/base; sets
#       sides to (new) or (base new).
#   benchqpcd_start BINARY DATADIR NAME
#       starts BINARY with its data in DATADIR (made here, stderr in
#       DATADIR.log), waits until it is ready and sets bench_pid and
#       bench_addr; NAME labels the error when it exits or is not ready.
#   benchqpcd_stop     stops it (a no-op when none is running)

bench_pid=
bench_addr=

benchqpcd_setup() {
	tmp=$(mktemp -d)
	trap benchqpcd_cleanup EXIT
	sides=(new)
	go build -o "$tmp/new/" ./cmd/qpcd ./cmd/qpc-bench
	if [ -n "${1:-}" ]; then
		git worktree add -q --detach "$tmp/src" "$1"
		(cd "$tmp/src" && go build -o "$tmp/base/" ./cmd/qpcd ./cmd/qpc-bench)
		sides=(base new)
	fi
}

benchqpcd_cleanup() {
	benchqpcd_stop
	git worktree remove --force "$tmp/src" 2>/dev/null || true
	rm -rf "$tmp"
}

benchqpcd_start() {
	local bin=$1 d=$2 name=$3 port ops
	port=$(python3 -c 'import socket;s=socket.socket(type=socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
	ops=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
	mkdir -m 700 "$d"
	QPC_DATA_DIR=$d QPC_LISTEN=127.0.0.1:$port QPC_OPS_LISTEN=127.0.0.1:$ops \
		QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000 QPC_LIMITS_MAX_STREAMS_PER_CONN=1000 \
		QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000 QPC_LIMITS_BYTE_RATE=1073741824 QPC_LIMITS_BYTE_BURST=1073741824 \
		QPC_QUOTA_MESSAGES=0 QPC_QUOTA_MESSAGE_BYTES=0 QPC_INVITATIONS_MAX_PER_HOUR=100000 QPC_INVITATIONS_MAX_PENDING=100000 \
		"$bin" 2>"$d.log" &
	bench_pid=$! bench_addr=127.0.0.1:$port
	for _ in $(seq 300); do
		curl -fs "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && [ -s "$d/tls/cert.pem" ] && return 0
		kill -0 "$bench_pid" 2>/dev/null || { echo "$name: qpcd exited:" >&2; cat "$d.log" >&2; bench_pid=; exit 1; }
		sleep 0.1
	done
	echo "$name: qpcd not ready after 30 s:" >&2; tail -20 "$d.log" >&2; exit 1
}

benchqpcd_stop() {
	[ -n "$bench_pid" ] || return 0
	kill "$bench_pid" 2>/dev/null || true
	wait "$bench_pid" 2>/dev/null || true
	bench_pid=
}
