package transport

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

// echoOnce answers one request per stream with its own bytes, the way the
// RPC server does: reply, FIN, record the reply, read the client's FIN.
type echoOnce struct{ replied chan time.Time }

func (e echoOnce) ServeStream(ctx context.Context, c *Conn, s *quic.Stream) {
	b, err := io.ReadAll(s)
	if err != nil {
		s.CancelWrite(1)
		return
	}
	_, _ = s.Write(b)
	_ = s.Close()
	c.ReplySent()
	e.replied <- time.Now()
}

// A draining listener keeps a connection open for three probe timeouts
// after its last reply, so a reply packet lost just before the drain can
// still be retransmitted; a connection with no reply is closed at once.
func TestShutdownGivesTheLastReplyTimeToArrive(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := EnsureDevCertificate(certFile, keyFile, time.Now()); err != nil {
		t.Fatal(err)
	}
	cs, err := NewCertStore(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	h := echoOnce{replied: make(chan time.Time, 1)}
	l, err := Listen(ListenerConfig{Addr: "127.0.0.1:0", TLS: cs.ServerTLSConfig()}, h)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = l.Serve() }()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func() *quic.Conn {
		qc, err := Dial(ctx, l.Addr().String(), DialOptions{PinSHA256: cs.Fingerprint(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		return qc
	}
	busy, idle := dial(), dial()
	s, err := busy.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if got, err := io.ReadAll(s); err != nil || string(got) != "ping" {
		t.Fatalf("reply %q, %v", got, err)
	}
	replied := <-h.replied
	// Dial returns once the client's handshake is done; the listener admits
	// the connection a moment later (before that a shutdown refuses it).
	testutil.WaitFor(t, 10*time.Second, time.Millisecond, "the listener to admit both connections", func() bool { return l.Connections() == 2 })

	if err := l.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	closed := time.Now()
	// Loopback RTT is tiny, so the floor is 3 x (1 ms + max ack delay).
	if min := replied.Add(3 * (time.Millisecond + maxAckDelay)); closed.Before(min) {
		t.Fatalf("connection closed %v after its last reply, want at least %v", closed.Sub(replied), min.Sub(replied))
	}
	for name, qc := range map[string]*quic.Conn{"busy": busy, "idle": idle} {
		select {
		case <-qc.Context().Done():
		case <-ctx.Done():
			t.Fatalf("%s connection not closed", name)
		}
		if !IsDraining(context.Cause(qc.Context())) {
			t.Fatalf("%s connection: close cause %v, want the draining code", name, context.Cause(qc.Context()))
		}
	}
}
