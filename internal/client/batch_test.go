package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// rpcCounter counts, through the server's response hook, the answered
// Enqueue calls and the items of answered EnqueueBatch calls by status.
type rpcCounter struct {
	mu       sync.Mutex
	enqueue  int
	batches  int
	items    map[qpcv1.Status]int
	replayed int // batch items answered duplicate
}

func (r *rpcCounter) hook(_ context.Context, _ *server.Call, method string, resp proto.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch method {
	case "Enqueue":
		r.enqueue++
	case "EnqueueBatch":
		r.batches++
		for _, it := range resp.(*qpcv1.EnqueueBatchResponse).GetResults() {
			r.items[it.GetStatus()]++
			if it.GetResponse().GetDuplicate() {
				r.replayed++
			}
		}
	}
}

func (r *rpcCounter) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enqueue, r.batches, r.items, r.replayed = 0, 0, map[qpcv1.Status]int{}, 0
}

func (r *rpcCounter) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("%d Enqueue, %d EnqueueBatch with items %v (%d duplicate)", r.enqueue, r.batches, r.items, r.replayed)
}

// TestFlushSendsBatches: messages that waited in the outbox while qpcd was
// down go out in one EnqueueBatch once it is back, each exactly once, in
// order. When the server's rate limit refuses some items of the batch, the
// others are sent and only the refused ones stay pending; later flushes
// send just those.
func TestFlushSendsBatches(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := registered(t, srv, "alice"), registered(t, srv, "bob")
	ctx := ctxT(t)
	team(t, alice, "bob")
	acceptAll(t, bob)
	send(t, alice, "team", "before")
	want := []string{"before"}
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "before" {
		t.Fatalf("bob: %q", got)
	}
	queueWhileDown := func(n int) {
		t.Helper()
		srv.Stop(t)
		base := len(want)
		for i := range n {
			text := fmt.Sprintf("queued %d", base+i)
			short, cancel := context.WithTimeout(ctx, time.Second)
			id, err := alice.Send(short, "team", text, "")
			cancel()
			if id == "" || err == nil {
				t.Fatalf("send while down: id %q, err %v; want a queued message and an error", id, err)
			}
			want = append(want, text)
		}
	}
	var count rpcCounter
	srv.LieInResponse = count.hook

	// Six pending messages, against a server (restarted once: each restart
	// on the same port is a window for another process to take it) on a
	// clock that stands still, with a burst of three: one EnqueueBatch, whose
	// first items go in while the rest are refused one by one
	// (RESOURCE_EXHAUSTED with a retry-after) and stay pending.
	queueWhileDown(6)
	var mu sync.Mutex
	now := time.Now()
	srv.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv.Config.Limits.RateBurst, srv.Config.Limits.RateLimit = 3, 1
	count.reset()
	srv.Start(t)
	rep, err := alice.Flush(ctx)
	var nse *NotSentError
	if !errors.As(err, &nse) || rep.Sent < 1 || rep.Pending < 1 || rep.Sent+rep.Pending != 6 || nse.Pending != rep.Pending {
		t.Fatalf("flush of 6 against a burst of 3: %+v, %v; want some sent, the rest pending", rep, err)
	}
	if count.enqueue != 0 || count.batches != 1 || count.items[qpcv1.Status_STATUS_OK] != rep.Sent || count.items[qpcv1.Status_STATUS_RESOURCE_EXHAUSTED] != rep.Pending {
		t.Fatalf("rate-limited flush made %s; report %+v; want one batch of 6", &count, rep)
	}
	ob, err := alice.Outbox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pending := 0
	for _, e := range ob {
		if e.Status == OutboxPending {
			pending++
			if e.Attempts != 1 || !strings.Contains(e.LastError, "rate limit") {
				t.Fatalf("pending entry %+v: want one attempt and the rate limit as its error", e)
			}
		}
	}
	if pending != rep.Pending {
		t.Fatalf("%d entries pending in the outbox, report says %d", pending, rep.Pending)
	}

	// As the buckets refill, the next flushes send only what is pending.
	left, sent := rep.Pending, 0
	count.reset()
	for try := 0; left > sent; try++ {
		if try == 6 {
			t.Fatalf("after %d flushes %d of %d refused messages sent: %s", try, sent, left, &count)
		}
		mu.Lock()
		now = now.Add(time.Minute)
		mu.Unlock()
		rep, err = alice.Flush(ctx)
		if err != nil && !errors.As(err, &nse) {
			t.Fatal(err)
		}
		sent += rep.Sent
	}
	if n := count.items[qpcv1.Status_STATUS_OK] + count.enqueue; n != left || count.replayed != 0 {
		t.Fatalf("later flushes made %s; want only the %d refused messages sent again, none twice", &count, left)
	}
	mu.Lock()
	now = now.Add(time.Minute) // bob reads from the same address, whose bucket holds three
	mu.Unlock()
	if got := texts(t, bob, "team"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("bob reads %q, want %q", got, want)
	}
}
