// Package mls implements the Messaging Layer Security protocol (RFC 9420):
// its wire structs and codec, cipher suites, key schedule, secret tree and
// message protection, on the standard library and cloudflare/circl only.
//
// The package does no I/O and imports nothing else of quicprochat; see
// docs/mls.md for the layout and for what is not implemented yet.
package mls
