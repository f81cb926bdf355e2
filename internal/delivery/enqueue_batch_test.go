package delivery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/obs"
)

// auditEvents returns the audit events named event in b (JSON lines),
// decoded.
func auditEvents(t *testing.T, b *bytes.Buffer, event string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// One batch of mixed items over two channels: each item gets what its own
// Enqueue would have got, in order within its channel (a commit moves the
// epoch the next item is checked against, a second commit for the old
// epoch is stale, a replayed id answers its original seq, a refusal takes
// nothing from the others), with one audit event and one metric count per
// item. Across channels the items are decided independently, as
// concurrent Enqueue calls would be.
func TestEnqueueBatchMixedItems(t *testing.T) {
	// Audit events are written by the caller's goroutine (finishEnqueue),
	// and this test's calls are all on its own.
	var audit bytes.Buffer
	e := newEnv(t, func(o *Options) {
		o.Audit = obs.NewAudit(slog.New(slog.NewJSONHandler(&audit, &slog.HandlerOptions{Level: obs.LevelAudit})))
	})
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch1, g1 := e.group(t, alice, bob)
	ch2, g2 := e.group(t, alice)
	other, _ := e.group(t, bob)
	first := newMsgID()
	items := []EnqueueItem{
		{ChannelID: ch1.ID, MessageID: first, MLSMessage: dt.Application(g1, 0, 100)},                            // 0: ok
		{ChannelID: ch1.ID, MessageID: newMsgID(), MLSMessage: dt.Commit(g1, 0), GroupInfo: dt.GroupInfo(g1, 1)}, // 1: ok, epoch 1
		{ChannelID: ch1.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g1, 1, 100)},                       // 2: ok at epoch 1
		{ChannelID: ch1.ID, MessageID: newMsgID(), MLSMessage: dt.Commit(g1, 0)},                                 // 3: stale
		{ChannelID: ch2.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g2, 0, 100)},                       // 4: ok, other channel
		{ChannelID: ch1.ID, MessageID: first, MLSMessage: dt.Application(g1, 0, 100)},                            // 5: duplicate of 0
		{ChannelID: other.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g2, 0, 100)},                     // 6: not a member
		{ChannelID: ch2.ID, MessageID: newMsgID(), MLSMessage: []byte("not an MLS message")},                     // 7: invalid
		{ChannelID: ch2.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g2, 0, 100)},                       // 8: ok (5th stored)
		{ChannelID: ch1.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g1, 1, 100)},                       // 9: ok (6th stored)
		{ChannelID: ch1.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g1, 1, 100)},                       // 10: ok (7th stored)
		{ChannelID: ch2.ID[:3], MessageID: newMsgID(), MLSMessage: dt.Application(g2, 0, 100)},                   // 11: bad channel id
	}
	before := testutil.ToFloat64(e.svc.metrics.enqueued.WithLabelValues("group", "ok"))
	res, err := e.svc.EnqueueBatch(ctx, alice.Caller, items)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(items) {
		t.Fatalf("%d results for %d items", len(res), len(items))
	}
	h1, h2 := ch1.HeadSeq, ch2.HeadSeq
	want := []struct {
		seq, epoch uint64
		dup        bool
		err        error
	}{
		{h1 + 1, 0, false, nil},
		{h1 + 2, 1, false, nil},
		{h1 + 3, 1, false, nil},
		{0, 0, false, ErrStaleEpoch},
		{h2 + 1, 0, false, nil},
		{h1 + 1, 1, true, nil},
		{0, 0, false, ErrNotMember},
		{0, 0, false, ErrInvalidMessage},
		{h2 + 2, 0, false, nil},
		{h1 + 4, 1, false, nil},
		{h1 + 5, 1, false, nil},
		{0, 0, false, ErrInvalidRequest},
	}
	for i, w := range want {
		r := res[i]
		switch {
		case w.err != nil && !errors.Is(r.Err, w.err):
			t.Errorf("item %d: %v, want %v", i, r.Err, w.err)
		case w.err == nil && r.Err != nil:
			t.Errorf("item %d: %v", i, r.Err)
		case w.err == nil && (r.Seq != w.seq || r.Epoch != w.epoch || r.Duplicate != w.dup):
			t.Errorf("item %d: seq %d epoch %d duplicate %v, want seq %d epoch %d duplicate %v", i, r.Seq, r.Epoch, r.Duplicate, w.seq, w.epoch, w.dup)
		}
	}
	// What is stored is what was acknowledged, in item order per channel.
	ids1, seqs1 := storedSeqs(t, e.db, ch1.ID)
	if got := fmt.Sprint(ids1[len(ids1)-5:], seqs1[len(seqs1)-5:]); got != fmt.Sprint(
		[]string{items[0].MessageID, items[1].MessageID, items[2].MessageID, items[9].MessageID, items[10].MessageID}, []uint64{h1 + 1, h1 + 2, h1 + 3, h1 + 4, h1 + 5}) {
		t.Fatalf("channel 1 log tail: %s", got)
	}
	ids2, _ := storedSeqs(t, e.db, ch2.ID)
	if got := fmt.Sprint(ids2[len(ids2)-2:]); got != fmt.Sprint([]string{items[4].MessageID, items[8].MessageID}) {
		t.Fatalf("channel 2 log tail: %s", got)
	}
	if _, epoch, err := e.svc.GroupInfo(ctx, bob.Caller, ch1.ID); err != nil || epoch != 1 {
		t.Fatalf("group info after the batch's commit: epoch %d, %v", epoch, err)
	}
	if u := e.checkUsage(t, alice.AccountID); u.Messages != 7 {
		t.Fatalf("usage %+v, want 7 messages", u)
	}
	// One audit event per successful item (duplicate included), as
	// separate Enqueue calls write; one metric count per item.
	ev := auditEvents(t, &audit, "delivery.enqueue")
	if len(ev) != 8 {
		t.Fatalf("%d delivery.enqueue audit events, want 8 (7 stored, 1 duplicate)", len(ev))
	}
	seqs := map[float64]bool{}
	for _, a := range ev {
		seqs[a["seq"].(float64)] = true
	}
	for i, r := range res {
		if r.Err == nil && !seqs[float64(r.Seq)] {
			t.Fatalf("item %d (seq %d) has no audit event: %v", i, r.Seq, ev)
		}
	}
	if got := testutil.ToFloat64(e.svc.metrics.enqueued.WithLabelValues("group", "ok")) - before; got != 7 {
		t.Fatalf("enqueued{result=ok} rose by %v, want 7", got)
	}
	for result, n := range map[string]float64{"duplicate": 1, "stale_epoch": 1, "denied": 1} {
		if got := testutil.ToFloat64(e.svc.metrics.enqueued.WithLabelValues("group", result)); got != n {
			t.Fatalf("enqueued{result=%s} = %v, want %v", result, got, n)
		}
	}
}

// Quotas count every item: a batch of eight on a quota of five stores the
// first five and refuses the last three, each with its own error.
func TestEnqueueBatchQuotaCountsEachItem(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Quota = Quota{Messages: 5} })
	alice := e.dir.add("alice", "a1")
	ch, g := e.group(t, alice)
	var items []EnqueueItem
	for range 8 {
		items = append(items, EnqueueItem{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, 100)})
	}
	res, err := e.svc.EnqueueBatch(ctx, alice.Caller, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if i < 5 && (r.Err != nil || r.Seq != uint64(i+1)) {
			t.Fatalf("item %d: seq %d, %v", i, r.Seq, r.Err)
		}
		var qe *QuotaError
		if i >= 5 && (!errors.Is(r.Err, ErrQuotaExceeded) || !errors.As(r.Err, &qe) || qe.Limit != LimitMessages) {
			t.Fatalf("item %d: %v, want the messages quota", i, r.Err)
		}
	}
	if u := e.checkUsage(t, alice.AccountID); u.Messages != 5 {
		t.Fatalf("usage %+v, want 5 messages", u)
	}
}

// A whole batch sent again, to the other node (a client whose answer was
// lost retries elsewhere): every item answers the original seq, nothing is
// stored twice. On PostgreSQL the nodes are two store handles, each with
// its own per-channel batching.
func TestEnqueueBatchReplayOnOtherNode(t *testing.T) {
	n := newTwoNodes(t, nil)
	alice := n.dir.add("alice", "a1")
	ch1, g1 := n.group(t, alice)
	ch2, g2 := n.group(t, alice)
	var items []EnqueueItem
	for i := range 16 {
		ch, g := ch1, g1
		if i%3 == 0 {
			ch, g = ch2, g2
		}
		items = append(items, EnqueueItem{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, 200)})
	}
	first, err := n.svc.EnqueueBatch(ctx, alice.Caller, items)
	if err != nil {
		t.Fatal(err)
	}
	again, err := n.b.EnqueueBatch(ctx, alice.Caller, items)
	if err != nil {
		t.Fatal(err)
	}
	for i := range items {
		if first[i].Err != nil || again[i].Err != nil {
			t.Fatalf("item %d: %v, then %v", i, first[i].Err, again[i].Err)
		}
		if first[i].Duplicate || !again[i].Duplicate || again[i].Seq != first[i].Seq {
			t.Fatalf("item %d: seq %d (duplicate %v), replayed seq %d (duplicate %v); want the original seq, marked duplicate",
				i, first[i].Seq, first[i].Duplicate, again[i].Seq, again[i].Duplicate)
		}
	}
	for _, ch := range [][]byte{ch1.ID, ch2.ID} {
		ids, seqs := storedSeqs(t, n.db, ch)
		for i := 1; i < len(seqs); i++ {
			if seqs[i] != seqs[i-1]+1 {
				t.Fatalf("gap in the log: %v", seqs)
			}
		}
		seen := map[string]bool{}
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("message %s stored twice", id)
			}
			seen[id] = true
		}
	}
	if ids1, _ := storedSeqs(t, n.db, ch1.ID); len(ids1) != 10 {
		t.Fatalf("channel 1 holds %d messages, want 10", len(ids1))
	}
}

// The batch's own caps refuse the call as a whole and store nothing.
func TestEnqueueBatchCaps(t *testing.T) {
	e := newEnv(t, nil) // payload cap 64 KiB
	alice := e.dir.add("alice", "a1")
	ch, g := e.group(t, alice)
	item := func(size int) EnqueueItem {
		return EnqueueItem{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, size)}
	}
	var tooMany []EnqueueItem
	for range MaxBatchItems + 1 {
		tooMany = append(tooMany, item(10))
	}
	if _, err := e.svc.EnqueueBatch(ctx, alice.Caller, tooMany); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("%d items: %v, want ErrInvalidRequest", len(tooMany), err)
	}
	if _, err := e.svc.EnqueueBatch(ctx, alice.Caller, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("no items: %v, want ErrInvalidRequest", err)
	}
	// Each item fits the cap; together they do not.
	big := []EnqueueItem{item(40 << 10), item(40 << 10)}
	if _, err := e.svc.EnqueueBatch(ctx, alice.Caller, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("two 40 KiB items under a 64 KiB cap: %v, want ErrTooLarge", err)
	}
	if ids, _ := storedSeqs(t, e.db, ch.ID); len(ids) != 0 {
		t.Fatalf("refused batches stored %d messages", len(ids))
	}
	// Exactly at the caps: accepted.
	full := tooMany[:MaxBatchItems]
	res, err := e.svc.EnqueueBatch(ctx, alice.Caller, full)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil || r.Seq != uint64(i+1) {
			t.Fatalf("item %d of a full batch: seq %d, %v", i, r.Seq, r.Err)
		}
	}
}
