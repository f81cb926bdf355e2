package delivery

import (
	"fmt"
	waitutil "github.com/quicprochat/quicprochat/internal/testutil"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
)

// TestLongPollParksWithoutARead: a poll whose read-ahead positions reach
// the head of every channel its device's last read found parks without a
// read (hubview.go), is still woken by the next message, and every change
// that could make a read find something (a message it did not see, a
// cursor-only poll, a membership change of the account or of another of
// its devices, an inbox item, a resync, the LISTEN connection lost) makes
// it read instead.
func TestLongPollParksWithoutARead(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LongPollMax = time.Minute })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	bob2 := e.dir.add("bob", "b2")
	ch, g := e.group(t, alice, bob)
	parks := func() float64 { return testutil.ToFloat64(e.svc.metrics.unreadParks) }
	poll := e.startPoll
	got := func(o chan pollResult) Batch { t.Helper(); return awaitPoll(t, o) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		waitutil.WaitFor(t, 10*time.Second, 2*time.Millisecond, what, cond)
	}
	// parked: n polls wait (counted once they are registered on
	// everything they read, after their read or their view's check).
	parked := func(u user, n int) {
		t.Helper()
		waitFor("a parked poll", func() bool { return testutil.ToFloat64(e.svc.metrics.waiters) == float64(n) })
	}
	at := func(seq uint64) After { return After{Channels: map[string]uint64{string(ch.ID): seq}} }

	// The first poll reads (no view yet) and parks; a message wakes it.
	o := poll(bob, at(ch.HeadSeq))
	parked(bob, 1)
	m1 := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if b := got(o); len(b.Messages) != 1 || b.Messages[0].Seq != m1.Seq {
		t.Fatalf("woken poll: %+v", b)
	}
	if parks() != 0 {
		t.Fatalf("a poll without a view parked without reading (%v)", parks())
	}

	// The next poll, at the head, parks without a read and is woken.
	o = poll(bob, at(m1.Seq))
	parked(bob, 1)
	if parks() != 1 {
		t.Fatalf("the poll at the head read (%v parks without a read)", parks())
	}
	m2 := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if b := got(o); len(b.Messages) != 1 || b.Messages[0].Seq != m2.Seq {
		t.Fatalf("woken poll: %+v", b)
	}

	// A message the device did not see yet: the poll reads and returns it.
	m3 := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if b := got(poll(bob, at(m2.Seq))); len(b.Messages) != 1 || b.Messages[0].Seq != m3.Seq {
		t.Fatalf("poll behind the head: %+v", b)
	}
	// From the cursors (nothing acknowledged): everything since, at once.
	if b := got(poll(bob, After{})); len(b.Messages) != 3 {
		t.Fatalf("poll from the cursors: %+v", b)
	}
	if parks() != 1 {
		t.Fatalf("a poll with something to read parked (%v)", parks())
	}
	// A read-ahead position is not an acknowledgement: the view keeps the
	// cursor, and a later poll from the cursors still reads.
	o = poll(bob, at(m3.Seq))
	parked(bob, 1)
	m4 := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	got(o)
	if b := got(poll(bob, After{})); len(b.Messages) != 4 {
		t.Fatalf("poll from the cursors after parked polls: %+v", b)
	}
	head := m4.Seq

	// Each change below makes the next poll at the head read: it returns
	// what changed, or parks after reading and is woken by what follows.
	fresh := func() {
		t.Helper()
		o := poll(bob, at(head)) // parks without a read; its wake-up read makes a view at the head
		parked(bob, 1)
		m := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
		if b := got(o); len(b.Messages) != 1 {
			t.Fatalf("woken poll %+v", b)
		}
		head = m.Seq
	}
	readNext := func(what string) chan pollResult {
		t.Helper()
		before := parks()
		o := poll(bob, at(head))
		waitFor(what+": the poll read", func() bool {
			return len(o) > 0 || testutil.ToFloat64(e.svc.metrics.waiters) == 1
		})
		if parks() != before {
			t.Fatalf("%s: the poll parked without reading", what)
		}
		return o
	}

	// An inbox item.
	fresh()
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("hi"), []InboxRecipient{{"bob", "b1"}}); err != nil {
		t.Fatal(err)
	}
	b := got(readNext("inbox item"))
	if len(b.Inbox) != 1 {
		t.Fatalf("inbox item: %+v", b)
	}
	if err := e.svc.Ack(ctx, bob.Caller, nil, b.Inbox[0].Seq); err != nil {
		t.Fatal(err)
	}

	// Another device of the account creates a group: the poll reads, so it
	// watches the new channel and its first message wakes it.
	fresh()
	g2 := groupID()
	ch2, _, err := e.svc.CreateGroup(ctx, bob2.Caller, g2, 0)
	if err != nil {
		t.Fatal(err)
	}
	o = readNext("new channel")
	waitFor("the poll to watch the new channel", func() bool { return e.svc.hub.watching(channelKey(ch2.ID)) == 1 })
	e.send(t, bob2, ch2.ID, dt.Application(g2, 0, 10))
	if b := got(o); len(b.Messages) != 1 || string(b.Messages[0].ChannelID) != string(ch2.ID) {
		t.Fatalf("message in the new channel: %+v", b)
	}
	e.drainAll(t, bob)

	// A resync (broadcasts from other nodes may have been lost).
	fresh()
	e.svc.hub.wakeAll()
	o = readNext("resync")
	m := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if b := got(o); len(b.Messages) != 1 || b.Messages[0].Seq != m.Seq {
		t.Fatalf("after a resync: %+v", b)
	}
	head = m.Seq

	// The LISTEN connection was lost and re-established since the view was
	// made (store.ListenState), or is down now.
	for _, state := range []struct {
		up    bool
		flips int64
	}{{true, 2}, {false, 0}} {
		fresh()
		real := e.svc.hub.listen
		e.svc.hub.listen = func() (bool, int64) { return state.up, state.flips }
		o = readNext("LISTEN lost")
		e.svc.hub.listen = real
		m := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
		if b := got(o); len(b.Messages) != 1 || b.Messages[0].Seq != m.Seq {
			t.Fatalf("after LISTEN was lost: %+v", b)
		}
		head = m.Seq
	}
}

// pollResult is the outcome of a FetchWait running in a goroutine.
type pollResult struct {
	b   Batch
	err error
}

// startPoll runs u's FetchWait (a minute at most) from after in a
// goroutine.
func (e *env) startPoll(u user, after After) chan pollResult {
	out := make(chan pollResult, 1)
	go func() {
		b, err := e.svc.FetchWait(ctx, u.Caller, time.Minute, 0, after, nil)
		out <- pollResult{b, err}
	}()
	return out
}

// awaitParked waits until n polls are parked on e's node (counted once
// they are registered on everything they read).
func (e *env) awaitParked(t *testing.T, n int) {
	t.Helper()
	waitutil.WaitFor(t, 10*time.Second, 2*time.Millisecond, fmt.Sprintf("%d parked polls", n), func() bool {
		return testutil.ToFloat64(e.svc.metrics.waiters) == float64(n)
	})
}

// afterIn is a read-ahead position at seq in channel ch.
func afterIn(ch []byte, seq uint64) After { return After{Channels: map[string]uint64{string(ch): seq}} }

// awaitPoll returns the batch of a poll startPoll started, failing the
// test on an error or when it does not return within 10 s.
func awaitPoll(t *testing.T, o chan pollResult) Batch {
	t.Helper()
	select {
	case r := <-o:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.b
	case <-time.After(10 * time.Second):
		t.Fatal("the poll did not return")
	}
	return Batch{}
}
