#!/usr/bin/env bash
# bench-compare.sh: the regression check of the nightly workflow (make
# bench-compare). Runs the MLS, store and delivery benchmarks COUNT times
# into $BENCH_OUT/bench-new.txt and, when $BENCH_OUT/bench-baseline.txt
# exists (the nightly job restores the last run's from its cache), prints
# benchstat's comparison of the two into $BENCH_OUT/benchstat.txt. The new
# results then become the baseline. A regression shows as a diff; the job
# does not fail on one (shared runners are too noisy for a hard gate).
#
# Environment: BENCH_OUT (bench-out), COUNT (6), BENCHTIME (1x for the
# group benchmarks' one operation per size, else Go's default),
# QPC_MLS_BENCH_SIZES (10,100,1000).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${BENCH_OUT:-bench-out}
COUNT=${COUNT:-6}
export QPC_MLS_BENCH_SIZES=${QPC_MLS_BENCH_SIZES:-10,100,1000}
mkdir -p "$OUT"
new=$OUT/bench-new.txt
: >"$new"
{
	echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo unknown) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
	go test -run '^$' -count "$COUNT" -bench 'Benchmark(SignWithLabel|VerifyWithLabel|HPKESeal|HPKEOpen|PrivateMessage|Group(UpdateCommit|ProcessCommit|JoinWelcome|AppMessage))' ./internal/mls/
	go test -run '^$' -count "$COUNT" -bench 'BenchmarkWriteTx' ./internal/store/
	QPC_TEST_BACKENDS=sqlcipher go test -run '^$' -count "$COUNT" -bench 'BenchmarkEnqueueParallel' ./internal/delivery/
} | tee -a "$new"
if [ -s "$OUT/bench-baseline.txt" ]; then
	echo "== benchstat: last run -> this run"
	go tool -modfile=tools/benchstat/go.mod benchstat "$OUT/bench-baseline.txt" "$new" | tee "$OUT/benchstat.txt"
else
	echo "== no baseline in $OUT/bench-baseline.txt: this run becomes it" | tee "$OUT/benchstat.txt"
fi
cp "$new" "$OUT/bench-baseline.txt"
