#!/usr/bin/env bash
# Issue 17's half-load aim as one command: per run, a fresh qpcd on
# SQLCipher (temporary data dir, limits raised as in bench-peers), the
# closed loop (N senders, one receiver) and then the same load paced at
# half of that run's closed-loop rate, or at RATE if set. The aim: ack p99
# under 10 ms and delivery p99 under 15 ms in each run.
#
#   scripts/bench-half.sh                        # 3 runs of this tree
#   BASE=f557ed7 RUNS=3 scripts/bench-half.sh    # base and this tree taking turns
#   RATE=3000 scripts/bench-half.sh              # a fixed paced rate
#
# Prints one line per run (tab-separated): side, run, load average, closed
# loop msgs/s, paced rate, paced ack p50/p99/p999 ms, delivery p99 ms, CPU
# µs per paced message (client and server) and qpcd's alone; then how many
# runs of each side met the aim.
set -euo pipefail
N=${N:-64}
RUNS=${RUNS:-3}
CLOSED=${CLOSED:-10s}
PACED=${PACED:-10s}
RATE=${RATE:-}
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "bench-half: needs jq" >&2; exit 1; }
# shellcheck source=scripts/lib/benchqpcd.sh
. scripts/lib/benchqpcd.sh
benchqpcd_setup "${BASE:-}"
printf "side\trun\tload\tclosed_msgs_per_s\tpaced_rate\tack_p50_ms\tack_p99_ms\tack_p999_ms\tdelivery_p99_ms\tcpu_us_all\tcpu_us_qpcd\n"
for r in $(seq "$RUNS"); do
	for side in "${sides[@]}"; do
		d=$tmp/data-$side-$r
		benchqpcd_start "$tmp/$side/qpcd" "$d" "bench-half: $side"
		load=$(cut -d' ' -f1 /proc/loadavg)
		bench() { "$tmp/$side/qpc-bench" -mode enqueue -n "$N" -receivers 1 -addr "$bench_addr" -data-dir "$d" -server-pid "$bench_pid" "$@"; }
		bench -duration "$CLOSED" -json "$d.closed.json" >"$d.closed.txt" 2>&1
		closed=$(jq -r '.[] | select(.mode=="enqueue") | .throughput_per_s | round' "$d.closed.json")
		rate=${RATE:-$((closed / 2))}
		bench -duration "$PACED" -rate "$rate" -json "$d.paced.json" >"$d.paced.txt" 2>&1
		jq -r --arg side "$side" --arg r "$r" --arg load "$load" --arg closed "$closed" --arg rate "$rate" \
			'.[] | select(.mode=="enqueue") | [$side, $r, $load, $closed, $rate, .rpc_latency.p50_ms, .rpc_latency.p99_ms,
			 .rpc_latency.p999_ms, .delivery_latency.p99_ms, (.cpu_us_per_request|round), (.server_cpu_us_per_request|round)] | @tsv' "$d.paced.json"
		benchqpcd_stop
	done
done | tee "$tmp/rows.tsv"
for side in "${sides[@]}"; do
	awk -v s="$side" -F'\t' '$1==s {n++; if ($7 < 10 && $9 < 15) met++} END {printf "%s: aim (ack p99 < 10 ms, delivery p99 < 15 ms) met in %d of %d runs\n", s, met, n}' "$tmp/rows.tsv"
done
