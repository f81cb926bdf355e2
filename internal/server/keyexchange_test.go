package server

import (
	"crypto/tls"
	"testing"
)

// TestQPCDHandshakeIsHybridPostQuantum: a real qpcd, dialled the way qpc
// dials (rpcclient), negotiates X25519MLKEM768. The server end is checked
// by internal/transport's TestHandshakeNegotiatesX25519MLKEM768 on the
// same TLS configuration qpcd serves with.
func TestQPCDHandshakeIsHybridPostQuantum(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	if got := c.Conn().ConnectionState().TLS.CurveID; got != tls.X25519MLKEM768 {
		t.Fatalf("qpc <-> qpcd negotiated %v, want X25519MLKEM768", got)
	}
}
