#!/usr/bin/env bash
# Prints the full commit id of the previous release, the version this tree
# must stay compatible with (docs/release.md, "Compatibility with the
# previous release"):
#   1. QPC_COMPAT_REF when set (any tag or commit; for trying another base);
#   2. else the newest v* tag that is an ancestor of HEAD and not HEAD itself
#      (so on a release commit it is the release before);
#   3. else the tag or commit named in packaging/release/previous-release,
#      the documented baseline while no release tag exists. The release
#      process writes the new tag there at each release.
# Exit 1 with a reason when the named version is not in this clone (a
# shallow CI checkout needs fetch-depth: 0).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ -n "${QPC_COMPAT_REF:-}" ]; then
	ref=$QPC_COMPAT_REF
	how="QPC_COMPAT_REF"
else
	ref=$(git tag --merged HEAD --no-contains HEAD --list 'v*' --sort=-v:refname | head -n1)
	how="newest v* tag before HEAD"
	if [ -z "$ref" ]; then
		ref=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' packaging/release/previous-release | grep -v '^$' | head -n1)
		how="packaging/release/previous-release"
	fi
fi
[ -n "$ref" ] || { echo "previous-release: no v* tag before HEAD and packaging/release/previous-release names nothing" >&2; exit 1; }
commit=$(git rev-parse --verify --quiet "$ref^{commit}") ||
	{ echo "previous-release: $ref (from $how) is not a commit in this clone (a shallow clone? fetch the full history)" >&2; exit 1; }
git merge-base --is-ancestor "$commit" HEAD ||
	{ echo "previous-release: $ref (from $how) is not an ancestor of HEAD" >&2; exit 1; }
if [ "${1:-}" = "-v" ]; then
	echo "$commit $ref ($how)"
else
	echo "$commit"
fi
