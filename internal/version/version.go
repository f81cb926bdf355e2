// Package version carries the build's version, commit and date, set at link
// time with -ldflags "-X github.com/quicprochat/quicprochat/internal/version.Version=...".
package version

import "runtime"

// Set by the linker; the defaults describe an untagged developer build.
var (
	Version = "0.0.0-dev"
	Commit  = "unknown"
	Date    = "unknown"
)

// FaultReadyz exists only for release drills (the canary end-to-end test in
// cmd/qpcctl): a build linked with
// -X github.com/quicprochat/quicprochat/internal/version.FaultReadyz=1 keeps
// /readyz unready forever, so `qpcctl release canary` must roll it back. It
// is empty in every real build (make, packaging/release/build.sh never set
// it); TestFaultReadyzEmptyByDefault checks the default.
var FaultReadyz = ""

// GoVersion is the toolchain that built the binary.
func GoVersion() string { return runtime.Version() }

// String is the one-line form printed by `version` commands.
func String() string {
	return Version + " (commit " + Commit + ", built " + Date + ", " + runtime.Version() + ")"
}
