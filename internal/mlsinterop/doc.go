// Package mlsinterop implements the MLSClient gRPC service of the MLS
// interop harness (mlswg/mls-implementations) on top of internal/mls, for
// cmd/qpc-mls-interop.
package mlsinterop
