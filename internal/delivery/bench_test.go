package delivery

import (
	"fmt"
	"sync/atomic"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
)

// BenchmarkEnqueueParallel: many concurrent senders into one group
// channel, 1 KiB messages; the store group-commits their transactions.
func BenchmarkEnqueueParallel(b *testing.B) {
	e := newEnv(&testing.T{}, func(o *Options) { o.MaxPayload = 1 << 20 })
	owner := e.dir.add("owner", "o1")
	g := groupID()
	ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
	if err != nil {
		b.Fatal(err)
	}
	msg := dt.Application(g, 0, 1024)
	var n atomic.Int64
	b.SetParallelism(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.svc.Enqueue(ctx, owner.Caller, ch.ID, fmt.Sprintf("m%d", n.Add(1)), msg, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEnqueueTracing is one Enqueue under an RPC's server span, as
// qpcd runs it, with tracing off (no span at all: qpcd skips it), on with
// sampling 0 (a span context that records nothing) and on with sampling 1
// (every span recorded and batched to an exporter that drops them).
// docs/benchmarks.md, "Tracing".
func BenchmarkEnqueueTracing(b *testing.B) {
	for _, mode := range []struct {
		name  string
		ratio float64
		on    bool
	}{{"off", 0, false}, {"sample0", 0, true}, {"sample1", 1, true}} {
		b.Run(mode.name, func(b *testing.B) {
			e := newEnv(&testing.T{}, func(o *Options) { o.MaxPayload = 1 << 20 })
			owner := e.dir.add("owner", "o1")
			g := groupID()
			ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
			if err != nil {
				b.Fatal(err)
			}
			msg := dt.Application(g, 0, 1024)
			var tracer trace.Tracer
			if mode.on {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(mode.ratio))),
					sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				defer tp.Shutdown(ctx)
				tracer = tp.Tracer("bench")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := ctx
				var span trace.Span
				if tracer != nil {
					c, span = tracer.Start(ctx, "qpc.Enqueue", trace.WithSpanKind(trace.SpanKindServer))
				}
				if _, err := e.svc.Enqueue(c, owner.Caller, ch.ID, fmt.Sprintf("m%d", i), msg, nil); err != nil {
					b.Fatal(err)
				}
				if span != nil {
					span.End()
				}
			}
		})
	}
}
