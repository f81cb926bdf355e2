package server

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func enqueueBatch(t *testing.T, d *testDevice, items ...*qpcv1.EnqueueRequest) (*qpcv1.EnqueueBatchResponse, error) {
	t.Helper()
	var r qpcv1.EnqueueBatchResponse
	err := d.call(t, MethodEnqueueBatch, &qpcv1.EnqueueBatchRequest{Items: items}, &r)
	return &r, err
}

// Over the wire each item gets the status its own Enqueue would have got:
// OK with its seq, the original seq for a replayed id, STALE_EPOCH,
// PERMISSION_DENIED; and the batch's caps refuse the call as a whole.
func TestEnqueueBatchOverRPC(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Limits.MaxPayloadBytes = 64 << 10
	ts := startServer(t, cfg)
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	ch1, g1 := groupChannel(t, alice, bob)
	ch2, g2 := groupChannel(t, alice)
	theirs, _ := groupChannel(t, bob)
	first := mustEnqueue(t, alice, ch1, dt.Application(g1, 0, 64))
	var replayID string
	{
		id := newMessageID()
		r, err := enqueue(t, alice, ch1, id, dt.Application(g1, 0, 64), nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.GetSeq() != first.GetSeq()+1 {
			t.Fatalf("seq %d after %d", r.GetSeq(), first.GetSeq())
		}
		replayID = id
	}
	resp, err := enqueueBatch(t, alice,
		&qpcv1.EnqueueRequest{ChannelId: ch1, MessageId: newMessageID(), MlsMessage: dt.Commit(g1, 0), GroupInfo: dt.GroupInfo(g1, 1)},
		&qpcv1.EnqueueRequest{ChannelId: ch1, MessageId: replayID, MlsMessage: dt.Application(g1, 0, 64)},
		&qpcv1.EnqueueRequest{ChannelId: ch2, MessageId: newMessageID(), MlsMessage: dt.Application(g2, 0, 64)},
		&qpcv1.EnqueueRequest{ChannelId: ch1, MessageId: newMessageID(), MlsMessage: dt.Commit(g1, 0)},
		&qpcv1.EnqueueRequest{ChannelId: theirs, MessageId: newMessageID(), MlsMessage: dt.Application(g2, 0, 64)},
		&qpcv1.EnqueueRequest{ChannelId: ch1, MessageId: newMessageID(), MlsMessage: dt.Application(g1, 1, 64)},
	)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		status qpcv1.Status
		seq    uint64
		dup    bool
	}{
		{qpcv1.Status_STATUS_OK, first.GetSeq() + 2, false},
		{qpcv1.Status_STATUS_OK, first.GetSeq() + 1, true},
		{qpcv1.Status_STATUS_OK, 1, false},
		{qpcv1.Status_STATUS_STALE_EPOCH, 0, false},
		{qpcv1.Status_STATUS_PERMISSION_DENIED, 0, false},
		{qpcv1.Status_STATUS_OK, first.GetSeq() + 3, false},
	}
	if len(resp.GetResults()) != len(want) {
		t.Fatalf("%d results for %d items", len(resp.GetResults()), len(want))
	}
	for i, w := range want {
		r := resp.GetResults()[i]
		if r.GetStatus() != w.status || r.GetResponse().GetSeq() != w.seq || r.GetResponse().GetDuplicate() != w.dup {
			t.Errorf("item %d: %v %q seq %d duplicate %v; want %v seq %d duplicate %v", i, r.GetStatus(), r.GetMessage(),
				r.GetResponse().GetSeq(), r.GetResponse().GetDuplicate(), w.status, w.seq, w.dup)
		}
		if w.status != qpcv1.Status_STATUS_OK && (r.GetMessage() == "" || r.GetResponse() != nil) {
			t.Errorf("item %d refused without a message, or with a response: %v", i, r)
		}
	}
	// The delivery SLO counts messages: each item by its own status.
	for st, n := range map[string]float64{"ok": 4, "stale_epoch": 1, "permission_denied": 1, "internal": 0} {
		if got := enqueueMessages(ts, MethodEnqueueBatch, st); got != n {
			t.Errorf("qpcd_enqueue_status_total{rpc=EnqueueBatch,status=%s} = %v, want %v", st, got, n)
		}
	}
	if got := enqueueMessages(ts, MethodEnqueue, "ok"); got < 2 {
		t.Errorf("qpcd_enqueue_status_total{rpc=Enqueue,status=ok} = %v, want at least the two single enqueues", got)
	}
	// Bob reads alice's batch in the log, in order.
	var seqs []uint64
	for _, m := range fetch(t, bob).GetMessages() {
		if string(m.GetChannelId()) == string(ch1) {
			seqs = append(seqs, m.GetSeq())
		}
	}
	if len(seqs) < 3 || seqs[len(seqs)-1] != first.GetSeq()+3 {
		t.Fatalf("bob reads channel 1 up to %v", seqs)
	}

	// The caps: more than 64 items is INVALID_ARGUMENT before any item is
	// looked at; items within the payload cap each but not together are
	// RESOURCE_EXHAUSTED without a retry-after.
	var many []*qpcv1.EnqueueRequest
	for range 65 {
		many = append(many, &qpcv1.EnqueueRequest{ChannelId: ch2, MessageId: newMessageID(), MlsMessage: dt.Application(g2, 0, 16)})
	}
	_, err = enqueueBatch(t, alice, many...)
	wantStatus(t, "65 items", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
	_, err = enqueueBatch(t, alice,
		&qpcv1.EnqueueRequest{ChannelId: ch2, MessageId: newMessageID(), MlsMessage: dt.Application(g2, 0, 34<<10)},
		&qpcv1.EnqueueRequest{ChannelId: ch2, MessageId: newMessageID(), MlsMessage: dt.Application(g2, 0, 34<<10)})
	se := wantStatus(t, "68 KiB under a 64 KiB cap", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if se.RetryAfter != 0 || !strings.Contains(se.Message, "limits.max_payload_bytes") {
		t.Fatalf("over the byte cap: %v", se)
	}
	// Refused as a whole in the handler: each message counted with the call's status.
	if got := enqueueMessages(ts, MethodEnqueueBatch, "resource_exhausted"); got != 2 {
		t.Errorf("a batch of 2 over the byte cap counted %v resource_exhausted messages, want 2", got)
	}
	_, err = enqueueBatch(t, alice)
	wantStatus(t, "no items", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
	r, err := enqueue(t, alice, ch2, newMessageID(), dt.Application(g2, 0, 16), nil)
	if err != nil || r.GetSeq() != 2 {
		t.Fatalf("after the refused batches channel 2 moves on to seq %d (%v), want 2: they stored nothing", r.GetSeq(), err)
	}
}

// Rate limits count every item: with a burst of 10 a batch of 16 stores
// ten (the call's own tokens pay for the first) and refuses six, each
// RESOURCE_EXHAUSTED with a retry-after, counted and retried alone.
func TestEnqueueBatchRateLimitedPerItem(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	cfg.Limits.RateLimit = 1
	cfg.Limits.RateBurst = 10
	ts := startServerWith(t, cfg, clk.Now)
	alice := ts.newDevice(t, "alice")
	clk.Advance(time.Minute)
	ch, g := groupChannel(t, alice)
	clk.Advance(time.Minute) // every bucket full again
	before := rateLimited(ts, obs.ScopeIP) + rateLimited(ts, obs.ScopeAccount) + rateLimited(ts, obs.ScopeDevice)
	var items []*qpcv1.EnqueueRequest
	for range 16 {
		items = append(items, &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: newMessageID(), MlsMessage: dt.Application(g, 0, 64)})
	}
	resp, err := enqueueBatch(t, alice, items...)
	if err != nil {
		t.Fatal(err)
	}
	var refused []*qpcv1.EnqueueRequest
	for i, r := range resp.GetResults() {
		switch {
		case i < 10 && (r.GetStatus() != qpcv1.Status_STATUS_OK || r.GetResponse().GetSeq() != uint64(i+1)):
			t.Fatalf("item %d: %v %q seq %d", i, r.GetStatus(), r.GetMessage(), r.GetResponse().GetSeq())
		case i >= 10 && (r.GetStatus() != qpcv1.Status_STATUS_RESOURCE_EXHAUSTED || r.GetRetryAfterMs() == 0 || !strings.Contains(r.GetMessage(), "rate limit")):
			t.Fatalf("item %d past the burst: %v %q retry after %d ms", i, r.GetStatus(), r.GetMessage(), r.GetRetryAfterMs())
		case i >= 10:
			refused = append(refused, items[i])
		}
	}
	if got := rateLimited(ts, obs.ScopeIP) + rateLimited(ts, obs.ScopeAccount) + rateLimited(ts, obs.ScopeDevice) - before; got != 6 {
		t.Fatalf("rate_limited rose by %v, want 6 (one per refused item)", got)
	}
	// The next call is refused as a whole until the buckets refill; then
	// the refused items go in, after the stored ones.
	_, err = enqueueBatch(t, alice, refused...)
	wantStatus(t, "batch with empty buckets", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	clk.Advance(time.Minute)
	resp, err = enqueueBatch(t, alice, refused...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.GetResults() {
		if r.GetStatus() != qpcv1.Status_STATUS_OK || r.GetResponse().GetSeq() != uint64(11+i) {
			t.Fatalf("retried item %d: %v %q seq %d", i, r.GetStatus(), r.GetMessage(), r.GetResponse().GetSeq())
		}
	}
}

func enqueueMessages(ts *testServer, rpc, status string) float64 {
	return testutil.ToFloat64(ts.metrics.EnqueueMessages.WithLabelValues(rpc, status))
}
