#!/usr/bin/env bash
# internal/mls against ts-mls (the npm package, version pinned by
# bench/ts-mls/package-lock.json) on the same operation, in one run (issue
# 17, docs/benchmarks.md "Against ts-mls"): `make bench-mls-peers`.
#
#   scripts/bench-mls-peers.sh                  # 100 and 1 000 members, 3 rounds
#   BENCH_QUICK=1 scripts/bench-mls-peers.sh    # 10 and 100 members, 1 short round: a smoke check
#   SIZES=100 ROUNDS=5 scripts/bench-mls-peers.sh
#
# The operation: in a "fresh" group of n members (the creator added the
# others in one commit with a path), the last member's empty commit with a
# full UpdatePath, sent as PublicMessage, cipher suite 1
# (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519):
#   internal/mls  BenchmarkGroupUpdateCommit/fresh-embedded (go test -bench): Commit,
#                 returning the signed GroupInfo with external_pub
#                 and the ratchet tree as well
#   ts-mls        bench/ts-mls/bench.mjs: createCommit plus that same
#                 GroupInfo (op "commit+groupinfo"), and createCommit alone
#                 (op "commit", less work than ours)
# Both sides' commits must carry the same number of path-secret
# ciphertexts (the same tree), or the report fails.
#
# Rounds are interleaved (ours then theirs in odd rounds, theirs then ours
# in even ones) so that a change in the machine's load falls on both. The
# ts-mls groups are built once (about two minutes at 1 000 members) in one
# Node process that measures a round each time it is asked; the Go side is
# one test binary run per round (GO_COUNT runs of GO_BENCHTIME; a round's
# figure is the median of those runs' means), the ts-mls side TS_ITERS
# iterations per size after one warm-up (a round's figure is their median).
# Rows give the median of the rounds' figures and their range, wall and CPU
# time (the process's user + system time, GC and Node's worker threads
# included).
#
# Output in BENCH_OUT (default bench-out/): mls-peers.json
# ({"rows":[{"impl","members","op","ms_median","ms_min","ms_max",...}],
# "ratios":[...], the machine, versions and each round's load average}) and
# mls-peers.md (the tables). Needs Go, Node.js 20 or later and npm; runs
# `npm ci` in bench/ts-mls when ts-mls is not installed there.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=
if [ -n "${BENCH_QUICK:-}" ] && [ "${BENCH_QUICK}" != 0 ]; then quick=1; fi
if [ -n "$quick" ]; then
	SIZES=${SIZES:-10,100} ROUNDS=${ROUNDS:-1} TS_ITERS=${TS_ITERS:-2}
	GO_BENCHTIME=${GO_BENCHTIME:-3x} GO_COUNT=${GO_COUNT:-1}
else
	SIZES=${SIZES:-100,1000} ROUNDS=${ROUNDS:-3} TS_ITERS=${TS_ITERS:-10,3}
	GO_BENCHTIME=${GO_BENCHTIME:-1s} GO_COUNT=${GO_COUNT:-5}
fi
BENCH_OUT=${BENCH_OUT:-bench-out}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-1200} # seconds: building the ts-mls groups
ROUND_TIMEOUT=${ROUND_TIMEOUT:-1200} # seconds: one side's round
TSDIR=bench/ts-mls

log() { echo "bench-mls-peers: $*" >&2; }
die() {
	log "$*"
	exit 1
}
[[ $SIZES =~ ^[0-9]+(,[0-9]+)*$ ]] || die "SIZES=$SIZES: want sizes separated by commas"
for n in ${SIZES//,/ }; do [ "$n" -ge 3 ] || die "SIZES: $n members is too few (at least 3)"; done
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then die "ROUNDS=$ROUNDS: want a positive whole number"; fi
[[ $TS_ITERS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "TS_ITERS=$TS_ITERS: want counts separated by commas (one per size; the last repeats)"
if ! [[ $GO_COUNT =~ ^[1-9][0-9]*$ ]]; then die "GO_COUNT=$GO_COUNT: want a positive whole number"; fi
for t in go node npm; do command -v "$t" >/dev/null || die "needs $t"; done
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "needs Node.js 20 or later (have $(node --version))"

want=$(node -p 'require("./'"$TSDIR"'/package-lock.json").packages["node_modules/ts-mls"].version')
have=$(node -p 'try { require("./'"$TSDIR"'/node_modules/ts-mls/package.json").version } catch { "" }')
if [ "$have" != "$want" ]; then
	log "installing ts-mls $want in $TSDIR (npm ci)"
	(cd "$TSDIR" && npm ci --no-audit --no-fund >&2)
fi

tmp=$(mktemp -d)
ts_pid=
cleanup() {
	if [ -n "$ts_pid" ]; then kill "$ts_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

log "building the internal/mls test binary"
go test -c -o "$tmp/mls.test" ./internal/mls/

log "building the ts-mls groups ($SIZES members)"
coproc TS { cd "$TSDIR" && exec node bench.mjs --serve --sizes "$SIZES" --iters "$TS_ITERS"; }
# shellcheck disable=SC2153 # TS_PID is set by coproc
ts_pid=$TS_PID
ts_in=${TS[1]} ts_out=${TS[0]}
line=
read -r -t "$SETUP_TIMEOUT" line <&"$ts_out" || die "ts-mls did not get ready within ${SETUP_TIMEOUT} s"
[ "$line" = '{"ready":true}' ] || die "ts-mls: unexpected first line: $line"

samples=$tmp/samples.jsonl
loads=()
: >"$samples"

ours() { # round
	log "round $1: internal/mls"
	QPC_MLS_BENCH_SIZES=$SIZES timeout "$ROUND_TIMEOUT" "$tmp/mls.test" -test.run '^$' \
		-test.bench '^BenchmarkGroupUpdateCommit$/^fresh-embedded$' -test.benchtime="$GO_BENCHTIME" -test.count="$GO_COUNT" \
		-test.timeout 0 >"$tmp/go.txt" || {
		cat "$tmp/go.txt" >&2
		die "internal/mls benchmark failed"
	}
	awk -v round="$1" '
	/^BenchmarkGroupUpdateCommit\/fresh-embedded\/n=/ {
		n=$1; sub(/.*n=/, "", n); sub(/-[0-9]+$/, "", n)
		for (f=3; f<NF; f++) {
			if ($(f+1) == "ns/op") ms[n]=ms[n] "," $f/1e6
			if ($(f+1) == "cpu-ns/op") cpu[n]=cpu[n] "," $f/1e6
			if ($(f+1) == "path-cts") cts[n]=$f
		}
		if (!(n in seen)) { seen[n]=1; order[++k]=n }
	}
	END {
		for (i=1; i<=k; i++) {
			n=order[i]
			printf "{\"impl\":\"internal/mls\",\"round\":%d,\"members\":%d,\"op\":\"commit+groupinfo\",\"ms\":[%s],\"cpu_ms\":[%s],\"ciphertexts\":%d}\n", round, n, substr(ms[n], 2), substr(cpu[n], 2), cts[n]
		}
	}' "$tmp/go.txt" >"$tmp/go.jsonl"
	[ "$(wc -l <"$tmp/go.jsonl")" -eq "$(tr ',' '\n' <<<"$SIZES" | wc -l)" ] || {
		cat "$tmp/go.txt" >&2
		die "internal/mls: not every size was measured"
	}
	cat "$tmp/go.jsonl" >>"$samples"
}

theirs() { # round
	log "round $1: ts-mls"
	echo run >&"$ts_in"
	local l
	while :; do
		read -r -t "$ROUND_TIMEOUT" l <&"$ts_out" || die "ts-mls: no result within ${ROUND_TIMEOUT} s"
		[ "$l" = '{"round_done":true}' ] && break
		node -e 'const s = JSON.parse(process.argv[1]); s.round = Number(process.argv[2]); console.log(JSON.stringify(s))' "$l" "$1" >>"$samples"
	done
}

for ((r = 1; r <= ROUNDS; r++)); do
	start=$(cut -d' ' -f1-3 /proc/loadavg)
	if ((r % 2)); then
		ours "$r"
		theirs "$r"
	else
		theirs "$r"
		ours "$r"
	fi
	loads+=("{\"round\":$r,\"load_start\":\"$start\",\"load_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}")
	log "round $r: load average $start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
done
exec {ts_in}>&- # the Node process exits at the end of its input

ts_version=$(node -p 'require("./'"$TSDIR"'/node_modules/ts-mls/package.json").version')
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || echo unknown)
loads_json=$(
	IFS=,
	echo "${loads[*]}"
)
cat >"$tmp/meta.json" <<JSON
{
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "suite": "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
  "ts_mls": "$ts_version",
  "node": "$(node --version)",
  "go": "$(go env GOVERSION)",
  "cpu": "$cpu",
  "nproc": $(nproc),
  "sizes": "$SIZES",
  "go_benchtime": "$GO_BENCHTIME",
  "go_count": $GO_COUNT,
  "ts_iters": "$TS_ITERS",
  "rounds": [$loads_json]
}
JSON
mkdir -p "$BENCH_OUT"
node "$TSDIR/report.mjs" "$samples" "$tmp/meta.json" "$BENCH_OUT/mls-peers.json" "$BENCH_OUT/mls-peers.md"
log "ts-mls $ts_version, Node $(node --version), $(go env GOVERSION); wrote $BENCH_OUT/mls-peers.json and $BENCH_OUT/mls-peers.md"
