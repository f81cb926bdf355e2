package client

import (
	"bytes"
	"database/sql"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// TestStoreDetectsDuplicatesAndGaps feeds store() fetch responses directly:
// a repeat (lost ack) is recognised, a jump in sequence numbers is
// recorded as a gap that needs an external rejoin.
func TestStoreDetectsDuplicatesAndGaps(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c := registered(t, srv, "gina")
	ch := bytes.Repeat([]byte{1}, 16)
	msg := func(seq uint64) *qpcv1.ChannelMessage {
		return &qpcv1.ChannelMessage{ChannelId: ch, Seq: seq, MessageId: "m" + string(rune('0'+seq)), MlsMessage: []byte{1}}
	}
	ctx := ctxT(t)
	var rep SyncReport
	if _, err := c.store(ctx, &qpcv1.FetchResponse{Messages: []*qpcv1.ChannelMessage{msg(1), msg(2)}}, &rep); err != nil {
		t.Fatal(err)
	}
	if _, err := c.store(ctx, &qpcv1.FetchResponse{Messages: []*qpcv1.ChannelMessage{msg(2), msg(3), msg(7)}}, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Messages != 4 || rep.Duplicates != 1 || len(rep.Gaps) != 1 || rep.Gaps[0].From != 4 || rep.Gaps[0].To != 6 {
		t.Fatalf("report %+v", rep)
	}
	cur, err := c.Cursors(ctx)
	if err != nil || len(cur) != 1 || cur[0].Seq != 7 || cur[0].Gap == nil || cur[0].Gap.From != 4 {
		t.Fatalf("cursors %+v, %v", cur, err)
	}
}

// TestSyncLongPollAndInbox: FetchWait wakes when a message arrives; inbox
// items are stored and acknowledged (the server forgets them).
func TestSyncLongPollAndInbox(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	ch, group := rawChannel(t, alice, bob)
	ctx := ctxT(t)
	type result struct {
		rep SyncReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := bob.Sync(ctx, 20*time.Second)
		done <- result{r, err}
	}()
	bobID, _ := bob.Identity(ctx)
	if err := alice.call(ctx, "SendToInbox", &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_WELCOME,
		Payload:    deliverytest.Welcome(),
		Recipients: []*qpcv1.InboxRecipient{{AccountName: "bob", DeviceId: bobID.DeviceID}}}, &qpcv1.SendToInboxResponse{}); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("long poll did not wake")
	}
	if r.err != nil || r.rep.Inbox != 1 {
		t.Fatalf("sync: %+v, %v", r.rep, r.err)
	}
	if _, err := alice.QueueMLS(ctx, ch, deliverytest.Application(group, 0, 10), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.rep, r.err = bob.Sync(ctx, 0)
	if r.err != nil || r.rep.Messages != 1 || r.rep.Inbox != 0 {
		t.Fatalf("second sync: %+v, %v (the acked inbox item came back?)", r.rep, r.err)
	}
	var n int
	_ = bob.db.ReadTx(ctx, func(tx *sql.Tx) error { return tx.QueryRow(`SELECT count(*) FROM inbox`).Scan(&n) })
	if n != 0 {
		t.Fatalf("%d inbox items left; a Welcome for none of our KeyPackages is dropped once processed", n)
	}
}

// TestLongPollAcrossDrain: a device waiting in FetchWait when qpcd drains
// and restarts reconnects by itself and receives what is sent afterwards.
func TestLongPollAcrossDrain(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	bob.conn.backoff = Backoff{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond, MaxAttempts: 100}.withDefaults()
	ch, group := rawChannel(t, alice, bob)
	ctx := ctxT(t)
	got := make(chan SyncReport, 1)
	errs := make(chan error, 1)
	go func() {
		for {
			rep, err := bob.Sync(ctx, 20*time.Second)
			if err != nil {
				errs <- err
				return
			}
			if rep.Messages > 0 {
				got <- rep
				return
			}
		}
	}()
	srv.Stop(t)
	srv.Start(t)
	if _, err := alice.QueueMLS(ctx, ch, deliverytest.Application(group, 0, 10), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case rep := <-got:
		if rep.Messages != 1 {
			t.Fatalf("report %+v", rep)
		}
	case err := <-errs:
		t.Fatalf("long poll across the drain: %v", err)
	case <-ctx.Done():
		t.Fatal("the message sent after the restart never arrived")
	}
}
