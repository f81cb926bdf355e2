#!/usr/bin/env bash
# Signed package repositories from a release's packages: an apt repository
# (Release, InRelease, Release.gpg from apt-ftparchive, signed with GPG) and
# a yum/dnf repository (createrepo_c; repomd.xml.asc), plus the public key
# and a .repo file. build.sh calls it; packaging/repo_test.go tests it.
#
#   repos.sh DIST OUT
#
# DIST holds the .deb and .rpm files; OUT receives apt/ and yum/. The GPG
# signing key is the default secret key of $GNUPGHOME (build.sh imports
# QPC_PACKAGE_SIGNING_KEY there). Needs apt-ftparchive (apt-utils),
# createrepo_c (createrepo-c) and gpg.
set -euo pipefail
dist=$1 out=$2
die() { printf 'repos: %s\n' "$*" >&2; exit 1; }
for t in apt-ftparchive createrepo_c gpg; do
	command -v "$t" >/dev/null || die "$t is missing (Debian packages apt-utils, createrepo-c, gpg)"
done
fpr=$(gpg --batch --with-colons --list-secret-keys | awk -F: '$1=="fpr"{print $10; exit}')
[ -n "$fpr" ] || die "no GPG secret key in ${GNUPGHOME:-~/.gnupg}"
rm -rf "$out/apt" "$out/yum"

# --- apt ---------------------------------------------------------------------
apt=$out/apt
mkdir -p "$apt/pool/main"
shopt -s nullglob
debs=("$dist"/*.deb)
[ ${#debs[@]} -gt 0 ] || die "no .deb in $dist"
cp "${debs[@]}" "$apt/pool/main/"
arches=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Architecture; done | sort -u)
for a in $arches; do
	dir=$apt/dists/stable/main/binary-$a
	mkdir -p "$dir"
	(cd "$apt" && apt-ftparchive --arch "$a" packages pool >"dists/stable/main/binary-$a/Packages")
	gzip -9n -k "$dir/Packages"
done
(cd "$apt/dists/stable" && apt-ftparchive \
	-o APT::FTPArchive::Release::Origin=quicprochat \
	-o APT::FTPArchive::Release::Label=quicprochat \
	-o APT::FTPArchive::Release::Suite=stable \
	-o APT::FTPArchive::Release::Codename=stable \
	-o APT::FTPArchive::Release::Components=main \
	-o "APT::FTPArchive::Release::Architectures=$(echo $arches)" \
	release . >Release.new && mv Release.new Release)
gpg --batch --yes --local-user "$fpr" --clearsign -o "$apt/dists/stable/InRelease" "$apt/dists/stable/Release"
gpg --batch --yes --local-user "$fpr" --detach-sign -o "$apt/dists/stable/Release.gpg" "$apt/dists/stable/Release"
gpg --batch --yes --export "$fpr" >"$apt/quicprochat-archive-keyring.gpg"

# --- yum/dnf -------------------------------------------------------------------
rpms=("$dist"/*.rpm)
[ ${#rpms[@]} -gt 0 ] || die "no .rpm in $dist"
for r in "${rpms[@]}"; do
	a=$(rpm -qp --qf '%{ARCH}' "$r" 2>/dev/null)
	mkdir -p "$out/yum/$a"
	cp "$r" "$out/yum/$a/"
done
for d in "$out"/yum/*/; do
	createrepo_c --quiet --simple-md-filenames --set-timestamp-to-revision --revision "${SOURCE_DATE_EPOCH:-0}" "$d"
	gpg --batch --yes --local-user "$fpr" --armor --detach-sign -o "$d/repodata/repomd.xml.asc" "$d/repodata/repomd.xml"
done
gpg --batch --yes --armor --export "$fpr" >"$out/yum/RPM-GPG-KEY-quicprochat"
cat >"$out/yum/quicprochat.repo" <<REPO
# /etc/yum.repos.d/quicprochat.repo: replace BASEURL with where the yum/
# directory of a release is published.
[quicprochat]
name=quicprochat
baseurl=BASEURL/\$basearch
enabled=1
gpgcheck=1
repo_gpgcheck=1
gpgkey=BASEURL/RPM-GPG-KEY-quicprochat
REPO
printf '%s\n' "apt: $apt (key $fpr)" "yum: $out/yum"
