// Package mls implements the Messaging Layer Security protocol (RFC 9420):
// wire structs and codec, cipher suites, key schedule, secret tree, message
// protection, KeyPackages, the ratchet tree and TreeKEM, proposals and
// commits, and the group state machine (Group), on the standard library,
// x/crypto and cloudflare/circl only.
//
// The package does no I/O and imports nothing else of quicprochat; see
// docs/mls.md for the layout, the Group API and its known limits.
package mls
