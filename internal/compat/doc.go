// Package compat checks that this tree works with the previous release
// (docs/release.md, "Compatibility with the previous release"): the old
// qpc against the new qpcd and the new qpc against the old qpcd through
// the whole client lifecycle, a database written by the old qpcd opened
// and migrated by the new one, and the upgrade of the old .deb package to
// the new one in a Debian root.
//
// The tests run real binaries: the new ones built from this tree, the old
// ones built by scripts/compat-build.sh with the old version's own release
// script and cached under bin/compat/<commit>/. `make compat` builds the
// cache and runs everything; `make package-upgrade-test` runs the package
// upgrade (root and debootstrap). Without a cache and without QPC_COMPAT
// the tests skip and say so.
package compat
