package rpcclient_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// dialVia connects to srv through a proxy that can stop forwarding.
func dialVia(t *testing.T, srv *servertest.Server) (*rpcclient.Client, *testutil.UDPProxy) {
	t.Helper()
	proxy := testutil.StartUDPProxy(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rpcclient.Dial(ctx, proxy.Addr(), transport.DialOptions{PinSHA256: srv.Pin(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, proxy
}

// A server that stops answering after the handshake (frozen, or the path
// to it gone) used to hang a call until QUIC's idle timeout, 60 s by
// default, or for ever under the keep-alive of a half-open path. Now the
// call fails at its deadline with a typed, retryable error.
func TestCallToASilentServerFailsAtItsDeadline(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c, proxy := dialVia(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	var pong qpcv1.PingResponse
	if err := c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "x"}, &pong); err != nil {
		t.Fatalf("Ping before the blackhole: %v", err)
	}

	c.SetDeadlines(rpcclient.Deadlines{Call: time.Second, LongPollMargin: time.Second})
	proxy.Blackhole()
	for _, tc := range []struct {
		name string
		req  *qpcv1.PingRequest
		want time.Duration
	}{
		{"ordinary call", &qpcv1.PingRequest{Echo: "y"}, time.Second},
		{"long poll", &qpcv1.PingRequest{Echo: "z", HoldMs: 1500}, 2500 * time.Millisecond},
	} {
		began := time.Now()
		err := c.Call(ctx, "Ping", "", tc.req, &pong)
		took := time.Since(began)
		var de *rpcclient.DeadlineError
		if !errors.As(err, &de) {
			t.Fatalf("%s: %v after %v, want a *DeadlineError", tc.name, err, took)
		}
		if de.Method != "Ping" || de.After != tc.want {
			t.Fatalf("%s: deadline error %+v, want Ping after %v", tc.name, de, tc.want)
		}
		if !errors.Is(err, rpcclient.ErrCallDeadline) || !errors.Is(err, context.DeadlineExceeded) || !rpcclient.IsRetryable(err) {
			t.Fatalf("%s: %v is not a retryable deadline error", tc.name, err)
		}
		if took < tc.want || took > tc.want+5*time.Second {
			t.Fatalf("%s: failed after %v, want about %v (well under the 60s idle timeout)", tc.name, took, tc.want)
		}
	}
}

// A long poll gets its own wait plus a margin: a plain call deadline
// shorter than the wait must not cut it off on a healthy connection.
func TestLongPollOutlivesTheCallDeadline(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c, _ := dialVia(t, srv)
	c.SetDeadlines(rpcclient.Deadlines{Call: 200 * time.Millisecond, LongPollMargin: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var pong qpcv1.PingResponse
	began := time.Now()
	if err := c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "held", HoldMs: 800}, &pong); err != nil {
		t.Fatalf("held Ping: %v", err)
	}
	if took := time.Since(began); took < 800*time.Millisecond || pong.GetEcho() != "held" {
		t.Fatalf("held Ping answered %q after %v, want after the 800ms hold", pong.GetEcho(), took)
	}
}

// Every call has a deadline: ordinary calls the Call bound plus time for
// their size, long polls their wait plus the margin.
func TestDefaultDeadlines(t *testing.T) {
	d := rpcclient.DefaultDeadlines
	cases := []struct {
		name string
		got  time.Duration
		want time.Duration
	}{
		{"ordinary", d.For(&qpcv1.PingRequest{}, 10), 30 * time.Second},
		{"unknown request", d.For(nil, 0), 30 * time.Second},
		{"5 MiB upload", d.For(&qpcv1.EnqueueRequest{}, 5<<20), 80 * time.Second},
		{"long poll", d.For(&qpcv1.FetchWaitRequest{TimeoutMs: 30_000}, 10), 40 * time.Second},
		{"held ping", d.For(&qpcv1.PingRequest{HoldMs: 5000}, 10), 15 * time.Second},
		{"zero deadlines take the defaults", rpcclient.Deadlines{}.For(&qpcv1.PingRequest{}, 0), 30 * time.Second},
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("%s: deadline %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}
