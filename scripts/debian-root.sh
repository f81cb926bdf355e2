#!/usr/bin/env bash
# Prints the path of a cached Debian bookworm root file system (minbase),
# made once with debootstrap and kept as bin/debootstrap/bookworm-minbase.tar.gz
# for the package upgrade test (internal/compat TestPackageUpgrade). Needs
# root; installs debootstrap from Debian when missing. The mirror is
# QPC_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/bin/debootstrap/bookworm-minbase.tar.gz
if [ -s "$out" ]; then
	echo "$out"
	exit 0
fi
[ "$(id -u)" = 0 ] || { echo "debian-root: debootstrap needs root" >&2; exit 1; }
# debootstrap, and Debian's archive key (absent on Ubuntu) to check the mirror.
missing=""
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing="$missing debian-archive-keyring"
if [ -n "$missing" ]; then
	apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
fi
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$root/bin/debootstrap/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
begin=$(date +%s)
echo "debian-root: debootstrap --variant=minbase bookworm (once; log $work/../debootstrap.log)" >&2
debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg bookworm "$work/root" "${QPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
	>"$root/bin/debootstrap/debootstrap.log" 2>&1 ||
	{ tail -n 20 "$root/bin/debootstrap/debootstrap.log" >&2; echo "debian-root: debootstrap failed" >&2; exit 1; }
# Nothing of the host leaks in: no apt lists or package cache in the tarball.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar --numeric-owner -C "$work/root" -czf "$out.tmp" .
mv "$out.tmp" "$out"
echo "debian-root: made $out in $(($(date +%s) - begin))s" >&2
echo "$out"
