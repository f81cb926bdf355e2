package transport

import (
	"context"
	"crypto/tls"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// curveRecorder answers one request per stream and reports the key
// exchange group the server side of the connection negotiated.
type curveRecorder struct{ curves chan tls.CurveID }

func (r curveRecorder) ServeStream(ctx context.Context, c *Conn, s *quic.Stream) {
	_, _ = io.ReadAll(s)
	r.curves <- c.Q.ConnectionState().TLS.CurveID
	_, _ = s.Write([]byte("ok"))
	_ = s.Close()
	c.ReplySent()
}

// TestHandshakeNegotiatesX25519MLKEM768 pins the hybrid post-quantum key
// exchange of the QUIC handshake: qpcd's TLS configuration
// (CertStore.ServerTLSConfig) and the one qpc dials with (Dial, used by
// rpcclient) must agree on X25519MLKEM768, read from tls.ConnectionState on
// both ends, so a later change to either TLS configuration (curve
// preferences, a TLS library without it) cannot drop it silently
// (docs/threat-model.md, "Transport").
func TestHandshakeNegotiatesX25519MLKEM768(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := EnsureDevCertificate(certFile, keyFile, time.Now()); err != nil {
		t.Fatal(err)
	}
	cs, err := NewCertStore(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	rec := curveRecorder{curves: make(chan tls.CurveID, 1)}
	l, err := Listen(ListenerConfig{Addr: "127.0.0.1:0", TLS: cs.ServerTLSConfig()}, rec)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = l.Serve() }()
	t.Cleanup(func() { _ = l.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qc, err := Dial(ctx, l.Addr().String(), DialOptions{PinSHA256: cs.Fingerprint(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	if got := qc.ConnectionState().TLS.CurveID; got != tls.X25519MLKEM768 {
		t.Fatalf("client negotiated %v, want X25519MLKEM768", got)
	}
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = s.Write([]byte("hi"))
	_ = s.Close()
	if _, err := io.ReadAll(s); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-rec.curves:
		if got != tls.X25519MLKEM768 {
			t.Fatalf("server negotiated %v, want X25519MLKEM768", got)
		}
	case <-ctx.Done():
		t.Fatal("server never served the stream")
	}
}
