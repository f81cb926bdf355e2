package tracing

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestConfigValidate(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c          Config
		ok         bool
		proto      string
		secure     bool
		setupFails bool
	}{
		{c: Config{}, ok: true},
		{c: Config{Endpoint: "collector:4317", SampleRatio: 1}, ok: true, proto: ProtocolGRPC},
		{c: Config{Endpoint: "http://collector:4318", SampleRatio: 0.5}, ok: true, proto: ProtocolHTTP},
		{c: Config{Endpoint: "https://collector:4318"}, ok: true, proto: ProtocolHTTP, secure: true},
		{c: Config{Endpoint: "collector:4317", CAFile: ca}, ok: true, proto: ProtocolGRPC, secure: true, setupFails: true},
		{c: Config{Endpoint: "http://collector:4317", Protocol: ProtocolGRPC}, ok: true, proto: ProtocolGRPC},
		{c: Config{Endpoint: "collector"}},
		{c: Config{Endpoint: "ftp://collector:21"}},
		{c: Config{Endpoint: "collector:4317", Protocol: "thrift"}},
		{c: Config{Endpoint: "collector:4317", SampleRatio: 1.5}},
		{c: Config{Endpoint: "collector:4317", SampleRatio: -0.1}},
	} {
		err := tc.c.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%+v: Validate = %v, want ok=%v", tc.c, err, tc.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("%+v: %v is not ErrConfig", tc.c, err)
			}
			continue
		}
		if !tc.c.Enabled() {
			continue
		}
		p, secure, _ := tc.c.target()
		if p != tc.proto || secure != tc.secure {
			t.Errorf("%+v: protocol %s secure %v, want %s %v", tc.c, p, secure, tc.proto, tc.secure)
		}
		_, err = Setup(context.Background(), tc.c)
		if (err != nil) != tc.setupFails {
			t.Errorf("%+v: Setup = %v, want failure %v", tc.c, err, tc.setupFails)
		}
	}
}

func TestPropagationRoundTrip(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	p := NewWithProcessor(rec, nil)
	ctx, span := p.Tracer().Start(context.Background(), "root")
	tp, ts := Inject(ctx)
	if len(tp) != 55 {
		t.Fatalf("traceparent %q", tp)
	}
	sc := trace.SpanContextFromContext(Extract(context.Background(), tp, ts))
	if sc.TraceID() != span.SpanContext().TraceID() || sc.SpanID() != span.SpanContext().SpanID() || !sc.IsRemote() || !sc.IsSampled() {
		t.Fatalf("extracted %v from %q, want %v", sc, tp, span.SpanContext())
	}
	if _, ok := SpanContext("00-garbage", ""); ok {
		t.Fatal("a malformed traceparent parsed")
	}
	if tp, ts := Inject(context.Background()); tp != "" || ts != "" {
		t.Fatalf("no span, yet %q %q", tp, ts)
	}
}

// TestSetDropsUnlisted: Set keeps allow-listed keys only.
func TestSetDropsUnlisted(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	p := NewWithProcessor(rec, nil)
	_, span := p.Tracer().Start(context.Background(), "s")
	Set(span, Method("Enqueue"), attribute.String("account_name", "alice"), attribute.String("access_token", "x"))
	span.End()
	got := rec.Ended()[0].Attributes()
	if len(got) != 1 || got[0].Key != KeyRPCMethod {
		t.Fatalf("attributes %v, want only rpc.method", got)
	}
}

// TestOffCostsNothing: with tracing off (no recording span in the
// context) a child span, its attributes and its end allocate nothing.
func TestOffCostsNothing(t *testing.T) {
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		c, s := Start(ctx, "db.read")
		Set(s, Int(KeyMessages, 3))
		Fail(s, "x")
		s.End()
		_ = c
	})
	if allocs != 0 {
		t.Fatalf("untraced span costs %v allocations", allocs)
	}
	// A Provider with tracing off is a no-op.
	p, err := Setup(ctx, Config{})
	if err != nil || p.Enabled() {
		t.Fatalf("Setup(off) = %v, enabled %v", err, p.Enabled())
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRedactEndpoint(t *testing.T) {
	if got := redactEndpoint("https://user:hunter2@collector:4318"); got != "https://user:xxxxx@collector:4318" {
		t.Fatalf("redacted %q", got)
	}
	if got := redactEndpoint("collector:4317"); got != "collector:4317" {
		t.Fatalf("bare endpoint became %q", got)
	}
}
