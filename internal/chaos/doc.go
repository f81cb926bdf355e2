// Package chaos is the reliability suite: crash, network-fault, bad-input
// and soak scenarios run against the real qpcd and qpc binaries over real
// QUIC on loopback, on every storage backend (docs/reliability.md).
//
// The scenarios are tests (TestChaos*, TestSoak); this file only names the
// package. `make chaos-short` (part of `make test`) runs the short mode,
// `make chaos` the long one (QPC_CHAOS=long), `make soak DURATION=10m` the
// soak.
package chaos
