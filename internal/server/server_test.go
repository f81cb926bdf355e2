package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func TestPingOverTLS13(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	var resp qpcv1.PingResponse
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{Echo: "hello"}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.GetEcho() != "hello" || resp.GetProtocolVersion() != wire.ProtocolVersion {
		t.Fatalf("unexpected reply %v", &resp)
	}
	st := c.Conn().ConnectionState().TLS
	if st.Version != tls.VersionTLS13 {
		t.Fatalf("negotiated TLS version %#x, want TLS 1.3", st.Version)
	}
	if st.NegotiatedProtocol != transport.ALPN {
		t.Fatalf("ALPN %q", st.NegotiatedProtocol)
	}
	// The server counts the RPC after writing the reply, so wait for it.
	waitFor(t, 5*time.Second, "the Ping to be counted", func() bool {
		return testutil.ToFloat64(ts.metrics.RPCs.WithLabelValues(MethodPing, "ok")) == 1
	})
}

func TestWrongALPNRefusedAtHandshake(t *testing.T) {
	ts := startServer(t, testConfig(t))
	_, err := transport.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{PinSHA256: ts.CertFingerprint(), ALPN: "h3"})
	var te *quic.TransportError
	if !errors.As(err, &te) || !strings.Contains(strings.ToLower(err.Error()), "application protocol") {
		t.Fatalf("want a handshake failure for ALPN h3, got %v", err)
	}
	if !te.ErrorCode.IsCryptoError() {
		t.Fatalf("want a TLS alert, got %v", te)
	}
}

func TestPinMismatchNamesBothFingerprints(t *testing.T) {
	ts := startServer(t, testConfig(t))
	wrong := strings.Repeat("ab", 32)
	_, err := transport.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{PinSHA256: wrong})
	if !errors.Is(err, transport.ErrPinMismatch) || !strings.Contains(err.Error(), ts.CertFingerprint()) || !strings.Contains(err.Error(), wrong) {
		t.Fatalf("got %v", err)
	}
}

func TestOversizedFrameRefusedWithoutAllocating(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := c.DoFrame(ctxT(t), binary.BigEndian.AppendUint32(nil, 1<<30))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != qpcv1.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(resp.GetMessage(), "cap") {
		t.Fatalf("got %v %q", resp.GetStatus(), resp.GetMessage())
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Fatalf("a 1 GiB announcement made the process allocate %d bytes", grew)
	}
	if got := testutil.ToFloat64(ts.metrics.FramesRejected.WithLabelValues("oversized")); got != 1 {
		t.Fatalf("frames_rejected{oversized} = %v", got)
	}
	// The connection is still usable.
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{}); err != nil {
		t.Fatal(err)
	}
}

func TestPayloadCapAppliesToBody(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxPayloadBytes = 1024
	ts := startServer(t, cfg)
	c := ts.dial(t)
	resp, err := c.Do(ctxT(t), &qpcv1.Request{Version: wire.ProtocolVersion, Method: MethodPing, Body: make([]byte, 1024+envelopeOverhead+1)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != qpcv1.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("got %v", resp.GetStatus())
	}
}

func TestUnknownVersionRefused(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	// The body is not a valid PingRequest: the version check must come first.
	resp, err := c.Do(ctxT(t), &qpcv1.Request{Version: 99, Method: MethodPing, RequestId: 5, Body: []byte{0xff, 0xff}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != qpcv1.Status_STATUS_UNSUPPORTED_VERSION || resp.GetRequestId() != 5 {
		t.Fatalf("got %v id=%d %q", resp.GetStatus(), resp.GetRequestId(), resp.GetMessage())
	}
}

func TestMalformedProtobufRefused(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	cases := map[string][]byte{
		"garbage envelope": wire.AppendFrame(nil, []byte{0xff, 0xff, 0xff, 0xff}),
		"empty frame":      {0, 0, 0, 0},
		"truncated frame":  append(binary.BigEndian.AppendUint32(nil, 100), 1, 2, 3),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			resp := exchangeThenFIN(t, c, raw)
			if resp.GetStatus() != qpcv1.Status_STATUS_INVALID_ARGUMENT {
				t.Fatalf("got %v %q", resp.GetStatus(), resp.GetMessage())
			}
		})
	}
	t.Run("garbage body", func(t *testing.T) {
		resp, err := c.Do(ctxT(t), &qpcv1.Request{Version: wire.ProtocolVersion, Method: MethodPing, Body: []byte{0x0a, 0x50}})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != qpcv1.Status_STATUS_INVALID_ARGUMENT {
			t.Fatalf("got %v %q", resp.GetStatus(), resp.GetMessage())
		}
	})
	t.Run("unknown method", func(t *testing.T) {
		resp, err := c.Do(ctxT(t), &qpcv1.Request{Version: wire.ProtocolVersion, Method: "Nope"})
		if err != nil || resp.GetStatus() != qpcv1.Status_STATUS_NOT_FOUND {
			t.Fatalf("got %v %v", resp.GetStatus(), err)
		}
	})
}

func TestConnectionLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxConnections = 2
	ts := startServer(t, cfg)
	for i := 0; i < 2; i++ {
		if err := ts.dial(t).Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	third, err := transport.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{PinSHA256: ts.CertFingerprint()})
	if err == nil {
		defer third.CloseWithError(0, "")
		select {
		case <-third.Context().Done():
			err = context.Cause(third.Context())
		case <-time.After(10 * time.Second):
			t.Fatal("third connection was not closed")
		}
	}
	if !transport.IsConnectionLimit(err) {
		t.Fatalf("want connection-limit close, got %v", err)
	}
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !strings.Contains(ae.ErrorMessage, "connection limit (2)") {
		t.Fatalf("close reason not clear: %v", err)
	}
	if got := testutil.ToFloat64(ts.metrics.ConnectionsTotal.WithLabelValues("rejected_limit")); got != 1 {
		t.Fatalf("rejected_limit = %v", got)
	}
}

func TestDrain(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.LongPollMax = 10 * time.Second
	ts := startServer(t, cfg)
	c := ts.dial(t)

	inflight := make(chan error, 1)
	go func() {
		var resp qpcv1.PingResponse
		inflight <- c.Call(context.Background(), MethodPing, "", &qpcv1.PingRequest{Echo: "held", HoldMs: 1500}, &resp)
	}()
	waitFor(t, 10*time.Second, "the held RPC to be in flight", func() bool { return testutil.ToFloat64(ts.metrics.InFlight) == 1 })

	ts.cancel() // what SIGTERM does in qpcd
	waitFor(t, 10*time.Second, "/readyz to turn unready", func() bool { return ts.httpStatus("/readyz") != http.StatusOK })

	err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{})
	if wire.Code(err) != qpcv1.Status_STATUS_DRAINING {
		t.Fatalf("new RPC during drain: want DRAINING, got %v", err)
	}
	if err := <-inflight; err != nil {
		t.Fatalf("in-flight RPC did not complete: %v", err)
	}
	select {
	case <-c.Conn().Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after drain")
	}
	if cause := context.Cause(c.Conn().Context()); !transport.IsDraining(cause) {
		t.Fatalf("client did not see the draining code: %v", cause)
	}
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{}); wire.Code(err) != qpcv1.Status_STATUS_DRAINING || !rpcclient.IsRetryable(err) {
		t.Fatalf("call on drained connection: %v", err)
	}
	if err := ts.stop(t); err != nil {
		t.Fatalf("Run returned %v after a clean drain", err)
	}
}

func TestWrongDatabaseKeyLeavesFileUntouched(t *testing.T) {
	storetest.SQLCipherOnly(t, "the SQLCipher file and its key")
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	if err := ts.stop(t); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "qpcd.db")
	before := hashFile(t, dbPath)

	bad := cfg
	key, _ := secret.FromHex(strings.Repeat("42", 32), 32)
	bad.DB.Key = key
	_, err := New(context.Background(), Options{Config: bad})
	if !errors.Is(err, store.ErrWrongKey) {
		t.Fatalf("want ErrWrongKey, got %v", err)
	}
	if strings.Contains(err.Error(), strings.Repeat("42", 32)) {
		t.Fatal("error leaks the key")
	}
	if after := hashFile(t, dbPath); !bytes.Equal(before, after) {
		t.Fatal("database file changed after a failed open")
	}
	// And the right key still opens it.
	startServer(t, cfg)
}

func hashFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return sum[:]
}

// exchangeThenFIN writes raw bytes, ends the stream, and reads the reply: what
// a client that sent a short or broken frame looks like to the server.
func exchangeThenFIN(t *testing.T, c *rpcclient.Client, raw []byte) *qpcv1.Response {
	t.Helper()
	s, err := c.Conn().OpenStreamSync(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := s.Write(raw); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	frame, err := wire.ReadFrame(s, wire.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := wire.DecodeResponse(frame)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// A client of the first protocol revision sends its FIN only after reading
// the reply: it is still answered, and the streams it completes this way do
// not use up its stream credit (more calls than MaxStreamsPerConn succeed).
func TestClientFINAfterReplyStillServed(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxStreamsPerConn = 4
	ts := startServer(t, cfg)
	c := ts.dial(t)
	body, err := wire.Marshal(&qpcv1.PingRequest{Echo: "late fin"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * cfg.Limits.MaxStreamsPerConn {
		env, err := wire.Marshal(&qpcv1.Request{Version: wire.ProtocolVersion, Method: MethodPing, RequestId: uint64(i + 1), Body: body})
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.Conn().OpenStreamSync(ctxT(t))
		if err != nil {
			t.Fatalf("call %d: open stream: %v", i, err)
		}
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := s.Write(wire.AppendFrame(nil, env)); err != nil {
			t.Fatal(err)
		}
		frame, err := wire.ReadFrame(s, wire.DefaultMaxFrame)
		if err != nil {
			t.Fatalf("call %d: reply before the FIN: %v", i, err)
		}
		resp, err := wire.DecodeResponse(frame)
		if err != nil || resp.GetStatus() != qpcv1.Status_STATUS_OK {
			t.Fatalf("call %d: %v %v", i, resp.GetStatus(), err)
		}
		_ = s.Close() // the late FIN
	}
}
