package delivery

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/tracing"
)

// A message remembers the sampled span that enqueued it (the W3C
// traceparent in messages.trace_parent), so a fetch on any node that
// returns it links to that span: the hop from a sender's trace to a
// receiver's. Unsampled enqueues store NULL, so with tracing off the
// column costs a NULL per row and nothing else.

// storedTraceParent is what Enqueue stores for the span in ctx: its
// traceparent when sampled, else nil (SQL NULL). The tracestate is left
// out: vendors' state for the enqueuing hop is not the fetch's business.
func storedTraceParent(ctx context.Context) any {
	if !trace.SpanContextFromContext(ctx).IsSampled() {
		return nil
	}
	tp, _ := tracing.Inject(ctx)
	if tp == "" {
		return nil
	}
	return tp
}

// linkEnqueuers adds to span a link to the enqueuing span of every message
// of b that stored one, and counts them.
func linkEnqueuers(span trace.Span, b *Batch) {
	if !span.IsRecording() || len(b.Messages) == 0 {
		return
	}
	n := 0
	for i := range b.Messages {
		if sc, ok := tracing.SpanContext(b.Messages[i].traceParent, ""); ok {
			span.AddLink(trace.Link{SpanContext: sc})
			n++
		}
	}
	tracing.Set(span, tracing.Int(tracing.KeyLinkedEnqueues, n))
}
