#!/usr/bin/env bash
# Compare two `make release` outputs built from one commit with the same
# keys: every published file must be byte-identical, except .rpm packages,
# whose GPG signature header holds a signing time; those must have the same
# signed header and payload digests. Exit 1 on any difference.
#
#   scripts/compare-releases.sh DIST_A DIST_B
set -euo pipefail
a=$1 b=$2
status=0
for f in "$a"/*; do
	[ -f "$f" ] || continue
	n=$(basename "$f")
	if [ ! -f "$b/$n" ]; then
		echo "only in $a: $n"; status=1; continue
	fi
	case "$n" in
	*.rpm | *.rpm.minisig | SHA256SUMS | SHA256SUMS.minisig)
		;; # compared below
	*)
		cmp -s "$f" "$b/$n" || { echo "differs: $n"; status=1; }
		;;
	esac
done
for f in "$a"/*.rpm; do
	n=$(basename "$f")
	qa=$(rpm -qp --qf '%{SHA256HEADER} %{PAYLOADDIGEST}\n' "$f" 2>/dev/null)
	qb=$(rpm -qp --qf '%{SHA256HEADER} %{PAYLOADDIGEST}\n' "$b/$n" 2>/dev/null)
	[ "$qa" = "$qb" ] || { echo "differs: $n (header or payload)"; status=1; }
done
# SHA256SUMS may differ only in the .rpm lines.
diff <(grep -v '\.rpm$' "$a/SHA256SUMS") <(grep -v '\.rpm$' "$b/SHA256SUMS") || status=1
[ $status = 0 ] && echo "reproducible: $(ls "$a" | wc -l) files compared"
exit $status
