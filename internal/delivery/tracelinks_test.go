package delivery

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// A fetch on one node links to the span that enqueued the message on
// another (the traceparent travels in the database, not in a node's
// memory); an unsampled enqueue stores nothing to link to.
func TestFetchLinksToEnqueueOnAnotherNode(t *testing.T) {
	n := newTwoNodes(t, nil)
	owner := n.dir.add("owner", "o1")
	bob := n.dir.add("bob", "b1")
	ch, g := n.group(t, owner, bob)

	rec := tracetest.NewSpanRecorder()
	p := tracing.NewWithProcessor(rec, nil)
	sendCtx, send := p.Tracer().Start(context.Background(), "send")
	if _, err := n.node(0).Enqueue(sendCtx, owner.Caller, ch.ID, "traced", dt.Application(g, 0, 100), nil); err != nil {
		t.Fatal(err)
	}
	send.End()
	// Tracing off for this one: no span in ctx.
	if _, err := n.node(0).Enqueue(ctx, owner.Caller, ch.ID, "untraced", dt.Application(g, 0, 100), nil); err != nil {
		t.Fatal(err)
	}
	var enqueueSpan string
	for _, s := range rec.Ended() {
		if s.Name() == "delivery.enqueue" {
			enqueueSpan = s.SpanContext().SpanID().String()
		}
	}
	if enqueueSpan == "" {
		t.Fatal("no delivery.enqueue span recorded")
	}

	fetchCtx, fetch := p.Tracer().Start(context.Background(), "receive")
	b, err := n.node(1).Fetch(fetchCtx, bob.Caller, 0, After{})
	fetch.End()
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Messages) < 2 {
		t.Fatalf("bob fetched %d messages, want the traced and the untraced one", len(b.Messages))
	}
	var links []string
	for _, s := range rec.Ended() {
		if s.Name() == "delivery.fetch" {
			for _, l := range s.Links() {
				links = append(links, l.SpanContext.SpanID().String())
			}
		}
	}
	if len(links) != 1 || links[0] != enqueueSpan {
		t.Fatalf("the fetch on node B links to %v, want only the enqueue span %s of node A", links, enqueueSpan)
	}
}
