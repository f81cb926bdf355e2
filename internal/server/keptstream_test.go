package server

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// rawCall writes one request envelope on s (without closing it) and reads
// the response frame.
func rawCall(t *testing.T, s *quic.Stream, req *qpcv1.Request) *qpcv1.Response {
	t.Helper()
	frame, err := wire.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(wire.AppendFrame(nil, frame)); err != nil {
		t.Fatalf("write %s: %v", req.GetMethod(), err)
	}
	raw, err := wire.ReadFrame(s, 1<<20)
	if err != nil {
		t.Fatalf("read the reply to %s: %v", req.GetMethod(), err)
	}
	resp, err := wire.DecodeResponse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func pingOn(t *testing.T, s *quic.Stream, echo string, keep bool) *qpcv1.Response {
	t.Helper()
	body, _ := wire.Marshal(&qpcv1.PingRequest{Echo: echo})
	resp := rawCall(t, s, &qpcv1.Request{Version: wire.ProtocolVersion, Method: MethodPing, RequestId: 7, Body: body, KeepStream: keep})
	var pong qpcv1.PingResponse
	if resp.GetStatus() != qpcv1.Status_STATUS_OK || wire.DecodeBody(resp.GetBody(), &pong) != nil || pong.GetEcho() != echo {
		t.Fatalf("Ping %q on a kept stream: %v", echo, resp)
	}
	return resp
}

// expectEOF reads s to its end: the server closed its side cleanly.
func expectEOF(t *testing.T, s *quic.Stream, what string) {
	t.Helper()
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	var one [1]byte
	if n, err := s.Read(one[:]); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("%s: read %d bytes, %v; want the server's FIN", what, n, err)
	}
}

// One stream carries several RPCs in turn when each asks to keep it; a
// request that does not ask ends it (the server answers and closes its
// side), as does the client's FIN between requests; an error status keeps
// the stream in step too.
func TestKeptStreamCarriesSeveralRPCs(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	ctx := ctxT(t)

	s, err := c.Conn().OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, echo := range []string{"one", "two", "three"} {
		if resp := pingOn(t, s, echo, true); !resp.GetStreamKept() {
			t.Fatalf("Ping %q asked to keep the stream; the reply says it was not kept", echo)
		}
	}
	// An unknown method is refused with a status, and the stream stays usable.
	if resp := rawCall(t, s, &qpcv1.Request{Version: wire.ProtocolVersion, Method: "NoSuchMethod", RequestId: 8, KeepStream: true}); resp.GetStatus() != qpcv1.Status_STATUS_NOT_FOUND || !resp.GetStreamKept() {
		t.Fatalf("unknown method on a kept stream: %v", resp)
	}
	if resp := pingOn(t, s, "last", false); resp.GetStreamKept() {
		t.Fatal("a request that did not ask to keep the stream was answered as kept")
	}
	expectEOF(t, s, "after a request without keep_stream")
	_ = s.Close()
	waitFor(t, 5*time.Second, "the five RPCs to be counted", func() bool {
		return testutil.ToFloat64(ts.metrics.RPCs.WithLabelValues(MethodPing, "ok")) == 4 &&
			testutil.ToFloat64(ts.metrics.RPCs.WithLabelValues("unknown", "not_found")) == 1
	})

	// The client's FIN between two requests ends a kept stream cleanly.
	s2, err := c.Conn().OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pingOn(t, s2, "before FIN", true)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	expectEOF(t, s2, "after the client's FIN on a kept stream")
	waitFor(t, 5*time.Second, "no RPC in flight", func() bool { return testutil.ToFloat64(ts.metrics.InFlight) == 0 })
}

// The client library keeps and reuses streams against a current server,
// and closes a kept stream it has not used for its idle time.
func TestClientReusesKeptStreams(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	c.SetStreamIdle(200 * time.Millisecond)
	for i := range 3 {
		var pong qpcv1.PingResponse
		if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{Echo: "x"}, &pong); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if !c.StreamsKept() || c.IdleStreams() != 1 {
		t.Fatalf("after 3 calls in turn: streams kept %v, %d idle; want one kept stream reused", c.StreamsKept(), c.IdleStreams())
	}
	waitFor(t, 5*time.Second, "the idle stream to be closed", func() bool { return c.IdleStreams() == 0 })
	var pong qpcv1.PingResponse
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{Echo: "again"}, &pong); err != nil || pong.GetEcho() != "again" {
		t.Fatalf("call after the idle stream closed: %v", err)
	}
}

// A kept stream waiting for its next request is not an RPC in flight: a
// drain finishes without waiting for it (Run returns no error, which it
// would after cutting off in-flight streams at limits.drain_timeout), and
// the client sees the draining close.
func TestKeptStreamDoesNotHoldADrain(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.DrainTimeout = 20 * time.Second
	ts := startServer(t, cfg)
	c := ts.dial(t)
	c.SetStreamIdle(time.Hour)
	var pong qpcv1.PingResponse
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{Echo: "x"}, &pong); err != nil {
		t.Fatal(err)
	}
	if c.IdleStreams() != 1 {
		t.Fatalf("%d idle kept streams, want 1", c.IdleStreams())
	}
	waitFor(t, 5*time.Second, "no RPC in flight", func() bool { return testutil.ToFloat64(ts.metrics.InFlight) == 0 })
	began := time.Now()
	if err := ts.stop(t); err != nil {
		t.Fatalf("drain with an idle kept stream: Run returned %v after %v", err, time.Since(began))
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("drain took %v with only an idle kept stream open", took)
	}
	select {
	case <-c.Conn().Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after the drain")
	}
	if cause := context.Cause(c.Conn().Context()); !transport.IsDraining(cause) {
		t.Fatalf("client saw %v, want the draining close", cause)
	}
}

// A kept stream waiting for its next request does not hold the connection
// open: with nothing in flight the idle rule closes it, though the
// client's keep-alives keep QUIC's own idle timer from firing.
func TestKeptStreamDoesNotKeepConnectionAlive(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.IdleTimeout = time.Second
	ts := startServer(t, cfg)
	c, err := rpcclient.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{PinSHA256: ts.CertFingerprint(), KeepAlive: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	c.SetStreamIdle(time.Hour)
	var pong qpcv1.PingResponse
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{Echo: "x"}, &pong); err != nil {
		t.Fatal(err)
	}
	if c.IdleStreams() != 1 {
		t.Fatalf("%d idle kept streams, want 1", c.IdleStreams())
	}
	select {
	case <-c.Conn().Context().Done():
	case <-time.After(15 * time.Second):
		t.Fatal("connection with only an idle kept stream was not closed by the idle rule")
	}
	var app *quic.ApplicationError
	if cause := context.Cause(c.Conn().Context()); !errors.As(cause, &app) || app.ErrorCode != transport.CodeIdle {
		t.Fatalf("connection ended with %v, want the idle rule's close (code %#x)", cause, transport.CodeIdle)
	}
}
