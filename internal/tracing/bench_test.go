package tracing

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// BenchmarkEnqueueSpans is the tracing work of one Enqueue RPC alone (the
// server span and its seven children with their attributes, as qpcd makes
// them), without the database: off, on with sampling 0, on with sampling 1
// (batched to an exporter that drops them). docs/benchmarks.md, "Tracing".
func BenchmarkEnqueueSpans(b *testing.B) {
	for _, mode := range []struct {
		name  string
		ratio float64
		on    bool
	}{{"off", 0, false}, {"sample0", 0, true}, {"sample1", 1, true}} {
		b.Run(mode.name, func(b *testing.B) {
			var tracer trace.Tracer
			if mode.on {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(mode.ratio))),
					sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				defer tp.Shutdown(context.Background())
				tracer = tp.Tracer("bench")
			}
			b.ReportAllocs()
			for b.Loop() {
				ctx := context.Background()
				span := trace.SpanFromContext(ctx)
				if tracer != nil { // qpcd: if r.tracing
					ctx, span = tracer.Start(ctx, "qpc.Enqueue", trace.WithSpanKind(trace.SpanKindServer))
					Set(span, attribute.String(KeyRPCSystem, "qpc"), Method("Enqueue"), Int(KeyRequestSize, 1100))
				}
				for _, name := range []string{"qpc.auth", "qpc.validate", "delivery.enqueue", "db.write", "db.write.wait", "db.commit", "db.read"} {
					_, c := Start(ctx, name)
					Set(c, Result("ok"), Int(KeyBatchSize, 1))
					c.End()
				}
				if span.IsRecording() {
					Set(span, Status("ok"), Int(KeyResponseSize, 12))
					span.End()
				}
			}
		})
	}
}
