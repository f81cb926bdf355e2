#!/usr/bin/env bash
# Builds one version of quicprochat with that version's own release script
# and caches the result: bin/compat/<commit>/ holds qpcd, qpcctl and qpc
# (the static release binaries) and dist/ (that version's .deb, .rpm and
# .ipk for the host arch); the clone it is built from is removed afterwards.
# A complete cache is reused; QPC_COMPAT_REBUILD=1 rebuilds it (about 190 MB
# each; `make clean` removes them). Prints the directory.
#
#   scripts/compat-build.sh            the previous release (scripts/previous-release.sh)
#   scripts/compat-build.sh REF        any tag or commit (HEAD: this tree's last commit)
#
# Needs Go, gcc and glibc's static libraries (CGO: go-sqlcipher), like
# `make release`. The build of one version takes minutes; the log is
# bin/compat/<commit>/build.log.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ $# -ge 1 ]; then
	commit=$(git rev-parse --verify --quiet "$1^{commit}") || { echo "compat-build: $1 is not a commit" >&2; exit 1; }
else
	commit=$(scripts/previous-release.sh)
fi
short=$(git rev-parse --short=7 "$commit")
dir=$root/bin/compat/$short
arch=$(${GO:-go} env GOHOSTARCH)

if [ -f "$dir/.complete" ] && [ -z "${QPC_COMPAT_REBUILD:-}" ]; then
	echo "$dir"
	exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"
begin=$(date +%s)
echo "compat-build: building $short with its own packaging/release/build.sh (log: $dir/build.log)" >&2
# A local clone, not a worktree: nothing in this repository's metadata changes.
git clone --quiet --no-checkout "$root" "$dir/src"
git -C "$dir/src" -c advice.detachedHead=false checkout --quiet --detach "$commit"
if ! (cd "$dir/src" && env -u VERSION -u COMMIT -u SOURCE_DATE_EPOCH -u QPC_RELEASE_KEY -u QPC_PACKAGE_SIGNING_KEY \
	RELEASE_ARCHES="$arch" RELEASE_REF=HEAD DIST="$dir/dist" packaging/release/build.sh release) >"$dir/build.log" 2>&1; then
	tail -n 40 "$dir/build.log" >&2
	echo "compat-build: building $short failed (log: $dir/build.log)" >&2
	exit 1
fi
for c in qpcd qpcctl qpc; do
	f=$(ls "$dir/dist/${c}_"*"_linux_$arch" 2>/dev/null | head -n1)
	[ -n "$f" ] || { echo "compat-build: $short's release has no $c binary for $arch" >&2; exit 1; }
	cp "$f" "$dir/$c"
done
# Keep what the tests use (the binaries, the packages, the log): the
# intermediate files, the second clone and the repositories go.
rm -rf "$dir/dist/build" "$dir/dist/repo" "$dir/src"
echo "$short $commit built in $(($(date +%s) - begin))s" >"$dir/.complete"
echo "compat-build: $short built in $(($(date +%s) - begin))s" >&2
echo "$dir"
