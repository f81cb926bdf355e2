package ops_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// TestLiveExemplarsReachPrometheus (issue 18): qpcd with tracing on and a
// real Prometheus with exemplar storage (as the testnet runs it): the
// scrape negotiates OpenMetrics, and qpcd_rpc_duration_seconds carries
// exemplars whose trace_id is the trace of a recorded RPC span, which is
// what Grafana's latency panel links to.
func TestLiveExemplarsReachPrometheus(t *testing.T) {
	prom := tool(t, "prometheus")
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	cfg.Limits.RateLimit = 100000
	cfg.Limits.RateBurst = 100000
	cfg.Limits.DrainTimeout = time.Second
	cfg.Admin.Socket = filepath.Join(shortTemp(t), "a.sock")
	rec := tracetest.NewSpanRecorder()
	srv, err := server.New(context.Background(), server.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler),
		Tracing: tracing.NewWithProcessor(rec, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, 10*time.Second, "qpcd ready", func() bool {
		resp, err := http.Get("http://" + srv.OpsAddr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	traffic := startTraffic(t, srv)
	defer traffic()
	promURL := startPrometheus(t, prom, dir, srv.OpsAddr(), "--enable-feature=exemplar-storage")

	var ids []string
	waitFor(t, 60*time.Second, "an exemplar with a trace id in Prometheus", func() bool {
		ids = exemplarTraceIDs(t, promURL, `qpcd_rpc_duration_seconds_bucket{job="qpcd"}`)
		return len(ids) > 0
	})
	traces := map[string]bool{}
	for _, s := range rec.Ended() {
		traces[s.SpanContext().TraceID().String()] = true
	}
	for _, id := range ids {
		if !traces[id] {
			t.Errorf("exemplar trace_id %s is not the trace of any recorded span", id)
		}
	}
	t.Logf("%d exemplars, each the trace of a recorded RPC span", len(ids))
}

// exemplarTraceIDs asks Prometheus' exemplar API for the last minute.
func exemplarTraceIDs(t *testing.T, base, expr string) []string {
	t.Helper()
	now := time.Now()
	v := url.Values{"query": {expr}, "start": {strconv.FormatInt(now.Add(-time.Minute).Unix(), 10)}, "end": {strconv.FormatInt(now.Unix(), 10)}}
	resp, err := http.Get(base + "/api/v1/query_exemplars?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   []struct {
			Exemplars []struct {
				Labels map[string]string `json:"labels"`
			} `json:"exemplars"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Status != "success" {
		t.Fatalf("query_exemplars: %s", r.Error)
	}
	var ids []string
	for _, series := range r.Data {
		for _, e := range series.Exemplars {
			if id := e.Labels["trace_id"]; id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids
}
