package obs

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

func sampledContext(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(context.Background(), sc), sc
}

// TestLogCarriesTraceIDs: a record logged with a span's context names the
// trace and span, in both formats; one without names neither.
func TestLogCarriesTraceIDs(t *testing.T) {
	ctx, _ := sampledContext(t)
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		l, err := NewLogger(&buf, "info", format)
		if err != nil {
			t.Fatal(err)
		}
		l.With("component", "x").InfoContext(ctx, "traced")
		NewAudit(l).Event(ctx, "delivery.enqueue")
		l.Info("untraced")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("%s: %d lines", format, len(lines))
		}
		for _, line := range lines[:2] {
			if !strings.Contains(line, "4bf92f3577b34da6a3ce929d0e0e4736") || !strings.Contains(line, "00f067aa0ba902b7") ||
				!strings.Contains(line, "trace_id") || !strings.Contains(line, "span_id") {
				t.Errorf("%s: traced line lacks the ids: %s", format, line)
			}
		}
		if strings.Contains(lines[2], "trace_id") {
			t.Errorf("%s: untraced line has a trace id: %s", format, lines[2])
		}
	}
}

// TestLatencyExemplars: a sampled RPC's latency carries its trace id as
// an exemplar on /metrics in the OpenMetrics format; an unsampled one
// does not, and the classic text format is unchanged.
func TestLatencyExemplars(t *testing.T) {
	m := NewMetrics(nil)
	_, sc := sampledContext(t)
	m.ObserveRPCDuration("Enqueue", 3*time.Millisecond, sc)
	m.ObserveRPCDuration("Fetch", 3*time.Millisecond, trace.SpanContext{})
	srv := httptest.NewServer(NewOpsHandler(m, nil))
	defer srv.Close()
	get := func(accept string) string {
		req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	om := get("application/openmetrics-text; version=1.0.0")
	var enqueue, fetch bool
	for _, line := range strings.Split(om, "\n") {
		if !strings.HasPrefix(line, "qpcd_rpc_duration_seconds_bucket") || !strings.Contains(line, "#") {
			continue
		}
		switch {
		case strings.Contains(line, `method="Enqueue"`) && strings.Contains(line, `trace_id="4bf92f3577b34da6a3ce929d0e0e4736"`):
			enqueue = true
		case strings.Contains(line, `method="Fetch"`):
			fetch = true
		}
	}
	if !enqueue {
		t.Errorf("no exemplar with the trace id on the Enqueue histogram:\n%s", om)
	}
	if fetch {
		t.Error("an unsampled RPC got an exemplar")
	}
	if text := get("text/plain"); strings.Contains(text, "trace_id") {
		t.Error("the classic text format shows exemplars")
	}
}
