#!/usr/bin/env bash
# Runs the internal/mls group benchmarks and rewrites the "MLS groups"
# section of docs/benchmarks.md with their results.
#
#   scripts/bench-mls.sh            # sizes 2,10,100,1000, then 10000 within a minute
#   COUNT=1 scripts/bench-mls.sh    # fewer repetitions (default 3; the table shows medians)
#
# Nothing else in docs/benchmarks.md is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-3}
SIZES=${SIZES:-2,10,100,1000}
BIG=${BIG:-10000}
BIG_TIMEOUT=${BIG_TIMEOUT:-60}
DOC=docs/benchmarks.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "bench-mls: sizes $SIZES, count $COUNT" >&2
QPC_MLS_BENCH_SIZES=$SIZES go test -run='^$' -bench='^BenchmarkGroup' -benchtime=1s -count="$COUNT" -timeout=60m \
	./internal/mls/ | tee "$tmp/main.txt" >&2

big_note="not attempted"
if [ -n "$BIG" ]; then
	echo "bench-mls: n=$BIG with a ${BIG_TIMEOUT}s limit" >&2
	if QPC_MLS_BENCH_SIZES=$BIG timeout "$BIG_TIMEOUT" go test -run='^$' -bench='^BenchmarkGroup' -benchtime=1x -count=1 \
		./internal/mls/ >"$tmp/big.txt" 2>&1; then
		big_note="finished within ${BIG_TIMEOUT} s (one iteration each)"
	else
		big_note="did not finish within ${BIG_TIMEOUT} s; rows below are the benchmarks that completed before the limit (one iteration each)"
	fi
	grep '^BenchmarkGroup' "$tmp/big.txt" >>"$tmp/main.txt" || true
fi

# Profile the 1000-member populated commit (the 5 ms aim).
QPC_MLS_BENCH_SIZES=1000 go test -run='^$' -bench='^BenchmarkGroupUpdateCommit/^populated$' -benchtime=100x \
	-cpuprofile "$tmp/cpu.out" -o "$tmp/mls.test" ./internal/mls/ >/dev/null
profile=$(go tool pprof -top -cum -focus='BenchmarkGroupUpdateCommit' -ignore='getBenchGroup|populate|freshGroup|bundles' \
	-relative_percentages "$tmp/mls.test" "$tmp/cpu.out" 2>/dev/null |
	awk '/internal\/mls\.\(|ed25519\.Sign$|sha512\.block$|hpke\.\(|x25519\.|runtime\.gcBgMarkWorker$|runtime\.memmove$|runtime\.mallocgc$/ {
		n=$6; sub(/github.com\/quicprochat\/quicprochat\/internal\//, "", n); printf "%7s %7s  %s\n", $4, $5, n }' | head -18)

# Table: one row per benchmark, medians of the runs.
table=$(awk '
/^BenchmarkGroup/ {
	name=$1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkGroup/, "", name)
	for (f=3; f<NF; f++) {
		if ($(f+1) == "ns/op") ns[name]=ns[name] " " $f
		if ($(f+1) == "cpu-ns/op") cpu[name]=cpu[name] " " $f
		if ($(f+1) == "B/op") bytes[name]=$f
		if ($(f+1) == "allocs/op") allocs[name]=$f
	}
	if (!(name in seen)) { seen[name]=1; order[++n]=name }
}
function median(s,   a, k, i, j, t) {
	k=split(s, a, " ")
	if (k == 0) return -1
	for (i=1;i<=k;i++) for (j=i+1;j<=k;j++) if (a[j]+0 < a[i]+0) { t=a[i]; a[i]=a[j]; a[j]=t }
	return a[int((k+1)/2)]
}
function group3(x,   s, r) {
	s=sprintf("%.0f", x); r=""
	while (length(s) > 3) { r=" " substr(s, length(s)-2) r; s=substr(s, 1, length(s)-3) }
	return s r
}
END {
	for (i=1;i<=n;i++) {
		nm=order[i]; op=nm; shape="-"; size=nm
		sub(/\/.*/, "", op)
		if (split(nm, part, "/") == 3) shape=part[2]
		sub(/.*n=/, "", size)
		m=median(ns[nm]); c=median(cpu[nm])
		printf "| %s | %s | %s | %s | %.2f | %s | %s | %s |\n", op, shape, size, group3(m), m/1e6, (c < 0 ? "-" : sprintf("%.2f", c/1e6)), group3(bytes[nm]), group3(allocs[nm])
	}
}' "$tmp/main.txt")

# The 5 ms aim, judged on CPU time (wall time on this shared machine
# includes waiting for other engineers' processes).
aim=$(printf '%s\n' "$table" | awk -F'|' '
$2 ~ /UpdateCommit/ && $3 == " populated " && $4+0 == 1000 { commit=$7+0; cw=$6+0 }
$2 ~ /ProcessCommit/ && $3 == " populated " && $4+0 == 1000 { proc=$7+0; pw=$6+0 }
END {
	if (commit == "" || proc == "") { print "not measured"; exit }
	verdict = (commit < 5 && proc < 5) ? "met on CPU time" : "not met on CPU time"
	wall = (cw < 5 && pw < 5) ? "and on wall time in this run" : "while the wall time of this run, taken under the load above, is over it"
	printf "%s %s: a full-path commit takes %.2f ms of CPU (%.2f ms wall) and its processing %.2f ms of CPU (%.2f ms wall)", verdict, wall, commit, cw, proc, pw
}')
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || echo unknown)
section=$(cat <<MD
## MLS groups

Package \`internal/mls\`, cipher suite 1, produced by \`scripts/bench-mls.sh\`
($(date -u +%Y-%m-%d)), which runs

\`\`\`
QPC_MLS_BENCH_SIZES=$SIZES go test -run='^\$' -bench='^BenchmarkGroup' -benchtime=1s -count=$COUNT ./internal/mls/
QPC_MLS_BENCH_SIZES=$BIG go test -run='^\$' -bench='^BenchmarkGroup' -benchtime=1x ./internal/mls/   # ${BIG_TIMEOUT} s limit
\`\`\`

Machine: $(nproc) vCPU ($cpu), $(go version | cut -d' ' -f3-4), shared with other
engineers' builds and tests (load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg)),
so wall times (ns/op) vary by tens of percent, and more for the short
operations, between runs; "CPU ms/op" is the process's CPU time (user +
system, GC included) per operation, which that contention inflates far
less. The table gives the median of $COUNT runs (the 10000-member rows: one
iteration). Allocations do not vary.

Operations (\`group_bench_test.go\`):

- **CreateAddAll**: \`CreateGroup\` and one commit adding the n-1 other
  members (KeyPackages made beforehand), Welcome included.
- **UpdateCommit**: one member's empty commit with a full UpdatePath
  (\`Commit(CommitOptions{})\`, PublicMessage), including the signed
  GroupInfo (with the ratchet tree and external_pub) that every commit
  returns for the server.
- **ProcessCommit**: another member processing that commit.
- **JoinWelcome**: \`JoinFromWelcome\` with the tree in the extension, full
  validation (tree hash, parent hashes, every leaf signature).
- **AppMessage**: \`Protect\` of 1 KiB at one member plus \`ProcessMessage\`
  at another.

Tree shapes: **fresh** is the tree right after the creator added everyone
in one commit with a path (the creator's direct path is set, with no
unmerged leaves since the new members get their path secrets in the
Welcome; every other parent is blank, so resolutions off that path are
whole subtrees of leaves); **populated** is
the tree after every member has committed once (every parent set, no
unmerged leaves). The populated tree is built by simulating one real
UpdatePath per member at the TreeKEM level (fresh keys, real parent hashes,
signed leaves; the path-secret ciphertexts are skipped since no one
decrypts them), then the two measured members share the epoch.

n=$BIG: $big_note.

| Operation | Tree | Members | ns/op | ms/op | CPU ms/op | B/op | allocs/op |
|-----------|------|--------:|------:|------:|----------:|-----:|----------:|
$table

### What dominates

- Populated tree, 1000 members, aim under 5 ms each: $aim.
  Processing needs one HPKE decryption, about ten key derivations, the
  signature check and the tree-hash update along one path. A commit
  encrypts one path secret per filtered-direct-path node (about ten HPKE
  seals) and signs; the largest part of its time goes to the signed
  GroupInfo it returns for the server (the ~300 KB ratchet tree, whose node
  encodings are cached, copied into it, and Ed25519 hashing the whole
  GroupInfo twice with SHA-512). CPU profile of
  \`UpdateCommit/populated/n=1000\` (cumulative time and share of the
  commit, setup excluded):

\`\`\`
$profile
\`\`\`

- Fresh tree: the last member's first commit encrypts its path secrets to
  the creator's path node at the top of its copath and to every other leaf
  of its own side of the tree (36 ciphertexts at 100 members, 488 at 1 000:
  the benchmark's path-cts), so it grows linearly with n
  (one HPKE seal, ~80 µs, per recipient); after each member has committed once
  the tree is populated and commits are logarithmic.
- CreateAddAll and the Welcome: one KeyPackage verification (two Ed25519
  verifications), one leaf validation and one HPKE seal per added member.
  RFC 9420 makes the encrypted GroupInfo (which carries the whole tree) the
  HPKE info of every joiner's GroupSecrets; the Welcome runs the HPKE key
  schedule itself with that info hashed once (\`hpkebatch.go\`), which
  keeps it linear in n (hashing it per joiner through circl's API was
  quadratic: 204 MB and 0.4 s of CPU for 1000 members before, 23 MB and
  0.21 s after).
- JoinWelcome: validating the whole tree (every leaf signature, every
  parent hash with its resolution) is linear in n (~one Ed25519
  verification per member).
MD
)

# Replace the section (from its header to the next "## " or the end),
# keeping the "### " subsections other than its own "What dominates"
# (added by hand for other measurements: they stay, after the new table).
SECTION="$section" awk '
BEGIN { skip=0; done=0; section=ENVIRON["SECTION"] }
/^## / {
	if ($0 == "## MLS groups") { print section; print ""; skip=1; done=1; next }
	if (skip) skip=0
}
/^### / && skip && $0 != "### What dominates" { skip=0 }
!skip { print }
END { if (!done) { print ""; print section } }
' "$DOC" >"$tmp/doc.md"
mv "$tmp/doc.md" "$DOC"
echo "bench-mls: updated $DOC" >&2
