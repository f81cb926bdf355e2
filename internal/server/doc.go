// Package server wires qpcd together: it opens the data directory and
// store, serves RPCs over the QUIC transport with authentication, rate
// limits and metrics, exposes the ops endpoints, and drains on shutdown.
package server
