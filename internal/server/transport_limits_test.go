package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/transport"
)

// labelled sums the samples of metric name whose label label is value.
func (ts *testServer) labelled(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := ts.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += metricValue(m)
				}
			}
		}
	}
	return sum
}

// qpcd's per-address cap and silent-connection reaping, through its
// configuration, with their counters: a refused handshake is counted in
// qpcd_connections_refused_total{reason="per_address"} and a connection
// that never sends a request in qpcd_connections_reaped_total{reason="silent"}.
func TestConnectionLimitsAndTheirMetrics(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits.MaxConnectionsPerAddress = 2
	// Long enough that the first two are still open when the third dials,
	// even on a loaded machine; short enough to wait for their reaping.
	cfg.Limits.FirstRequestTimeout = 3 * time.Second
	ts := startServer(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func() *quicConn {
		qc, err := transport.Dial(ctx, ts.QUICAddr(), transport.DialOptions{PinSHA256: ts.CertFingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = qc.CloseWithError(0, "") })
		return qc
	}
	// The server admits a connection when its side of the handshake
	// completes, which on a loaded machine can come after the client's
	// Dial returned: dial the third only once both are admitted.
	a, b := dial(), dial()
	waitFor(t, 10*time.Second, "two connections admitted", func() bool { return ts.ln.Connections() == 2 })
	// The refusal can close the third connection before its Dial returns
	// (then Dial fails with it) or just after.
	refusal, err := transport.Dial(ctx, ts.QUICAddr(), transport.DialOptions{PinSHA256: ts.CertFingerprint()})
	if err == nil {
		t.Cleanup(func() { _ = refusal.CloseWithError(0, "") })
		waitFor(t, 10*time.Second, "the third connection refused", func() bool { return refusal.Context().Err() != nil })
		err = context.Cause(refusal.Context())
	}
	if !transport.IsConnectionLimit(err) {
		t.Fatalf("third connection from one address: %v, want the connection-limit code", err)
	}
	if got := ts.labelled(t, "qpcd_connections_refused_total", "reason", "per_address"); got != 1 {
		t.Fatalf("qpcd_connections_refused_total{reason=per_address} = %v, want 1", got)
	}
	for _, qc := range []*quicConn{a, b} {
		select {
		case <-qc.Context().Done():
		case <-ctx.Done():
			t.Fatal("silent connection not closed after limits.first_request_timeout")
		}
		if err := context.Cause(qc.Context()); !transport.IsIdleClose(err) {
			t.Fatalf("silent connection closed with %v, want the idle code", err)
		}
	}
	waitFor(t, 5*time.Second, "the reaped counter", func() bool {
		return ts.labelled(t, "qpcd_connections_reaped_total", "reason", "silent") == 2
	})
	// A client that sends requests is not touched.
	c := ts.dial(t)
	if _, err := c.Conn().OpenStreamSync(ctx); err != nil {
		t.Fatal(err)
	}
}

// pprof is off by default; ops_pprof=on serves it on the ops listener
// beside the usual endpoints.
func TestPprofOnlyWhenEnabled(t *testing.T) {
	get := func(ts *testServer, path string) (int, string) {
		resp, err := http.Get("http://" + ts.OpsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	off := startServer(t, testConfig(t))
	if code, _ := get(off, "/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("pprof with ops_pprof=off: status %d, want 404", code)
	}
	if code, _ := get(off, "/debug/pprof/heap"); code != http.StatusNotFound {
		t.Fatalf("heap profile with ops_pprof=off: status %d, want 404", code)
	}

	cfg := testConfig(t)
	cfg.OpsPprof = "on"
	on := startServer(t, cfg)
	if code, body := get(on, "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof index with ops_pprof=on: %d %.200q", code, body)
	}
	if code, body := get(on, "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Fatalf("heap profile: %d %.200q", code, body)
	}
	if code, body := get(on, "/metrics"); code != http.StatusOK || !strings.Contains(body, "qpcd_connections_refused_total") {
		t.Fatalf("/metrics beside pprof: %d", code)
	}
	if code, _ := get(on, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz beside pprof: %d", code)
	}
}

type quicConn = quic.Conn
