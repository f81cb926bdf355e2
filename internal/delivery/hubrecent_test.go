package delivery

import (
	"bytes"
	"database/sql"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/store"
	waitutil "github.com/quicprochat/quicprochat/internal/testutil"
)

// TestWokenPollAnsweredFromMemory: a long poll woken by a message is
// answered from the message just committed, and the answer is exactly
// what a read returns; a message too large to keep, and several messages
// committed together, are delivered whole and in order.
func TestWokenPollAnsweredFromMemory(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LongPollMax = time.Minute; o.MaxPayload = 2 * recentMaxBody })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	answers := func() float64 { return testutil.ToFloat64(e.svc.metrics.memoryServes) }
	at := func(seq uint64) After { return afterIn(ch.ID, seq) }
	poll := func(after After) chan pollResult {
		out := e.startPoll(bob, after)
		e.awaitParked(t, 1)
		return out
	}
	got := func(o chan pollResult) Batch { t.Helper(); return awaitPoll(t, o) }
	// read is what a fetch from after returns (a database read).
	read := func(after After) Batch {
		t.Helper()
		b, err := e.svc.Fetch(ctx, bob.Caller, 0, after)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	head := ch.HeadSeq
	o := poll(at(head))
	m := e.send(t, alice, ch.ID, dt.Application(g, 0, 300))
	b := got(o)
	if want := read(at(head)); len(b.Messages) != 1 || !reflect.DeepEqual(b, want) {
		t.Fatalf("woken poll answered\n%+v\na read returns\n%+v", b, want)
	}
	if answers() != 1 {
		t.Fatalf("%v woken polls answered from memory, want 1", answers())
	}
	head = m.Seq

	// Too large to keep: the woken poll reads.
	before := answers()
	o = poll(at(head))
	m = e.send(t, alice, ch.ID, dt.Application(g, 0, recentMaxBody+1))
	if b := got(o); len(b.Messages) != 1 || b.Messages[0].Seq != m.Seq || len(b.Messages[0].Body) != len(dt.Application(g, 0, recentMaxBody+1)) {
		t.Fatalf("large message: %d messages", len(b.Messages))
	}
	if answers() != before {
		t.Fatal("a message larger than recentMaxBody was answered from memory")
	}
	head = m.Seq

	// Several messages in one call: whatever the wake-up returns, the
	// messages arrive in order, each once.
	o = poll(at(head))
	items := []EnqueueItem{
		{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, 10)},
		{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, 20)},
		{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, 30)},
	}
	res, err := e.svc.EnqueueBatch(ctx, alice.Caller, items)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for b := got(o); ; {
		for _, m := range b.Messages {
			seqs = append(seqs, m.Seq)
		}
		if len(seqs) >= len(items) {
			break
		}
		b = read(at(seqs[len(seqs)-1]))
		if b.empty() {
			t.Fatalf("after %v nothing more to read", seqs)
		}
	}
	for i, r := range res {
		if r.Err != nil || i >= len(seqs) || seqs[i] != r.Seq {
			t.Fatalf("batch delivered %v, enqueued %+v", seqs, res)
		}
	}
}

// TestMemoryAnswerRules drives the hub directly: a woken waiter is answered
// from the kept messages only when the answer is one a read could give.
func TestMemoryAnswerRules(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	msg := func(id []byte, seq uint64, size int) *cachedMessage {
		return &cachedMessage{Message: Message{ChannelID: id, Seq: seq, MessageID: "m", Body: make([]byte, size), Time: now}, expiresMS: now.UnixMilli() + 1000}
	}
	chA, chB := []byte("channel-a-16byte"), []byte("channel-b-16byte")
	type setup struct {
		h     *hub
		w     *waiter
		gen   int
		chans []channelPos
	}
	// newSetup: a waiter that read channel A (and B) at seq 4 and parked.
	newSetup := func() setup {
		h := newHub(newMetrics())
		h.memoryServe = true
		w := h.newWaiter()
		h.add(w, accountKey("acct"))
		h.add(w, deviceKey("dev"))
		gen := h.beginRead(w)
		chans := []channelPos{{id: chA, pos: 4, head: 4}, {id: chB, pos: 4, head: 4}}
		h.addChannel(w, chA, 4)
		h.addChannel(w, chB, 4)
		return setup{h, w, gen, chans}
	}
	answer := func(s setup, limit, budget int) (Batch, []channelPos, bool) {
		return s.h.fromMemory(s.w, s.chans, s.gen, limit, budget, now.UnixMilli())
	}

	t.Run("answered", func(t *testing.T) {
		s := newSetup()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.publishChannel(chA, 6, msg(chA, 6, 10))
		b, moved, ok := answer(s, 100, 1<<20)
		if !ok || len(b.Messages) != 2 || b.Messages[0].Seq != 5 || b.Messages[1].Seq != 6 {
			t.Fatalf("answer %v: %+v", ok, b)
		}
		if moved[0].pos != 6 || moved[0].head != 6 || moved[1].pos != 4 || s.chans[0].pos != 4 {
			t.Fatalf("positions after the answer: %+v (chans %+v)", moved, s.chans)
		}
	})
	refused := func(t *testing.T, s setup, limit, budget int) {
		t.Helper()
		if b, _, ok := answer(s, limit, budget); ok {
			t.Fatalf("answered from memory: %+v", b)
		}
	}
	t.Run("nothing new", func(t *testing.T) { refused(t, newSetup(), 100, 1<<20) })
	t.Run("a watched key published", func(t *testing.T) {
		s := newSetup()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.publish(accountKey("acct")) // a membership change of the account
		refused(t, s, 100, 1<<20)
	})
	t.Run("fence up", func(t *testing.T) {
		s := newSetup()
		lower := s.h.raiseFence()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		refused(t, s, 100, 1<<20)
		lower()
		// Raised and lowered since the read began: still refused; a read
		// made after it may be answered again.
		refused(t, s, 100, 1<<20)
		s.gen = s.h.beginRead(s.w)
		s.h.publishChannel(chA, 6, msg(chA, 6, 10))
		if _, _, ok := answer(s, 100, 1<<20); !ok {
			t.Fatal("refused after the fence was lowered and the waiter read again")
		}
	})
	t.Run("resync", func(t *testing.T) {
		s := newSetup()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.wakeAll()
		refused(t, s, 100, 1<<20)
	})
	t.Run("published out of order", func(t *testing.T) {
		// One batch's messages are published in any order: a gap is
		// refused until it fills.
		s := newSetup()
		s.h.publishChannel(chA, 6, msg(chA, 6, 10))
		refused(t, s, 100, 1<<20)
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.publishChannel(chA, 5, msg(chA, 5, 10)) // twice: kept once
		b, _, ok := answer(s, 100, 1<<20)
		if !ok || len(b.Messages) != 2 || b.Messages[0].Seq != 5 || b.Messages[1].Seq != 6 {
			t.Fatalf("answer %v: %+v", ok, b)
		}
	})
	t.Run("a message without its body", func(t *testing.T) {
		s := newSetup()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.publishChannel(chA, 6, nil) // a membership event, or another node's
		refused(t, s, 100, 1<<20)
	})
	t.Run("one channel kept, another not", func(t *testing.T) {
		s := newSetup()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.publishChannel(chB, 5, nil)
		refused(t, s, 100, 1<<20)
	})
	t.Run("expired", func(t *testing.T) {
		s := newSetup()
		m := msg(chA, 5, 10)
		m.expiresMS = now.UnixMilli()
		s.h.publishChannel(chA, 5, m)
		refused(t, s, 100, 1<<20)
	})
	t.Run("over the limit or the budget", func(t *testing.T) {
		s := newSetup()
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.publishChannel(chA, 6, msg(chA, 6, 10))
		refused(t, s, 1, 1<<20)
		refused(t, s, 100, 15)
	})
	t.Run("no waiter when published", func(t *testing.T) {
		// Nobody has waited on the channel: nothing is kept.
		s := newSetup()
		s.h.remove(s.w)
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		if len(s.h.recent) != 0 || s.h.recentBytes != 0 {
			t.Fatalf("kept %d channels, %d bytes with nobody waiting", len(s.h.recent), s.h.recentBytes)
		}
	})
	t.Run("kept between polls, then not", func(t *testing.T) {
		// A waiter was there at the last publish: the log is kept for
		// recentWanted after it, for the device's next poll, then dropped.
		s := newSetup()
		clock := now
		s.h.now = func() time.Time { return clock }
		s.h.publishChannel(chA, 5, msg(chA, 5, 10))
		s.h.remove(s.w)
		clock = clock.Add(recentWanted - time.Millisecond)
		s.h.publishChannel(chA, 6, msg(chA, 6, 10))
		if l := s.h.recent[channelKey(chA)]; l == nil || len(l.msgs) != 2 {
			t.Fatalf("log between polls: %+v", l)
		}
		clock = clock.Add(2 * time.Millisecond)
		s.h.publishChannel(chA, 7, msg(chA, 7, 10))
		if s.h.recent[channelKey(chA)] != nil || s.h.recentBytes != 0 {
			t.Fatalf("log kept %v after its last waiter: %d bytes", recentWanted, s.h.recentBytes)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		s := newSetup()
		for seq := uint64(5); seq < 5+3*recentPerChannel; seq++ {
			s.h.publishChannel(chA, seq, msg(chA, seq, 100))
		}
		if l := s.h.recent[channelKey(chA)]; len(l.msgs) != recentPerChannel || s.h.recentBytes != 100*recentPerChannel {
			t.Fatalf("kept %d messages, %d bytes", len(l.msgs), s.h.recentBytes)
		}
		// The waiter at 4 needs messages no longer kept.
		refused(t, s, 1000, 1<<20)
		// The node's total is bounded: a message that would exceed it
		// empties its channel's log.
		s.h.recentBytes = recentMaxBytes - 50
		s.h.publishChannel(chA, 5+3*recentPerChannel, msg(chA, 5+3*recentPerChannel, 100))
		if s.h.recent[channelKey(chA)] != nil {
			t.Fatal("a message past the node's bound was kept")
		}
		// Pruned with the channel's head.
		s.h.recentBytes = 0
		s.h.publishChannel(chB, 5, msg(chB, 5, 10))
		s.h.now = func() time.Time { return time.Now().Add(2 * headTTL) }
		s.h.publishChannel(chA, 100, nil)
		if s.h.recent[channelKey(chB)] != nil || s.h.recentBytes != 0 {
			t.Fatalf("an idle channel's log outlived its head: %d bytes", s.h.recentBytes)
		}
	})
}

// TestViewAnswerRules drives the hub directly: a poll arriving after new
// messages is answered from its device's view (hubview.go) only when the
// answer is one a read could give.
func TestViewAnswerRules(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	msg := func(id []byte, seq uint64) *cachedMessage {
		return &cachedMessage{Message: Message{ChannelID: id, Seq: seq, MessageID: "m", Body: make([]byte, 10), Time: now}, expiresMS: now.UnixMilli() + 1000}
	}
	chA, chB := []byte("channel-a-16byte"), []byte("channel-b-16byte")
	bob := Caller{AccountID: "acct", DeviceID: "dev"}
	at := func(a, b uint64) After {
		return After{Channels: map[string]uint64{string(chA): a, string(chB): b}}
	}
	// newHub: bob's poll read both channels at seq 4, waited and was
	// answered (the view at 4), and is between polls.
	newHub := func() *hub {
		h := newHub(newMetrics())
		h.memoryServe = true
		h.now = func() time.Time { return now }
		h.listen = func() (bool, int64) { return true, 0 }
		w := h.newWaiter()
		h.add(w, accountKey(bob.AccountID))
		h.add(w, deviceKey(bob.DeviceID))
		gen := h.beginRead(w)
		h.addChannel(w, chA, 4)
		h.addChannel(w, chB, 4)
		h.publishChannel(chA, 4, msg(chA, 4))
		h.setView(w, bob, []channelPos{{id: chA, pos: 4, head: 4}, {id: chB, pos: 4, head: 4}}, 0, gen)
		h.remove(w)
		return h
	}
	answer := func(h *hub, after After) (Batch, []channelPos, bool) {
		return h.fromView(bob, after, 100, 1<<20, now.UnixMilli())
	}

	t.Run("answered", func(t *testing.T) {
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		h.publishChannel(chA, 6, msg(chA, 6))
		b, chans, ok := answer(h, at(4, 4))
		if !ok || len(b.Messages) != 2 || b.Messages[0].Seq != 5 || b.Messages[1].Seq != 6 {
			t.Fatalf("answer %v: %+v", ok, b)
		}
		if chans[0].pos != 6 || chans[0].head != 6 || chans[1].pos != 4 {
			t.Fatalf("positions after the answer: %+v", chans)
		}
	})
	t.Run("nothing new: parks", func(t *testing.T) {
		b, chans, ok := answer(newHub(), at(4, 4))
		if !ok || !b.empty() || chans[0].pos != 4 {
			t.Fatalf("answer %v: %+v at %+v", ok, b, chans)
		}
	})
	refused := func(t *testing.T, h *hub, after After) {
		t.Helper()
		if b, _, ok := answer(h, after); ok {
			t.Fatalf("answered from the view: %+v", b)
		}
	}
	t.Run("position past the view's head", func(t *testing.T) {
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		h.publishChannel(chA, 6, msg(chA, 6))
		refused(t, h, at(5, 4))
	})
	t.Run("behind the view", func(t *testing.T) {
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		refused(t, h, at(3, 4))
	})
	t.Run("a message without its body", func(t *testing.T) {
		// Another node's message or a membership event, a removal among
		// them: never answered over.
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		h.publishChannel(chA, 6, nil)
		h.publishChannel(chA, 7, msg(chA, 7))
		refused(t, h, at(4, 4))
	})
	t.Run("fence up or raised since the view", func(t *testing.T) {
		h := newHub()
		lower := h.raiseFence()
		h.publishChannel(chA, 5, msg(chA, 5))
		refused(t, h, at(4, 4))
		lower()
		refused(t, h, at(4, 4))
	})
	t.Run("account published", func(t *testing.T) {
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		h.publish(accountKey(bob.AccountID))
		refused(t, h, at(4, 4))
	})
	t.Run("over the limit", func(t *testing.T) {
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		h.publishChannel(chA, 6, msg(chA, 6))
		if b, _, ok := h.fromView(bob, at(4, 4), 1, 1<<20, now.UnixMilli()); ok {
			t.Fatalf("answered over the limit: %+v", b)
		}
	})
	t.Run("one channel kept, another not", func(t *testing.T) {
		h := newHub()
		h.publishChannel(chA, 5, msg(chA, 5))
		h.publishChannel(chB, 5, msg(chB, 5)) // nobody ever waited on B here
		refused(t, h, at(4, 4))
	})
}

// TestPollAnsweredFromItsView: a device between two polls when messages
// arrive gets them on its next poll from memory, by its view, exactly as a
// read returns them; a position past what it was served reads.
func TestPollAnsweredFromItsView(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LongPollMax = time.Minute })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	answers := func() float64 { return testutil.ToFloat64(e.svc.metrics.viewAnswers) }
	at := func(seq uint64) After { return afterIn(ch.ID, seq) }

	// Bob waits and is answered: his view stands at m1.
	o := e.startPoll(bob, at(ch.HeadSeq))
	e.awaitParked(t, 1)
	m1 := e.send(t, alice, ch.ID, dt.Application(g, 0, 100))
	if b := awaitPoll(t, o); len(b.Messages) != 1 || b.Messages[0].Seq != m1.Seq {
		t.Fatalf("first poll: %+v", b.Messages)
	}
	// Two messages while he is between polls.
	e.send(t, alice, ch.ID, dt.Application(g, 0, 200))
	m3 := e.send(t, alice, ch.ID, dt.Application(g, 0, 300))
	want, err := e.svc.Fetch(ctx, bob.Caller, 0, at(m1.Seq))
	if err != nil {
		t.Fatal(err)
	}
	b := awaitPoll(t, e.startPoll(bob, at(m1.Seq)))
	if len(b.Messages) != 2 || !reflect.DeepEqual(b, want) {
		t.Fatalf("poll after m1 answered\n%+v\na read returns\n%+v", b, want)
	}
	if answers() != 1 {
		t.Fatalf("%v polls answered from their view, want 1", answers())
	}
	// The answer moved the view: the next poll parks without a read.
	parks := testutil.ToFloat64(e.svc.metrics.unreadParks)
	o = e.startPoll(bob, at(m3.Seq))
	e.awaitParked(t, 1)
	if testutil.ToFloat64(e.svc.metrics.unreadParks) != parks+1 {
		t.Fatal("the poll after a view answer read")
	}
	m4 := e.send(t, alice, ch.ID, dt.Application(g, 0, 100))
	awaitPoll(t, o)
	// A position past what bob was served is not taken on trust.
	e.send(t, alice, ch.ID, dt.Application(g, 0, 100))
	m6 := e.send(t, alice, ch.ID, dt.Application(g, 0, 100))
	if b := awaitPoll(t, e.startPoll(bob, at(m4.Seq+1))); len(b.Messages) != 1 || b.Messages[0].Seq != m6.Seq {
		t.Fatalf("poll from a position never served: %+v", b.Messages)
	}
	if answers() != 1 {
		t.Fatal("a poll from a position never served was answered from its view")
	}
}

// TestRemovalsRaiseTheFence: a write that takes access away holds the
// fence from before it is queued until after its publish, so no woken poll
// is answered from memory with a message its device may no longer read.
func TestRemovalsRaiseTheFence(t *testing.T) {
	e := newEnv(t, nil)
	if e.db.Backend() == store.BackendPostgres {
		t.Skip("holds SQLite's single writer to keep the removal queued; PostgreSQL has no queue (the same code raises the fence there)")
	}
	alice, bob, carol := e.dir.add("alice", "a1"), e.dir.add("bob", "b1"), e.dir.add("carol", "c1")
	ch, g := e.group(t, alice, bob, carol)
	if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), dt.Commit(g, 0), dt.GroupInfo(g, 1)); err != nil {
		t.Fatal(err)
	}
	fence := func() int {
		e.svc.hub.mu.Lock()
		defer e.svc.hub.mu.Unlock()
		return e.svc.hub.fence
	}
	for _, tc := range []struct {
		name   string
		remove func() error
	}{
		{"RemoveMembers", func() error {
			_, err := e.svc.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}})
			return err
		}},
		{"RevertEpoch", func() error { _, err := e.svc.RevertEpoch(ctx, ch.ID, 0, carol.AccountID, "test"); return err }},
	} {
		// Hold the writer so the removal waits in its queue.
		release, holding := make(chan struct{}), make(chan struct{})
		held := make(chan error, 1)
		go func() {
			held <- e.db.WriteTx(ctx, func(*sql.Tx) error { close(holding); <-release; return nil })
		}()
		<-holding
		done := make(chan error, 1)
		go func() { done <- tc.remove() }()
		waitutil.WaitFor(t, 10*time.Second, time.Millisecond, tc.name+" raising the fence", func() bool { return fence() == 1 })
		close(release)
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if err := <-held; err != nil {
			t.Fatal(err)
		}
		if fence() != 0 {
			t.Fatalf("%s left the fence up", tc.name)
		}
	}
}

// TestLongPollsUnderConcurrentWrites: devices long-poll in loops while two
// senders write to two channels at once (single enqueues and batches) and
// one device is removed from a channel midway. Every device gets every
// message it may read exactly once and in order, whether its polls are
// answered from memory or by reads, and the removed device gets nothing of
// that channel from the removal on.
func TestLongPollsUnderConcurrentWrites(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LongPollMax = time.Minute })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	carol, dave := e.dir.add("carol", "c1"), e.dir.add("dave", "d1")
	ch1, g1 := e.group(t, alice, bob, carol, dave)
	ch2, g2 := e.group(t, alice, bob, carol, dave)
	const perSender = 60
	start := map[string]uint64{string(ch1.ID): ch1.HeadSeq, string(ch2.ID): ch2.HeadSeq}

	type got struct {
		mu   sync.Mutex
		seqs map[string][]uint64
	}
	receive := func(u user, stop <-chan struct{}, out *got, errs chan<- error) {
		after := After{Channels: map[string]uint64{}}
		for id, s := range start {
			after.Channels[id] = s
		}
		for {
			b, err := e.svc.FetchWait(ctx, u.Caller, 200*time.Millisecond, 0, after, nil)
			if err != nil {
				errs <- err
				return
			}
			out.mu.Lock()
			for _, m := range b.Messages {
				id := string(m.ChannelID)
				out.seqs[id] = append(out.seqs[id], m.Seq)
				after.Channels[id] = max(after.Channels[id], m.Seq)
			}
			for _, it := range b.Inbox { // dave's notice of his removal
				after.Inbox = max(after.Inbox, it.Seq)
			}
			out.mu.Unlock()
			select {
			case <-stop:
				if b.empty() {
					errs <- nil
					return
				}
			default:
			}
		}
	}
	stop := make(chan struct{})
	errs := make(chan error, 2)
	var carolGot, daveGot got
	carolGot.seqs, daveGot.seqs = map[string][]uint64{}, map[string][]uint64{}
	go receive(carol, stop, &carolGot, errs)
	go receive(dave, stop, &daveGot, errs)

	var wg sync.WaitGroup
	var removedAt uint64
	for si, u := range []user{alice, bob} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < perSender; k++ {
				id, g := ch1.ID, g1
				if k%2 == 1 {
					id, g = ch2.ID, g2
				}
				if k%5 == 4 { // now and then a batch of three
					items := make([]EnqueueItem, 3)
					for i := range items {
						items[i] = EnqueueItem{ChannelID: id, MessageID: newMsgID(), MLSMessage: dt.Application(g, 0, 40+i)}
					}
					if _, err := e.svc.EnqueueBatch(ctx, u.Caller, items); err != nil {
						t.Error(err)
						return
					}
				} else if _, err := e.svc.Enqueue(ctx, u.Caller, id, newMsgID(), dt.Application(g, 0, 40), nil); err != nil {
					t.Error(err)
					return
				}
				if si == 0 && k == perSender/2 {
					if _, err := e.svc.RemoveMembers(ctx, alice.Caller, ch2.ID, []MemberRef{{AccountName: "dave"}}); err != nil {
						t.Error(err)
						return
					}
					c, err := e.svc.channel(ctx, alice.Caller, ch2.ID)
					if err != nil {
						t.Error(err)
						return
					}
					removedAt = c.HeadSeq // at or after the REMOVED event
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if t.Failed() {
		return
	}
	heads := map[string]uint64{}
	for _, ch := range [][]byte{ch1.ID, ch2.ID} {
		c, err := e.svc.channel(ctx, alice.Caller, ch)
		if err != nil {
			t.Fatal(err)
		}
		heads[string(ch)] = c.HeadSeq
	}
	contiguous := func(who, ch string, seqs []uint64, from, to uint64) {
		t.Helper()
		want := from + 1
		for _, s := range seqs {
			if s != want {
				t.Fatalf("%s in %s: got seq %d, want %d (all: %v)", who, ch, s, want, seqs)
			}
			want++
		}
		if want != to+1 {
			t.Fatalf("%s in %s: got up to %d, want up to %d", who, ch, want-1, to)
		}
	}
	// carol: everything in both channels (the REMOVED event included).
	contiguous("carol", "ch1", carolGot.seqs[string(ch1.ID)], start[string(ch1.ID)], heads[string(ch1.ID)])
	contiguous("carol", "ch2", carolGot.seqs[string(ch2.ID)], start[string(ch2.ID)], heads[string(ch2.ID)])
	// dave: everything in ch1; in ch2 a gapless prefix that ends before
	// the removal.
	contiguous("dave", "ch1", daveGot.seqs[string(ch1.ID)], start[string(ch1.ID)], heads[string(ch1.ID)])
	d2 := daveGot.seqs[string(ch2.ID)]
	last := start[string(ch2.ID)]
	if len(d2) > 0 {
		last = d2[len(d2)-1]
	}
	contiguous("dave", "ch2", d2, start[string(ch2.ID)], last)
	if last >= removedAt {
		t.Fatalf("dave, removed by seq %d of ch2, got ch2 messages up to %d", removedAt, last)
	}
	t.Logf("%s: %v woken polls answered from memory; dave read ch2 up to %d, removed at or before %d",
		e.db.Backend(), testutil.ToFloat64(e.svc.metrics.memoryServes), last, removedAt)
}

// TestRemoteRemovalNeverAnsweredFromMemory: members removed on another
// node, whose publish has not reached this node, are not handed the
// channel's next message from memory when this node commits it. Bob polls
// from where he stands: the removal holds the seq before the message,
// which recent never has, so his woken poll reads, and the read no longer
// has the channel. Dave polls from a position he made up, the seq his
// removal will get, so that the message would follow it directly: a
// position beyond the head his read saw is never answered from memory.
// Node B's broadcasts are dropped here, as if its NOTIFY were late (on
// SQLite the two nodes share one file and have no broadcast at all).
func TestRemoteRemovalNeverAnsweredFromMemory(t *testing.T) {
	n := newTwoNodes(t, func(o *Options) { o.LongPollMax = time.Minute })
	n.b.hub.broadcast = nil
	alice, bob, carol, dave := n.dir.add("alice", "a1"), n.dir.add("bob", "b1"), n.dir.add("carol", "c1"), n.dir.add("dave", "d1")
	ch, g := n.group(t, alice, bob, carol, dave)
	answers := func() float64 { return testutil.ToFloat64(n.svc.metrics.memoryServes) }
	parked := func(want int) { n.awaitParked(t, want) } // on node A
	at := func(seq uint64) After { return afterIn(ch.ID, seq) }

	// First, that this set-up answers from memory at all.
	o := n.startPoll(carol, at(ch.HeadSeq))
	parked(1)
	m1 := n.send(t, alice, ch.ID, dt.Application(g, 0, 100))
	if b := awaitPoll(t, o); len(b.Messages) != 1 || b.Messages[0].Seq != m1.Seq || answers() != 1 {
		t.Fatalf("carol's poll: %+v, %v answers from memory, want m1 from memory", b.Messages, answers())
	}

	bobPoll, davePoll, carolPoll := n.startPoll(bob, at(m1.Seq)), n.startPoll(dave, at(m1.Seq+2)), n.startPoll(carol, at(m1.Seq))
	parked(3)
	if _, err := n.b.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}, {AccountName: "dave"}}); err != nil {
		t.Fatal(err)
	}
	m2 := n.send(t, alice, ch.ID, dt.Application(g, 0, 100)) // on node A
	if m2.Seq != m1.Seq+3 {
		t.Fatalf("m2 at seq %d, want %d (the two removals between)", m2.Seq, m1.Seq+3)
	}
	for name, o := range map[string]chan pollResult{"bob": bobPoll, "dave": davePoll} {
		b := awaitPoll(t, o)
		for _, m := range b.Messages {
			if bytes.Equal(m.ChannelID, ch.ID) {
				t.Fatalf("%s, removed on node B, was handed seq %d of the channel on node A", name, m.Seq)
			}
		}
		if len(b.Inbox) != 1 || b.Inbox[0].Kind != InboxMembership {
			t.Fatalf("%s's poll: %+v, want only the notice of the removal", name, b)
		}
	}
	// Carol reads the removals and m2, from the database.
	if b := awaitPoll(t, carolPoll); len(b.Messages) != 3 || b.Messages[0].SenderDevice != EventSender || b.Messages[2].Seq != m2.Seq {
		t.Fatalf("carol's poll after the removals: %+v", b.Messages)
	}
	if answers() != 1 {
		t.Fatalf("%v polls answered from memory, want only the first", answers())
	}
}

// TestParkedPositionStaysWhereTheViewWas: a device's view lets its next
// poll park without a read, but only at the heads the view was taken at
// (where the device was last served). Here dave is removed on node B and
// node A has applied the removal's new head but not yet the publish of
// dave's account key, which would drop the view; dave claims a position
// at the removal's seq, which he was never served. Parking him there would
// let node A's next message, which follows it directly, be answered from
// memory; he reads instead, and the read no longer has the channel.
func TestParkedPositionStaysWhereTheViewWas(t *testing.T) {
	n := newTwoNodes(t, func(o *Options) { o.LongPollMax = time.Minute })
	n.b.hub.broadcast = nil
	alice, dave := n.dir.add("alice", "a1"), n.dir.add("dave", "d1")
	ch, g := n.group(t, alice, dave)
	parked := func(want int) { n.awaitParked(t, want) } // on node A
	at := func(seq uint64) After { return afterIn(ch.ID, seq) }
	o := n.startPoll(dave, at(ch.HeadSeq))
	parked(1)
	m1 := n.send(t, alice, ch.ID, dt.Application(g, 0, 100))
	if b := awaitPoll(t, o); len(b.Messages) != 1 || b.Messages[0].Seq != m1.Seq {
		t.Fatalf("dave's first poll: %+v", b.Messages)
	}
	if _, err := n.b.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "dave"}}); err != nil {
		t.Fatal(err)
	}
	removal := m1.Seq + 1
	// Half of node B's late NOTIFY: the channel's head, not dave's key.
	n.svc.hub.applyRemote(topicChannel, fmt.Sprintf("%x:%d", ch.ID, removal), false)
	unread := testutil.ToFloat64(n.svc.metrics.unreadParks)
	o = n.startPoll(dave, at(removal))
	select {
	case r := <-o:
		o <- r // answered at once (a read): fine
	case <-time.After(200 * time.Millisecond):
	}
	m2 := n.send(t, alice, ch.ID, dt.Application(g, 0, 100)) // on node A
	b := awaitPoll(t, o)
	for _, m := range b.Messages {
		if bytes.Equal(m.ChannelID, ch.ID) {
			t.Fatalf("dave, removed at seq %d, was handed seq %d (m2 %d) from a position he was never served", removal, m.Seq, m2.Seq)
		}
	}
	if testutil.ToFloat64(n.svc.metrics.unreadParks) != unread {
		t.Fatal("dave's poll parked without a read at a position beyond his view")
	}
}
