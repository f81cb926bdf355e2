// Package transport is qpc's QUIC layer: the TLS 1.3-only, ALPN "qpc"
// listener with connection limits and draining, certificate loading and
// reloading, development certificates, and the pinning dialer clients use.
package transport
