package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/client"
	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Database failover: two qpcd nodes on a DSN naming a PostgreSQL primary
// and its streaming standby (target_session_attrs=read-write). While SDK
// clients chat through both nodes and a probe on each node enqueues
// without pause, the primary stops (pg_ctl stop -m immediate) and the
// standby is promoted (pg_ctl promote). The nodes find the new primary by
// themselves (same processes); every request in the gap is answered
// UNAVAILABLE, never INTERNAL, and retried; with synchronous replication
// every acknowledged message is there exactly once afterwards. The short
// mode runs the synchronous setting; the long mode adds the asynchronous
// one, whose losses it counts and reports instead of failing on them.
func TestChaosDatabaseFailover(t *testing.T) {
	bs, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(bs, store.BackendPostgres) {
		t.Skip("PostgreSQL only, and QPC_TEST_BACKENDS leaves it out")
	}
	for _, sync := range pick([]bool{true}, []bool{true, false}) {
		name := map[bool]string{true: "synchronous", false: "asynchronous"}[sync]
		t.Run(name, func(t *testing.T) { databaseFailover(t, sync) })
	}
}

// probe enqueues into a channel of its own on one node, retrying each
// message under its id until acknowledged (as the client outbox does),
// and records every answer.
type probe struct {
	n      *node
	c      *rpcclient.Client
	d      *device
	ch     []byte
	group  []byte
	mu     sync.Mutex
	acked  map[string]uint64
	ackAt  []time.Time
	unavl  int      // UNAVAILABLE answers
	other  []string // anything else: a broken promise
	stop   chan struct{}
	done   chan struct{}
	prefix string
}

func startProbe(t *testing.T, n *node, name string) *probe {
	t.Helper()
	c := n.mustDial(t)
	d, err := registerDevice(c, name)
	if err != nil {
		t.Fatal(err)
	}
	g := make([]byte, 32)
	_, _ = rand.Read(g)
	var cr qpcv1.CreateGroupChannelResponse
	if err := d.call(c, 10*time.Second, "CreateGroupChannel", &qpcv1.CreateGroupChannelRequest{GroupId: g}, &cr); err != nil {
		t.Fatal(err)
	}
	p := &probe{n: n, c: c, d: d, ch: cr.GetChannel().GetChannelId(), group: g, acked: map[string]uint64{},
		stop: make(chan struct{}), done: make(chan struct{}), prefix: fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff)}
	go p.run()
	return p
}

func (p *probe) run() {
	defer close(p.done)
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s-0000-4000-8000-%012d", p.prefix, i)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			var r qpcv1.EnqueueResponse
			err := p.d.call(p.c, 20*time.Second, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: p.ch, MessageId: id, MlsMessage: dt.Application(p.group, 0, 256)}, &r)
			p.mu.Lock()
			switch st := statusOf(err); st {
			case qpcv1.Status_STATUS_OK:
				p.acked[id] = r.GetSeq()
				p.ackAt = append(p.ackAt, time.Now())
			case qpcv1.Status_STATUS_UNAVAILABLE:
				p.unavl++
			default:
				p.other = append(p.other, fmt.Sprintf("%s: %v (status %v)", id, err, st))
			}
			p.mu.Unlock()
			// Paced (and, after a failure, a client's backoff, short to keep
			// the test quick): the gap is measured to within this step.
			time.Sleep(20 * time.Millisecond)
			if err == nil {
				break
			}
		}
	}
}

// firstAckAfter is the time of the first acknowledgement after t0.
func (p *probe) firstAckAfter(t0 time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, at := range p.ackAt {
		if at.After(t0) {
			return at, true
		}
	}
	return time.Time{}, false
}

func (p *probe) ackCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

func (p *probe) finish() {
	close(p.stop)
	<-p.done
}

// check reads the probe's channel from the start: every acknowledged
// message once, at its acknowledged seq, contiguous sequence numbers; it
// returns how many acknowledged messages are missing (lost).
func (p *probe) check(t *testing.T, mustKeep bool) (lost int) {
	t.Helper()
	var got []*qpcv1.ChannelMessage
	var after uint64
	for {
		var r qpcv1.FetchResponse
		if err := p.d.call(p.c, 20*time.Second, "Fetch", &qpcv1.FetchRequest{Limit: 500, After: []*qpcv1.ChannelCursor{{ChannelId: p.ch, Seq: after}}}, &r); err != nil {
			t.Fatalf("%s: fetch: %v", p.d.name, err)
		}
		for _, m := range r.GetMessages() {
			if bytes.Equal(m.GetChannelId(), p.ch) {
				got = append(got, m)
				after = m.GetSeq()
			}
		}
		if !r.GetMore() {
			break
		}
	}
	seen := map[string]uint64{}
	for i, m := range got {
		if m.GetSeq() != got[0].GetSeq()+uint64(i) {
			t.Errorf("%s: message %d has seq %d: sequence numbers not contiguous", p.d.name, i, m.GetSeq())
		}
		if _, dup := seen[m.GetMessageId()]; dup {
			t.Errorf("%s: message %s stored twice", p.d.name, m.GetMessageId())
		}
		seen[m.GetMessageId()] = m.GetSeq()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, seq := range p.acked {
		s, ok := seen[id]
		switch {
		case !ok:
			lost++
			if mustKeep {
				t.Errorf("%s: acknowledged message %s (seq %d) is gone", p.d.name, id, seq)
			}
		case s != seq && mustKeep:
			t.Errorf("%s: message %s acknowledged at seq %d, stored at %d", p.d.name, id, seq, s)
		}
	}
	return lost
}

// groupChatter sends group messages from one SDK client until stopped and
// remembers the id of every message it queued.
type groupChatter struct {
	c     *client.Client
	name  string
	group string // the group's name on this device
	mu    sync.Mutex
	ids   []string
	errs  []error // Send that did not even queue
	last  error
	stop  chan struct{}
	done  chan struct{}
}

func startChatter(c *client.Client, name, group string) *groupChatter {
	ch := &groupChatter{c: c, name: name, group: group, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ch.done)
		for i := 0; ; i++ {
			select {
			case <-ch.stop:
				return
			case <-time.After(50 * time.Millisecond): // people type slower than a loop
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			id, err := c.Send(ctx, group, fmt.Sprintf("%s %d", name, i), "")
			cancel()
			ch.mu.Lock()
			if err != nil {
				ch.last = err
			}
			if id != "" {
				ch.ids = append(ch.ids, id)
			} else {
				ch.errs = append(ch.errs, err)
			}
			ch.mu.Unlock()
		}
	}()
	return ch
}

// lastErr is the error of the last Send that queued but did not deliver
// at once, or of one that did not even queue.
func (ch *groupChatter) lastErr() error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.last
}

// waitForState is waitFor whose failure also shows state().
func waitForState(t *testing.T, within time.Duration, what string, state func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s %s", within, what, state())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ch *groupChatter) count() int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return len(ch.ids)
}

func databaseFailover(t *testing.T, synchronous bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r, err := pgtest.StartReplicated(ctx, pgtest.ReplicationOptions{Synchronous: synchronous})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Error(err)
		}
	})
	if _, err := r.Primary.CreateDatabase(ctx, "qpc"); err != nil {
		t.Fatal(err)
	}
	// Without target_session_attrs: qpcd adds read-write itself for a DSN
	// naming several hosts (else a new connection would land on the
	// standby, and writes there fail). The DSN is in a file, reloaded on
	// SIGHUP after the failover.
	dsn := strings.Replace(r.DSN("qpc"), "&target_session_attrs=read-write", "", 1)
	if strings.Contains(dsn, "target_session_attrs") {
		t.Fatal("pgtest's DSN no longer ends in target_session_attrs=read-write")
	}
	dsnFile := filepath.Join(shortDir(t), "postgres.dsn")
	if err := os.WriteFile(dsnFile, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []*node
	for range 2 {
		n := newNode(t, store.BackendSQLCipher, "QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE="+dsnFile,
			"QPC_POSTGRES_CONNECT_TIMEOUT=2s", "QPC_POSTGRES_STATEMENT_TIMEOUT=5s")
		n.backend = store.BackendPostgres
		n.start()
		nodes = append(nodes, n)
	}
	pids := []int{nodes[0].pid(), nodes[1].pid()}

	alice := sdkClient(t, nodes[0].listen, nodes[0].pin, "alice")
	bob := sdkClient(t, nodes[1].listen, nodes[1].pin, "bob")
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	if k, err := acceptAll(ctx, bob); err != nil || k != 1 {
		t.Fatalf("bob accepted %d invitations: %v", k, err)
	}
	if _, err := bob.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// A joined member sees the group under a local name until a message
	// names it: alice says hello, bob takes the name from his list.
	hello, err := alice.Send(ctx, "team", "hello", "")
	if err != nil {
		t.Fatal(err)
	}
	bobGroup := ""
	waitFor(t, 60*time.Second, "bob in the group", func() bool {
		if _, err := bob.Sync(ctx, 0); err != nil {
			return false
		}
		gs, err := bob.Groups(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			if g.Kind == "group" && g.Status == "active" {
				bobGroup = g.Name
			}
		}
		return bobGroup != ""
	})
	probes := []*probe{startProbe(t, nodes[0], "probe0"), startProbe(t, nodes[1], "probe1")}
	chatters := []*groupChatter{startChatter(alice, "alice", "team"), startChatter(bob, "bob", bobGroup)}
	chatters[0].ids = []string{hello}
	progress := func() string {
		return fmt.Sprintf("(chat %d+%d queued, probes %d+%d acknowledged; chat errors %v %v)", chatters[0].count(), chatters[1].count(),
			probes[0].ackCount(), probes[1].ackCount(), chatters[0].lastErr(), chatters[1].lastErr())
	}
	waitForState(t, 60*time.Second, "chatting through both nodes before the failover", progress, func() bool {
		return chatters[0].count() >= 10 && chatters[1].count() >= 10 && probes[0].ackCount() >= 50 && probes[1].ackCount() >= 50
	})

	stopped := time.Now()
	if err := r.Primary.StopImmediate(ctx); err != nil {
		t.Fatal(err)
	}
	down := time.Now() // acknowledged after this: on the new primary
	if err := r.Standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Since(stopped)
	gaps := make([]time.Duration, len(probes))
	for i, p := range probes {
		waitFor(t, 60*time.Second, fmt.Sprintf("node %d: an enqueue acknowledged on the new primary", i), func() bool {
			at, ok := p.firstAckAfter(down)
			gaps[i] = at.Sub(stopped)
			return ok
		})
	}
	// Chat on for a while on the new primary.
	c0, c1 := chatters[0].count(), chatters[1].count()
	waitForState(t, 60*time.Second, "chatting on after the failover", progress, func() bool {
		return chatters[0].count() >= c0+10 && chatters[1].count() >= c1+10
	})
	for _, ch := range chatters {
		close(ch.stop)
		<-ch.done
		if len(ch.errs) > 0 {
			t.Fatalf("%s: %d messages not even queued, first: %v", ch.name, len(ch.errs), ch.errs[0])
		}
	}
	for _, p := range probes {
		p.finish()
		if len(p.other) > 0 {
			t.Errorf("%s: %d answers other than OK and UNAVAILABLE, first: %s", p.d.name, len(p.other), p.other[0])
		}
	}
	// Each client's outbox drains: whatever failed in the gap was retried.
	outboxFrom := time.Now()
	for _, ch := range chatters {
		waitFor(t, 2*time.Minute, ch.name+"'s outbox delivered", func() bool {
			fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
			_, _ = ch.c.Flush(fctx)
			fcancel()
			ob, err := ch.c.Outbox(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ob {
				if e.Status == client.OutboxFailed {
					t.Fatalf("%s: outbox entry %s failed for good: %s", ch.name, e.MessageID, e.LastError)
				}
				if e.Status != "sent" {
					return false
				}
			}
			return true
		})
	}
	outboxTook := time.Since(outboxFrom)

	// Every message each side sent reaches the other side exactly once.
	lostChat, dupChat := 0, 0
	for i, recv := range chatters {
		from := chatters[1-i]
		want := map[string]bool{}
		for _, id := range from.ids {
			want[id] = true
		}
		got := map[string]int{}
		complete := func() bool {
			sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
			_, _ = recv.c.Sync(sctx, 0)
			scancel()
			h, err := recv.c.History(ctx, recv.group, 1000000)
			if err != nil {
				t.Fatal(err)
			}
			got = map[string]int{}
			for _, m := range h {
				if m.Event == nil && !m.Outgoing {
					got[m.MessageID]++
				}
			}
			for id := range want {
				if got[id] == 0 {
					return false
				}
			}
			return true
		}
		if synchronous {
			waitFor(t, 2*time.Minute, recv.name+" received every message of "+from.name, complete)
		} else {
			deadline := time.Now().Add(30 * time.Second)
			for !complete() && time.Now().Before(deadline) {
				time.Sleep(200 * time.Millisecond) // bounded: asynchronous losses never arrive
			}
		}
		for id := range want {
			if got[id] == 0 {
				lostChat++
			}
		}
		for id, k := range got {
			if k != 1 || !want[id] {
				dupChat++
				t.Errorf("%s holds message %s %d times (sent by %s: %v)", recv.name, id, k, from.name, want[id])
			}
		}
	}
	if synchronous && lostChat > 0 {
		t.Errorf("%d acknowledged chat messages lost with synchronous replication", lostChat)
	}

	lostProbe := 0
	for _, p := range probes {
		lostProbe += p.check(t, synchronous)
	}
	// The rebuilt deployment's DSN, new primary first, reaches the running
	// nodes with SIGHUP.
	swapped := strings.Replace(dsn, fmt.Sprintf("%s:%d,%s:%d", r.Primary.Host, r.Primary.Port, r.Standby.Host, r.Standby.Port),
		fmt.Sprintf("%s:%d,%s:%d", r.Standby.Host, r.Standby.Port, r.Primary.Host, r.Primary.Port), 1)
	if swapped == dsn {
		t.Fatal("could not reorder the DSN's hosts")
	}
	if err := os.WriteFile(dsnFile, []byte(swapped+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, fmt.Sprintf("node %d reloaded the multi-host DSN", i), func() bool {
			return strings.Contains(n.logTail(4<<20), "database credentials reloaded")
		})
		if k := strings.Count(n.logTail(4<<20), "credentials not reloaded"); k > 0 {
			t.Errorf("node %d refused the reloaded DSN", i)
		}
	}

	// No request was answered INTERNAL: qpcd logs each one.
	for i, n := range nodes {
		if k := strings.Count(n.logTail(4<<20), `"rpc: internal error"`); k > 0 {
			t.Errorf("node %d answered %d requests INTERNAL", i, k)
		}
		if !n.alive() || n.pid() != pids[i] {
			t.Errorf("node %d restarted or died; the promise is reconnecting without a restart", i)
		}
		waitFor(t, 30*time.Second, fmt.Sprintf("node %d ready", i), func() bool { return n.readyz() == http.StatusOK })
		waitFor(t, 30*time.Second, fmt.Sprintf("node %d LISTEN up again", i), func() bool {
			m, err := n.metrics()
			return err == nil && m["qpcd_db_listen_up"] == 1 && m["qpcd_db_listen_reconnects_total"] >= 1
		})
	}
	unavl, other := 0, 0
	for _, p := range probes {
		unavl += p.unavl
		other += len(p.other)
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	summary(t, "replication %s; promote returned %s after the primary stopped; first enqueue on the new primary after %s / %s (the two nodes); "+
		"%d probe enqueues answered UNAVAILABLE in the gap, %d otherwise; chat %d+%d messages, outboxes drained %s after the chat stopped; "+
		"lost: %d chat, %d probe (of %d+%d acknowledged); duplicated %d; same processes",
		map[bool]string{true: "synchronous", false: "asynchronous"}[synchronous], promoted.Round(time.Millisecond),
		gaps[0].Round(time.Millisecond), gaps[1].Round(time.Millisecond), unavl, other, len(chatters[0].ids), len(chatters[1].ids),
		outboxTook.Round(time.Millisecond), lostChat, lostProbe, probes[0].ackCount(), probes[1].ackCount(), dupChat)
}
