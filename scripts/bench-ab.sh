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
#   BASE=618a4dd N=64 RATE=2100 DURATION=10s scripts/bench-ab.sh   # paced, not closed loop
#
# Prints one line per run: CPU µs per message of client and server together
# and of qpcd alone, messages/s, UDP datagrams sent per message (nstat, the
# whole machine, set-up and warm-up included: run nothing else) and the
# ack p99, p50 and delivery p99; then the medians of CPU and ack p99.
set -euo pipefail
BASE=${BASE:?set BASE to the git revision to compare with}
N=${N:-32}
PAIRS=${PAIRS:-6}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-1s}
RATE=${RATE:-} # messages/s over all senders; empty: closed loop
cd "$(dirname "$0")/.."
command -v nstat >/dev/null || { echo "bench-ab: needs nstat (iproute2)" >&2; exit 1; }
command -v jq >/dev/null || { echo "bench-ab: needs jq" >&2; exit 1; }
# shellcheck source=scripts/lib/benchqpcd.sh
. scripts/lib/benchqpcd.sh
benchqpcd_setup "$BASE"
printf "side\tpair\tload\tmsgs_per_s\tcpu_us_all\tcpu_us_qpcd\tdgrams_per_msg\tack_p99_ms\tack_p50_ms\tdelivery_p99_ms\n"
for p in $(seq "$PAIRS"); do
	for side in base new; do
		d=$tmp/data-$side-$p
		benchqpcd_start "$tmp/$side/qpcd" "$d" "bench-ab: $side"
		load=$(cut -d' ' -f1 /proc/loadavg)
		nstat -n >/dev/null
		"$tmp/$side/qpc-bench" -mode enqueue -n "$N" -receivers 1 -addr "$bench_addr" -data-dir "$d" \
			-warmup "$WARMUP" -duration "$DURATION" -server-pid "$bench_pid" ${RATE:+-rate "$RATE"} -json "$d.json" >"$d.txt" 2>&1
		out=$(nstat | awk '/UdpOutDatagrams/ {print $2}')
		jq -r --arg side "$side" --arg p "$p" --arg load "$load" --argjson out "${out:-0}" \
			'.[] | select(.mode=="enqueue") | [$side, $p, $load, (.throughput_per_s|round), (.cpu_us_per_request|round),
			 (.server_cpu_us_per_request|round), ($out / .requests * 100 | round / 100), .rpc_latency.p99_ms,
			 .rpc_latency.p50_ms, .delivery_latency.p99_ms] | @tsv' "$d.json"
		benchqpcd_stop
	done
done | tee "$tmp/rows.tsv"
echo "medians:"
for side in base new; do
	awk -v s="$side" '$1==s' "$tmp/rows.tsv" | sort -n -k5 | awk -v s="$side" '{a[NR]=$0} END {split(a[int((NR+1)/2)], m, "\t"); print s, "cpu_us_all (median run):", m[5], "runs:", NR}'
	awk -v s="$side" '$1==s' "$tmp/rows.tsv" | sort -g -k8 | awk -v s="$side" '{a[NR]=$0} END {split(a[int((NR+1)/2)], m, "\t"); print s, "ack_p99_ms (median run):", m[8]}'
done
