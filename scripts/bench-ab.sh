#!/usr/bin/env bash
# A change against its base, in short alternating runs: qpcd and qpc-bench
# built from BASE (a git revision) and from this tree take turns, each run
# on a fresh qpcd (SQLCipher, in a temporary data dir, limits raised as in
# bench-peers) with one qpc-bench enqueue run against it. Pairs run back to
# back, so both sides see the same machine; a shared 2-core VM swings too
# much between rounds of a longer benchmark for a 10-20 % change to show.
#
#   BASE=618a4dd scripts/bench-ab.sh              # 32 senders, 6 pairs
#   BASE=618a4dd N=64 PAIRS=4 scripts/bench-ab.sh
#
# Prints one line per run: CPU µs per message of client and server together
# and of qpcd alone, messages/s, UDP datagrams sent per message (nstat, the
# whole machine, set-up and warm-up included: run nothing else) and the
# ack p99; then the medians.
set -euo pipefail
BASE=${BASE:?set BASE to the git revision to compare with}
N=${N:-32}
PAIRS=${PAIRS:-6}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-1s}
cd "$(dirname "$0")/.."
command -v nstat >/dev/null || { echo "bench-ab: needs nstat (iproute2)" >&2; exit 1; }
command -v jq >/dev/null || { echo "bench-ab: needs jq" >&2; exit 1; }
tmp=$(mktemp -d)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	git worktree remove --force "$tmp/src" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
go build -o "$tmp/new/" ./cmd/qpcd ./cmd/qpc-bench
git worktree add -q --detach "$tmp/src" "$BASE"
(cd "$tmp/src" && go build -o "$tmp/base/" ./cmd/qpcd ./cmd/qpc-bench)
freeudp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
freetcp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
printf "side\tpair\tload\tmsgs_per_s\tcpu_us_all\tcpu_us_qpcd\tdgrams_per_msg\tack_p99_ms\n"
for p in $(seq "$PAIRS"); do
	for side in base new; do
		d=$tmp/data-$side-$p port=$(freeudp) ops=$(freetcp)
		mkdir -m 700 "$d"
		QPC_DATA_DIR=$d QPC_LISTEN=127.0.0.1:$port QPC_OPS_LISTEN=127.0.0.1:$ops \
			QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000 QPC_LIMITS_MAX_STREAMS_PER_CONN=1000 \
			QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000 QPC_LIMITS_BYTE_RATE=1073741824 QPC_LIMITS_BYTE_BURST=1073741824 \
			QPC_QUOTA_MESSAGES=0 QPC_QUOTA_MESSAGE_BYTES=0 QPC_INVITATIONS_MAX_PER_HOUR=100000 QPC_INVITATIONS_MAX_PENDING=100000 \
			"$tmp/$side/qpcd" 2>"$d.log" &
		pid=$!
		for _ in $(seq 300); do
			curl -fs "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && [ -s "$d/tls/cert.pem" ] && break
			kill -0 "$pid" 2>/dev/null || { echo "bench-ab: $side qpcd exited:" >&2; cat "$d.log" >&2; exit 1; }
			sleep 0.1
		done
		load=$(cut -d' ' -f1 /proc/loadavg)
		nstat -n >/dev/null
		"$tmp/$side/qpc-bench" -mode enqueue -n "$N" -receivers 1 -addr "127.0.0.1:$port" -data-dir "$d" \
			-warmup "$WARMUP" -duration "$DURATION" -server-pid "$pid" -json "$d.json" >"$d.txt" 2>&1
		out=$(nstat | awk '/UdpOutDatagrams/ {print $2}')
		jq -r --arg side "$side" --arg p "$p" --arg load "$load" --argjson out "${out:-0}" \
			'.[] | select(.mode=="enqueue") | [$side, $p, $load, (.throughput_per_s|round), (.cpu_us_per_request|round),
			 (.server_cpu_us_per_request|round), ($out / .requests * 100 | round / 100), .rpc_latency.p99_ms] | @tsv' "$d.json"
		kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
	done
done | tee "$tmp/rows.tsv"
echo "medians:"
for side in base new; do
	awk -v s="$side" '$1==s' "$tmp/rows.tsv" | sort -n -k5 | awk -v s="$side" '{a[NR]=$0} END {split(a[int((NR+1)/2)], m, "\t"); print s, "cpu_us_all (median run):", m[5], "runs:", NR}'
done
