package chaos

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Per-call deadlines of the crash scenario's senders: what a careful
// client does, so a connection to a killed qpcd is given up on and
// redialled instead of waiting for QUIC's idle timeout.
const (
	senderCallTimeout = 2 * time.Second
	senderDialTimeout = 2 * time.Second
	// recoveryLimit: every sender must have an acknowledgement from a
	// restarted qpcd within this long of its ready line.
	recoveryLimit = 30 * time.Second
)

// channelSet is the crash scenario's group channels and their senders.
type channelSet struct {
	ids    [][]byte // channel ids
	groups [][]byte // MLS group ids
}

// ackRecord is what a sender was told for one message id.
type ackRecord struct {
	channel int
	seq     uint64
}

// crashLoad is 32 senders enqueueing with unique message ids, each
// retrying its current message, under the same id, until acknowledged.
type crashLoad struct {
	n        *node
	chans    channelSet
	senders  []*device
	stop     atomic.Bool // finish the current message, then return
	abort    atomic.Bool // return at once (the test failed)
	wg       sync.WaitGroup
	mu       sync.Mutex
	acked    map[string]ackRecord
	lastAck  []time.Time // per sender
	dupReply int         // acknowledgements that said "duplicate" (the first reply was lost)
	retries  int         // attempts repeated under the same id
	fatal    []error
}

func (l *crashLoad) ackCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// allAckedSince reports whether every sender has an acknowledgement after t.
func (l *crashLoad) allAckedSince(t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.lastAck {
		if !a.After(t) {
			return false
		}
	}
	return true
}

func (l *crashLoad) fail(err error) {
	l.mu.Lock()
	l.fatal = append(l.fatal, err)
	l.mu.Unlock()
}

// run is sender i's loop.
func (l *crashLoad) run(i int) {
	defer l.wg.Done()
	d := l.senders[i]
	ch := i % len(l.chans.ids)
	var cl *rpcclient.Client
	defer func() {
		if cl != nil {
			_ = cl.Close()
		}
	}()
	backoff := func(attempt int) { time.Sleep(time.Duration(min(attempt, 10)) * 20 * time.Millisecond) }
	for !l.stop.Load() {
		id := uuid.Must(uuid.NewV7()).String()
		req := &qpcv1.EnqueueRequest{ChannelId: l.chans.ids[ch], MessageId: id,
			MlsMessage: dt.Application(l.chans.groups[ch], 0, 64+mrand.IntN(512))}
		for attempt := 0; ; attempt++ {
			if attempt > 0 {
				l.mu.Lock()
				l.retries++
				l.mu.Unlock()
				backoff(attempt)
			}
			if l.abort.Load() {
				return
			}
			if attempt > 2000 {
				l.fail(fmt.Errorf("sender %d: message %s not acknowledged after 2000 attempts", i, id))
				return
			}
			if cl == nil {
				ctx, cancel := callCtx(senderDialTimeout)
				c, err := l.n.dial(ctx, "")
				cancel()
				if err != nil {
					continue
				}
				cl = c
			}
			var resp qpcv1.EnqueueResponse
			err := d.call(cl, senderCallTimeout, "Enqueue", req, &resp)
			switch st := statusOf(err); {
			case err == nil:
				l.mu.Lock()
				if prev, ok := l.acked[id]; ok && prev.seq != resp.GetSeq() {
					l.fatal = append(l.fatal, fmt.Errorf("message %s acknowledged at seq %d and again at %d", id, prev.seq, resp.GetSeq()))
				}
				l.acked[id] = ackRecord{channel: ch, seq: resp.GetSeq()}
				l.lastAck[i] = time.Now()
				if resp.GetDuplicate() {
					l.dupReply++
				}
				l.mu.Unlock()
			case st == qpcv1.Status_STATUS_UNAUTHENTICATED:
				_ = d.login(cl, senderCallTimeout)
				continue
			case st == qpcv1.Status_STATUS_UNAVAILABLE || st == qpcv1.Status_STATUS_DRAINING || st == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED:
				continue
			case st >= 0:
				l.fail(fmt.Errorf("sender %d: message %s refused for good: %w", i, id, err))
				return
			default: // connection lost or call deadline: a new connection
				_ = cl.Close()
				cl = nil
				continue
			}
			break
		}
	}
}

// setupChannels registers an owner and the senders and makes nch group
// channels, sender i a member of channel i % nch.
func setupChannels(t *testing.T, n *node, senders, nch int) (*device, []*device, channelSet) {
	t.Helper()
	c := n.mustDial(t)
	owner, err := registerDevice(c, "owner")
	if err != nil {
		t.Fatal(err)
	}
	var cs channelSet
	for range nch {
		g := make([]byte, 32)
		_, _ = rand.Read(g)
		var cr qpcv1.CreateGroupChannelResponse
		if err := owner.call(c, 10*time.Second, "CreateGroupChannel", &qpcv1.CreateGroupChannelRequest{GroupId: g}, &cr); err != nil {
			t.Fatal(err)
		}
		cs.ids, cs.groups = append(cs.ids, cr.GetChannel().GetChannelId()), append(cs.groups, g)
	}
	devs := make([]*device, senders)
	members := make([][]*qpcv1.MemberRef, nch)
	for i := range devs {
		if devs[i], err = registerDevice(c, fmt.Sprintf("sender%02d", i)); err != nil {
			t.Fatal(err)
		}
		members[i%nch] = append(members[i%nch], &qpcv1.MemberRef{AccountName: devs[i].name})
	}
	for k, id := range cs.ids {
		if err := owner.call(c, 10*time.Second, "AddMembers", &qpcv1.AddMembersRequest{ChannelId: id, Members: members[k]}, &qpcv1.AddMembersResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	// Joining is by consent: each sender accepts its invitation.
	for _, d := range devs {
		if err := acceptInvitations(c, d); err != nil {
			t.Fatal(err)
		}
	}
	return owner, devs, cs
}

// acceptInvitations accepts every pending invitation of d's account.
func acceptInvitations(c *rpcclient.Client, d *device) error {
	var li qpcv1.ListInvitationsResponse
	if err := d.call(c, 10*time.Second, "ListInvitations", &qpcv1.ListInvitationsRequest{}, &li); err != nil {
		return fmt.Errorf("%s: list invitations: %w", d.name, err)
	}
	for _, in := range li.GetInvitations() {
		if err := d.call(c, 10*time.Second, "AcceptInvitation", &qpcv1.AcceptInvitationRequest{InvitationId: in.GetInvitationId()}, &qpcv1.AcceptInvitationResponse{}); err != nil {
			return fmt.Errorf("%s: accept: %w", d.name, err)
		}
	}
	return nil
}

// readChannels reads every channel from the start as reader (who never
// acknowledges): per channel, seq -> message id in order of arrival.
func readChannels(t *testing.T, n *node, reader *device, cs channelSet) []map[uint64][]string {
	t.Helper()
	c := n.mustDial(t)
	if err := reader.login(c, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	out := make([]map[uint64][]string, len(cs.ids))
	after := make([]*qpcv1.ChannelCursor, len(cs.ids))
	index := map[string]int{}
	for k, id := range cs.ids {
		out[k] = map[uint64][]string{}
		after[k] = &qpcv1.ChannelCursor{ChannelId: id}
		index[string(id)] = k
	}
	for {
		var r qpcv1.FetchResponse
		if err := reader.call(c, 30*time.Second, "Fetch", &qpcv1.FetchRequest{Limit: 1000, After: after}, &r); err != nil {
			t.Fatalf("read back: %v", err)
		}
		for _, m := range r.GetMessages() {
			k, ok := index[string(m.GetChannelId())]
			if !ok {
				t.Fatalf("read back: message on an unknown channel %x", m.GetChannelId())
			}
			out[k][m.GetSeq()] = append(out[k][m.GetSeq()], m.GetMessageId())
			after[k].Seq = max(after[k].Seq, m.GetSeq())
		}
		if !r.GetMore() || len(r.GetMessages()) == 0 {
			return out
		}
	}
}

// checkLog verifies the promise: every acknowledged message is present
// exactly once at the seq it was acknowledged with, seqs are contiguous
// from 1, no message id appears twice. It returns the figures.
func checkLog(t *testing.T, logs []map[uint64][]string, acked map[string]ackRecord) (stored, lost, dups int) {
	t.Helper()
	where := map[string][]string{} // message id -> places it was found
	for k, log := range logs {
		seqs := make([]uint64, 0, len(log))
		for s := range log {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Errorf("channel %d: seqs not contiguous from 1: position %d holds seq %d", k, i, s)
				break
			}
		}
		for _, s := range seqs {
			if len(log[s]) != 1 {
				t.Errorf("channel %d: seq %d returned %d times", k, s, len(log[s]))
			}
			for _, id := range log[s] {
				where[id] = append(where[id], fmt.Sprintf("%d/%d", k, s))
				stored++
			}
		}
	}
	for id, places := range where {
		if len(places) > 1 {
			dups++
			if dups <= 5 {
				t.Errorf("message %s stored %d times: %v", id, len(places), places)
			}
		}
	}
	for id, a := range acked {
		places := where[id]
		want := fmt.Sprintf("%d/%d", a.channel, a.seq)
		if len(places) == 0 {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged message %s (channel %d seq %d) is missing", id, a.channel, a.seq)
			}
		} else if places[0] != want {
			t.Errorf("message %s acknowledged at %s, stored at %v", id, want, places)
		}
	}
	return stored, lost, dups
}

// Crash: 32 senders over 4 channels; qpcd is killed with SIGKILL at random
// moments and restarted on the same data (and database); the senders
// retry under the same message ids. Every acknowledged message must be
// there exactly once at its acknowledged seq, seqs contiguous, and the
// SQLCipher file must pass integrity_check after every kill.
func TestChaosCrash(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		const senders, nch = 32, 4
		rounds := pick(3, 20)
		perRound := pick(150, 400) // acknowledgements between kills, at least
		rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 21))
		// The owner invites all senders at once: above the hourly default.
		n := newNode(t, backend, fmt.Sprintf("QPC_INVITATIONS_MAX_PER_HOUR=%d", 2*senders))
		n.start()
		owner, devs, cs := setupChannels(t, n, senders, nch)
		l := &crashLoad{n: n, chans: cs, senders: devs, acked: map[string]ackRecord{}, lastAck: make([]time.Time, senders)}
		for i := range senders {
			l.wg.Add(1)
			go l.run(i)
		}
		defer func() {
			l.abort.Store(true)
			l.wg.Wait()
		}()

		var recoveries []time.Duration
		var restarts []time.Duration
		for r := range rounds {
			base := l.ackCount()
			waitFor(t, 2*time.Minute, fmt.Sprintf("round %d: %d more acknowledgements", r, perRound), func() bool {
				return l.ackCount() >= base+perRound || len(l.fatalErrs()) > 0
			})
			if errs := l.fatalErrs(); len(errs) > 0 {
				t.Fatalf("round %d: %v", r, errs[0])
			}
			// The kill lands at a random moment within the next 300 ms of
			// traffic, not right after a condition the senders control.
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
			n.kill9()
			n.integrityCheck(t)
			restarts = append(restarts, n.start())
			ready := time.Now()
			waitFor(t, recoveryLimit, fmt.Sprintf("round %d: all %d senders acknowledged by the restarted qpcd", r, senders), func() bool {
				return l.allAckedSince(ready)
			})
			recoveries = append(recoveries, time.Since(ready))
		}
		l.stop.Store(true)
		done := make(chan struct{})
		go func() { l.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("senders did not finish their last messages within a minute")
		}
		if errs := l.fatalErrs(); len(errs) > 0 {
			t.Fatalf("%d sender failures, first: %v", len(errs), errs[0])
		}
		logs := readChannels(t, n, owner, cs)
		stored, lost, dups := checkLog(t, logs, l.acked)
		if err := n.stop(); err != nil {
			t.Errorf("qpcd exit after SIGTERM: %v", err)
		}
		n.integrityCheck(t)
		summary(t, "rounds %d, acknowledged %d, stored %d (unacknowledged but committed %d), lost %d, duplicated %d, "+
			"duplicate replies %d, retries %d, restart to ready max %s, recovery (ready to every sender acknowledged) max %s mean %s",
			rounds, len(l.acked), stored, stored-len(l.acked)+lost, lost, dups, l.dupReply, l.retries,
			maxDur(restarts), maxDur(recoveries), meanDur(recoveries))
	})
}

func (l *crashLoad) fatalErrs() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.fatal...)
}

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m.Round(time.Millisecond)
}

func meanDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return (s / time.Duration(len(ds))).Round(time.Millisecond)
}
