// Package wire is qpc's on-the-wire format: length-prefixed frames carrying
// Protobuf envelopes (generated in qpcv1 from proto/qpc/v1), the typed status
// errors they carry, and the schema-driven validation every message passes
// before a handler sees it.
package wire

//go:generate make -C ../.. proto
