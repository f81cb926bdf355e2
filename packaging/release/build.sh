#!/usr/bin/env bash
# Release build: static, reproducible binaries for every arch in RELEASE_ARCHES,
# CycloneDX SBOMs, .deb/.rpm/.ipk packages, SHA256SUMS and minisign signatures
# in $DIST. `make release` and `make sbom` call this; docs/release.md explains it.
#
#   build.sh release   everything
#   build.sh sbom      SBOMs only
#
# Inputs (environment):
#   SOURCE_DATE_EPOCH  build time for ldflags, SBOMs, package mtimes, signatures
#                      (default: the commit's time)
#   VERSION COMMIT     version strings (default: git describe / rev-parse)
#   RELEASE_ARCHES     default "amd64 arm64"
#   RELEASE_REF        commit to build (default HEAD); the build runs in a clean
#                      checkout of it, so uncommitted changes never ship.
#                      RELEASE_REF=worktree builds the working tree as it is.
#   QPC_PACKAGE_SIGNING_KEY  armored GPG secret key (no passphrase, or
#                      NFPM_RPM_PASSPHRASE) that signs the .rpm packages and
#                      the apt and yum repositories in $DIST/repo; unset: a
#                      throwaway key, with a warning (QPC_RELEASE_REQUIRE_KEY=1: error).
#   QPC_RELEASE_KEY    minisign secret key file; QPC_RELEASE_KEY_PASSWORD if encrypted.
#                      Unset: a throwaway development key is made (never publish
#                      such a build); QPC_RELEASE_REQUIRE_KEY=1 makes that an error.
#   DIST               output directory (default dist)
set -euo pipefail

mode=${1:-release}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

GO=${GO:-go}
DIST=${DIST:-dist}
mkdir -p "$DIST"
DIST=$(cd "$DIST" && pwd)
RELEASE_ARCHES=${RELEASE_ARCHES:-amd64 arm64}
RELEASE_REF=${RELEASE_REF:-HEAD}
PKG=github.com/quicprochat/quicprochat
# netgo/osusergo: no glibc NSS at run time, so the static binaries run on any
# Linux, including musl-based OpenWrt. go-sqlcipher never loads extensions.
TAGS=netgo,osusergo,sqlite_omit_load_extension

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'release: %s\n' "$*" >&2; exit 1; }

# --- source tree -----------------------------------------------------------
src=$root
if [ "$RELEASE_REF" != worktree ] && git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
	commit_full=$(git -C "$root" rev-parse --verify "$RELEASE_REF^{commit}") || die "RELEASE_REF $RELEASE_REF is not a commit"
	src=$DIST/build/src
	rm -rf "$src"
	# A local clone: nothing in this repository changes, and the tree holds
	# exactly the commit. (cyclonedx-gomod reads the clone's git metadata for
	# the main module's version; its git library does not follow alternates,
	# so no --shared.)
	git clone --quiet --no-checkout "$root" "$src"
	git -C "$src" -c advice.detachedHead=false checkout --quiet --detach "$commit_full"
	: "${COMMIT:=$(git -C "$root" rev-parse --short "$commit_full")}"
	: "${VERSION:=$(git -C "$root" describe --tags --always "$commit_full")}"
	: "${SOURCE_DATE_EPOCH:=$(git -C "$root" log -1 --format=%ct "$commit_full")}"
	log "building $RELEASE_REF ($COMMIT) from a clean checkout in $src"
else
	: "${COMMIT:=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
	: "${VERSION:=$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)}"
	: "${SOURCE_DATE_EPOCH:=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"
	log "building the working tree as it is"
fi
export SOURCE_DATE_EPOCH
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

# Package version: the tag without "v", or a sortable development version.
case "$VERSION" in
v[0-9]*.*.* | [0-9]*.*.*) PKG_VERSION=${VERSION#v} ;;
*)
	PKG_VERSION=0.0.0-dev.$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).$COMMIT
	# An untagged build: the binaries report the package version, so
	# `qpcd version` and the package manager name the same build.
	VERSION=$PKG_VERSION
	;;
esac

cmds=()
for c in qpcd qpcctl qpc; do
	[ -d "$src/cmd/$c" ] && cmds+=("$c")
done
log "version $VERSION (package $PKG_VERSION), commit $COMMIT, date $DATE, binaries: ${cmds[*]}"

host_arch=$($GO env GOHOSTARCH)
cc_for() {
	if [ "$1" = "$host_arch" ]; then echo "${CC:-gcc}"; return; fi
	case "$1" in
	arm64) echo aarch64-linux-gnu-gcc ;;
	amd64) echo x86_64-linux-gnu-gcc ;;
	*) die "no C cross compiler known for $1 (supported: amd64 arm64)" ;;
	esac
}
ipk_arches() {
	case "$1" in
	amd64) echo x86_64 ;;
	arm64) echo aarch64_generic aarch64_cortex-a53 aarch64_cortex-a72 ;;
	esac
}

tools=$DIST/build/tools
mkdir -p "$tools"
# Host builds of the helper and of the Go tool dependencies (`go tool X`
# would build X for the target GOARCH set below).
(cd "$src" && CGO_ENABLED=0 $GO build -trimpath -o "$tools/" ./cmd/qpc-release \
	github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod github.com/goreleaser/nfpm/v2/cmd/nfpm)
qpc_release=$tools/qpc-release
cyclonedx_gomod=$tools/cyclonedx-gomod
nfpm=$tools/nfpm

# --- SBOMs -----------------------------------------------------------------
sboms() {
	local arch=$1 c out
	for c in "${cmds[@]}"; do
		out=$DIST/build/${c}_linux_${arch}.gomod.cdx.json
		log "SBOM $c linux/$arch"
		(cd "$src" && GOOS=linux GOARCH=$arch CGO_ENABLED=1 CC=$(cc_for "$arch") GOFLAGS="-tags=$TAGS -trimpath -buildvcs=false" \
			"$cyclonedx_gomod" app -json -licenses -assert-licenses -std -noserial \
			-main "cmd/$c" -output "$out" . 2>"$DIST/build/cyclonedx-$c-$arch.log") ||
			{ cat "$DIST/build/cyclonedx-$c-$arch.log" >&2; die "cyclonedx-gomod failed for $c $arch"; }
		(cd "$src" && "$qpc_release" sbom --in "$out" --out "$DIST/${c}_${PKG_VERSION}_linux_${arch}.cdx.json" --epoch "$SOURCE_DATE_EPOCH" --version "$VERSION")
	done
}

if [ "$mode" = sbom ]; then
	for arch in $RELEASE_ARCHES; do sboms "$arch"; done
	exit 0
fi
[ "$mode" = release ] || die "unknown mode $mode (release or sbom)"

# Only this build's files may be published from $DIST: drop earlier ones
# (dist/build, with a development key if one was made, stays).
find "$DIST" -maxdepth 1 -type f -delete

# --- signing key -------------------------------------------------------------
key=${QPC_RELEASE_KEY:-}
if [ -z "$key" ]; then
	[ "${QPC_RELEASE_REQUIRE_KEY:-0}" = 1 ] && die "QPC_RELEASE_KEY is not set (QPC_RELEASE_REQUIRE_KEY=1)"
	key=$DIST/build/dev-key/release.key
	if [ ! -f "$key" ]; then
		mkdir -p "$(dirname "$key")"
		QPC_RELEASE_KEY_PASSWORD='' "$qpc_release" keygen --secret "$key" --public "$DIST/build/dev-key/minisign.pub" >&2
	fi
	export QPC_RELEASE_KEY_PASSWORD=''
	log "WARNING: no QPC_RELEASE_KEY: signing with the throwaway development key $key; do not publish this build"
fi
"$qpc_release" pubkey --key "$key" --out "$DIST/minisign.pub"
published=$src/packaging/release/minisign.pub
if [ -n "${QPC_RELEASE_KEY:-}" ] && [ -f "$published" ] &&
	[ "$(tail -n1 "$published")" != "$(tail -n1 "$DIST/minisign.pub")" ]; then
	die "QPC_RELEASE_KEY does not match the published key packaging/release/minisign.pub"
fi

# --- changelog, man pages ------------------------------------------------------
# Package release 1: the .deb is then non-native (changelog.Debian.gz) and
# the .rpm's Release is 1, as in packaging/nfpm*.yaml.
prev_tag=$(git -C "$src" describe --tags --abbrev=0 HEAD^ 2>/dev/null || true)
if [ -n "$prev_tag" ]; then
	git -C "$src" log --no-merges --format='%h %s' "$prev_tag..HEAD" >"$DIST/build/gitlog.txt"
else
	git -C "$src" log --no-merges --format='%h %s' -n 50 HEAD >"$DIST/build/gitlog.txt" 2>/dev/null || : >"$DIST/build/gitlog.txt"
fi
# nfpm writes a pre-release's "-" as "~" in both package formats.
"$qpc_release" changelog --version "${PKG_VERSION/-/\~}-1" --epoch "$SOURCE_DATE_EPOCH" \
	--git-log "$DIST/build/gitlog.txt" --out "$DIST/build/changelog.yml" >&2
man_dir=$DIST/build/man
rm -rf "$man_dir" && mkdir -p "$man_dir"
for page in "$src"/packaging/man/*.1; do
	gzip -9n -c "$page" >"$man_dir/$(basename "$page").gz"
done
# nfpm does not expand variables in `changelog`: package from copies of the
# configurations that name this build's changelog.
for cfg in nfpm.yaml nfpm-qpc.yaml; do
	[ -f "$src/packaging/$cfg" ] || continue
	{ cat "$src/packaging/$cfg"; printf '\nchangelog: %s\n' "$DIST/build/changelog.yml"; } >"$DIST/build/$cfg"
done
rpm_key=${QPC_PACKAGE_SIGNING_KEY:-}
if [ -z "$rpm_key" ]; then
	[ "${QPC_RELEASE_REQUIRE_KEY:-0}" = 1 ] && die "QPC_PACKAGE_SIGNING_KEY is not set (QPC_RELEASE_REQUIRE_KEY=1)"
	# Like the minisign key: a throwaway GPG key, so a dry run's packages
	# and repositories are signed the way a release's are (never publish them).
	rpm_key=$DIST/build/dev-key/package-signing.asc
	if [ ! -f "$rpm_key" ]; then
		command -v gpg >/dev/null || die "gpg is needed for the throwaway package signing key (apt install gpg), or set QPC_PACKAGE_SIGNING_KEY"
		gh=$(mktemp -d)
		gpg --homedir "$gh" --batch --passphrase '' --quick-gen-key "quicprochat development build (do not trust) <dev@quicprochat.invalid>" rsa3072 sign 30d 2>/dev/null
		mkdir -p "$(dirname "$rpm_key")"
		(umask 077 && gpg --homedir "$gh" --batch --armor --export-secret-keys >"$rpm_key")
		rm -rf "$gh"
	fi
	export NFPM_RPM_PASSPHRASE=''
	log "WARNING: no QPC_PACKAGE_SIGNING_KEY: packages and repositories are signed with the throwaway key $rpm_key"
fi

# --- binaries, SBOMs, packages ----------------------------------------------
artifacts=()
for arch in $RELEASE_ARCHES; do
	cc=$(cc_for "$arch")
	command -v "$cc" >/dev/null || die "C compiler $cc for $arch missing (make deps-release installs it)"
	bin=$DIST/build/linux_$arch
	mkdir -p "$bin"
	for c in "${cmds[@]}"; do
		log "build $c linux/$arch (CC=$cc)"
		(cd "$src" && GOOS=linux GOARCH=$arch CGO_ENABLED=1 CC=$cc \
			$GO build -trimpath -buildvcs=false -tags "$TAGS" \
			-ldflags "-s -w -X $PKG/internal/version.Version=$VERSION -X $PKG/internal/version.Commit=$COMMIT -X $PKG/internal/version.Date=$DATE -linkmode external -extldflags=-static" \
			-o "$bin/$c" "./cmd/$c")
		cp "$bin/$c" "$DIST/${c}_${PKG_VERSION}_linux_${arch}"
		artifacts+=("${c}_${PKG_VERSION}_linux_${arch}")
	done
	sboms "$arch"
	for c in "${cmds[@]}"; do artifacts+=("${c}_${PKG_VERSION}_linux_${arch}.cdx.json"); done

	pkgs=()
	for p in deb rpm; do pkgs+=("$p:$arch"); done
	for a in $(ipk_arches "$arch"); do pkgs+=("ipk:$a"); done
	for pa in "${pkgs[@]}"; do
		p=${pa%%:*} a=${pa#*:}
		for cfg in nfpm.yaml nfpm-qpc.yaml; do
			[ -f "$src/packaging/$cfg" ] || continue
			[ "$cfg" = nfpm-qpc.yaml ] && { [ -x "$bin/qpc" ] || continue; [ "$p" = ipk ] && continue; }
			out=$(cd "$src" && PKG_VERSION=$PKG_VERSION PKG_ARCH=$a BIN_DIR=$bin DIST_DIR=$DIST MAN_DIR=$man_dir \
				RPM_SIGNING_KEY=$rpm_key "$nfpm" pkg --config "$DIST/build/$cfg" --packager "$p" --target "$DIST/" 2>&1) ||
				{ echo "$out" >&2; die "nfpm $p $a failed"; }
			f=$(printf '%s\n' "$out" | sed -n 's|^created package: ||p')
			[ -n "$f" ] || { echo "$out" >&2; die "nfpm did not report its package"; }
			artifacts+=("$(basename "$f")")
			log "package $(basename "$f")"
		done
	done
done
artifacts+=(minisign.pub)

# --- signed apt and yum repositories (not in SHA256SUMS: they carry their own
# GPG signatures over the same packages) ---------------------------------------
gnupg=$(mktemp -d)
GNUPGHOME=$gnupg gpg --batch --import "$rpm_key" 2>/dev/null
GNUPGHOME=$gnupg "$src/packaging/release/repos.sh" "$DIST" "$DIST/repo" >&2
rm -rf "$gnupg"

# --- checksums and signatures -------------------------------------------------
cd "$DIST"
sha256sum "${artifacts[@]}" >SHA256SUMS
signed=("${artifacts[@]}" SHA256SUMS)
"$qpc_release" sign --key "$key" --epoch "$SOURCE_DATE_EPOCH" "${signed[@]}" >/dev/null
"$qpc_release" verify --pubkey minisign.pub "${signed[@]}" >/dev/null || die "a signature just made does not verify"
printf '%s\n' "${signed[@]}" | sed 's/$/.minisig/' >"$DIST/build/signatures.txt"
log "done: ${#signed[@]} files signed with key $(sed -n 's/^untrusted comment: minisign public key //p' minisign.pub) in $DIST"
printf '%s\n' "${signed[@]}"
