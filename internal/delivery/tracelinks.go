package delivery

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/tracing"
)

// traceLinks remembers which span enqueued a recent message, so a fetch
// that returns it links to that span (the hop from a sender's trace to a
// receiver's). It is memory only and bounded: a message fetched long after
// (or on another node of a PostgreSQL deployment) has no link, which costs
// the trace one arrow and nothing else. Only sampled enqueues are kept, so
// with tracing off it stays empty and is never locked.
type traceLinks struct {
	mu   sync.Mutex
	byID map[linkKey]trace.SpanContext
	ring []linkKey // insertion order, for eviction
	next int
}

// linkKey is a message's channel id and sequence number.
type linkKey struct {
	channel [ChannelIDSize]byte
	seq     uint64
}

// maxTraceLinks bounds the memory: about 100 bytes each.
const maxTraceLinks = 8192

func newTraceLinks() *traceLinks {
	return &traceLinks{byID: map[linkKey]trace.SpanContext{}, ring: make([]linkKey, 0, maxTraceLinks)}
}

func keyOf(channel []byte, seq uint64) linkKey {
	var k linkKey
	copy(k.channel[:], channel)
	k.seq = seq
	return k
}

// remember records the sampled span in ctx as the enqueuer of (channel, seq).
func (t *traceLinks) remember(ctx context.Context, channel []byte, seq uint64) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsSampled() {
		return
	}
	k := keyOf(channel, seq)
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.ring) < maxTraceLinks {
		t.ring = append(t.ring, k)
	} else {
		delete(t.byID, t.ring[t.next])
		t.ring[t.next] = k
		t.next = (t.next + 1) % maxTraceLinks
	}
	t.byID[k] = sc
}

// link adds to span a link to the enqueuing span of every message of b
// that has one, and counts them.
func (t *traceLinks) link(span trace.Span, b *Batch) {
	if !span.IsRecording() || len(b.Messages) == 0 {
		return
	}
	n := 0
	t.mu.Lock()
	for i := range b.Messages {
		m := &b.Messages[i]
		if sc, ok := t.byID[keyOf(m.ChannelID, m.Seq)]; ok {
			span.AddLink(trace.Link{SpanContext: sc})
			n++
		}
	}
	t.mu.Unlock()
	tracing.Set(span, tracing.Int(tracing.KeyLinkedEnqueues, n))
}
