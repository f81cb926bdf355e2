package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	waitutil "github.com/quicprochat/quicprochat/internal/testutil"
)

// twoNodes is two delivery services on one database: on PostgreSQL two
// store handles (two nodes, each with its own pool and per-channel
// batching); on SQLite one file has one writer, so both share it.
type twoNodes struct {
	*env
	b       *Service
	commits atomic.Int64 // write transactions committed, both nodes
}

func newTwoNodes(t *testing.T, mut func(*Options)) *twoNodes {
	t.Helper()
	tg := storetest.NewTarget(t)
	dbA := tg.Open(t)
	t.Cleanup(func() { _ = dbA.Close() })
	dbB := dbA
	if storetest.Postgres() {
		dbB = tg.Open(t)
		t.Cleanup(func() { _ = dbB.Close() })
	}
	n := &twoNodes{env: newEnvOn(t, dbA, mut)}
	o := Options{DB: dbB, Directory: n.dir, Now: n.clock.Now, EpochsBehind: 2, SweepInterval: -1, Registry: prometheus.NewRegistry(), MaxPayload: 64 << 10}
	if mut != nil {
		mut(&o)
	}
	var err error
	if n.b, err = New(o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.b.Close() })
	for _, db := range []*store.DB{dbA, dbB} {
		db.SetCommitObserver(func(int, time.Duration) { n.commits.Add(1) })
		if dbB == dbA {
			break
		}
	}
	return n
}

// node returns node i%2.
func (n *twoNodes) node(i int) *Service {
	if i%2 == 0 {
		return n.svc
	}
	return n.b
}

// storedSeqs reads a channel's log: seq by message id, in seq order.
func storedSeqs(t *testing.T, db *store.DB, ch []byte) (ids []string, seqs []uint64) {
	t.Helper()
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		ids, seqs = nil, nil
		rows, err := tx.QueryContext(ctx, `SELECT message_id, seq FROM messages WHERE channel_id = ? ORDER BY seq`, ch)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var seq uint64
			if err := rows.Scan(&id, &seq); err != nil {
				return err
			}
			ids, seqs = append(ids, id), append(seqs, seq)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids, seqs
}

// Many senders on two nodes, every message sent twice at once (to both
// nodes, as a client retrying after a lost answer would): each is stored
// exactly once, both sends answer its one seq, the log is contiguous, and
// concurrent enqueues share commits.
func TestEnqueueConcurrentTwoNodesExactlyOnce(t *testing.T) {
	n := newTwoNodes(t, nil)
	owner := n.dir.add("owner", "o1")
	var senders []user
	for i := range 8 {
		senders = append(senders, n.dir.add(fmt.Sprintf("s%d", i), fmt.Sprintf("s%d-dev", i)))
	}
	ch, g := n.group(t, owner, senders...)
	_, before := storedSeqs(t, n.db, ch.ID)
	const each = 40
	var mu sync.Mutex
	acked := map[string][]Enqueued{}
	n.commits.Store(0)
	var wg sync.WaitGroup
	for i, s := range senders {
		for j := range each {
			id := fmt.Sprintf("m-%d-%d", i, j)
			for try := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := n.node(i+j+try).Enqueue(ctx, s.Caller, ch.ID, id, dt.Application(g, 0, 200), nil)
					if err != nil {
						t.Errorf("enqueue %s: %v", id, err)
						return
					}
					mu.Lock()
					acked[id] = append(acked[id], r)
					mu.Unlock()
				}()
			}
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	commits := n.commits.Load()
	ids, seqs := storedSeqs(t, n.db, ch.ID)
	if len(ids)-len(before) != len(senders)*each {
		t.Fatalf("%d messages stored, want %d", len(ids)-len(before), len(senders)*each)
	}
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("seq %d at position %d: not contiguous", seq, i+1)
		}
	}
	for i, id := range ids[len(before):] {
		rs := acked[id]
		if len(rs) != 2 {
			t.Fatalf("%s: %d answers", id, len(rs))
		}
		want := seqs[len(before)+i]
		if rs[0].Seq != want || rs[1].Seq != want || rs[0].Duplicate == rs[1].Duplicate {
			t.Fatalf("%s stored at %d; answers %+v and %+v (want that seq twice, one of them a duplicate)", id, want, rs[0], rs[1])
		}
	}
	// 640 concurrent sends, 320 stored: one commit each would be 320.
	if commits >= int64(len(senders)*each) {
		t.Fatalf("%d commits for %d stored messages: concurrent enqueues were not group-committed", commits, len(senders)*each)
	}
	t.Logf("%s: %d messages in %d commits", storetest.Backend(), len(senders)*each, commits)
}

// Concurrent enqueues of one account over two nodes never take it past its
// quota, though many are decided in one batch.
func TestEnqueueBatchQuotaExactTwoNodes(t *testing.T) {
	const quota, attempts = 25, 80
	n := newTwoNodes(t, func(o *Options) { o.Quota = Quota{Messages: quota} })
	alice := n.dir.add("alice", "a1")
	ch, g := n.group(t, alice)
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := n.node(i).Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), dt.Application(g, 0, 100), nil)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ErrQuotaExceeded):
				refused.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != quota || refused.Load() != attempts-quota {
		t.Fatalf("stored %d, refused %d; want %d stored", ok.Load(), refused.Load(), quota)
	}
	if u := n.checkUsage(t, alice.AccountID); u.Messages != quota {
		t.Fatalf("usage %+v, want %d messages", u, quota)
	}
	if ids, _ := storedSeqs(t, n.db, ch.ID); len(ids) != quota {
		t.Fatalf("%d messages stored, want %d", len(ids), quota)
	}
}

// In one batch, rules apply request by request: a commit moves the epoch
// the messages after it are checked against, a second commit for the old
// epoch is stale, a non-member is refused, and none of that stops the
// others.
func TestEnqueueBatchDecidesInOrder(t *testing.T) {
	n := newTwoNodes(t, nil)
	alice, bob := n.dir.add("alice", "a1"), n.dir.add("bob", "b1")
	mallory := n.dir.add("mallory", "m1")
	ch, g := n.group(t, alice, bob)
	type res struct {
		r   Enqueued
		err error
	}
	var mu sync.Mutex
	results := map[string]res{}
	var wg sync.WaitGroup
	send := func(svc *Service, u user, id string, msg, gi []byte) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := svc.Enqueue(ctx, u.Caller, ch.ID, id, msg, gi)
			mu.Lock()
			results[id] = res{r, err}
			mu.Unlock()
		}()
	}
	for i := range 20 {
		send(n.node(i), alice, fmt.Sprintf("app-%d", i), dt.Application(g, 0, 64), nil)
	}
	send(n.svc, alice, "commit-a", dt.Commit(g, 0), dt.GroupInfo(g, 1))
	send(n.b, bob, "commit-b", dt.Commit(g, 0), dt.GroupInfo(g, 1))
	send(n.svc, mallory, "intruder", dt.Application(g, 0, 64), nil)
	wg.Wait()

	if !errors.Is(results["intruder"].err, ErrNotMember) {
		t.Fatalf("non-member: %v", results["intruder"].err)
	}
	a, b := results["commit-a"], results["commit-b"]
	if (a.err == nil) == (b.err == nil) {
		t.Fatalf("two commits for epoch 0: %v and %v, want exactly one winner", a.err, b.err)
	}
	win := a
	if a.err != nil {
		win = b
	}
	for _, r := range []res{a, b} {
		if r.err != nil && !errors.Is(r.err, ErrStaleEpoch) {
			t.Fatalf("losing commit: %v, want stale epoch", r.err)
		}
	}
	for i := range 20 {
		r := results[fmt.Sprintf("app-%d", i)]
		if r.err != nil {
			t.Fatalf("app-%d: %v", i, r.err)
		}
		// Epoch 0 stays accepted (EpochsBehind 2); the answer carries the
		// channel's epoch after the message.
		want := uint64(0)
		if r.r.Seq > win.r.Seq {
			want = 1
		}
		if r.r.Epoch != want {
			t.Fatalf("app-%d at seq %d (commit at %d): epoch %d", i, r.r.Seq, win.r.Seq, r.r.Epoch)
		}
	}
	if _, epoch, err := n.b.GroupInfo(ctx, bob.Caller, ch.ID); err != nil || epoch != 1 {
		t.Fatalf("group info after the commit: epoch %d, %v", epoch, err)
	}
}

// A caller that has given up before its enqueue is queued leaves nothing
// stored and no gap.
func TestEnqueueCancelledBeforeStoredLeavesNothing(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.dir.add("alice", "a1")
	ch, g := e.group(t, alice)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.svc.Enqueue(cctx, alice.Caller, ch.ID, "gone", dt.Application(g, 0, 10), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("enqueue with a cancelled context: %v", err)
	}
	if ids, _ := storedSeqs(t, e.db, ch.ID); len(ids) != 0 {
		t.Fatalf("stored %v", ids)
	}
	r := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if r.Seq != 1 {
		t.Fatalf("next message at seq %d, want 1 (no gap)", r.Seq)
	}
}

// A message id that is not text is refused before it can share a batch.
func TestEnqueueMessageIDMustBeText(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.dir.add("alice", "a1")
	ch, g := e.group(t, alice)
	for _, id := range []string{"a\x00b", "bad\xff"} {
		if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, id, dt.Application(g, 0, 10), nil); !errors.Is(err, ErrInvalidRequest) {
			t.Fatalf("message id %q: %v, want invalid request", id, err)
		}
	}
}

// A request the database refuses (here a device id PostgreSQL's text
// cannot hold) fails alone: the others of its batch are stored.
func TestEnqueueBatchRefusedStatementFailsOnlyTheCulprit(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.dir.add("alice", "a1")
	bob := e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	odd := bob
	odd.DeviceID = "odd\x00dev" // a member's account, a device id only SQLite stores
	var wg sync.WaitGroup
	var stored atomic.Int64
	for i := range 60 {
		u := alice
		if i%6 == 0 {
			u = odd
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.svc.Enqueue(ctx, u.Caller, ch.ID, fmt.Sprintf("m-%d", i), dt.Application(g, 0, 10), nil)
			switch {
			case err == nil:
				stored.Add(1)
			case u == alice:
				t.Errorf("alice's message %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if ids, seqs := storedSeqs(t, e.db, ch.ID); int64(len(ids)) != stored.Load()+2 || seqs[len(seqs)-1] != uint64(len(seqs)) {
		t.Fatalf("%d rows (%d acknowledged + 2 membership events), last seq %d", len(ids), stored.Load(), seqs[len(seqs)-1])
	}
}

// Many invitees of one channel accepting at once (a fan-out bench joins
// 1 000 that way): every accept succeeds and each writes one JOINED event
// at its own sequence number. On PostgreSQL two accepts used to race for
// the same event seq and the loser failed with a unique violation,
// answered as an internal error, instead of a retried serialization
// conflict.
func TestConcurrentAcceptsOfOneChannel(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.InvitationsPerHour = 1000 })
	owner := e.dir.add("owner", "o1")
	var others []user
	var refs []MemberRef
	for i := range 32 {
		u := e.dir.add(fmt.Sprintf("joiner%d", i), fmt.Sprintf("j%d", i))
		others = append(others, u)
		refs = append(refs, MemberRef{AccountName: u.name})
	}
	ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, groupID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.AddMembers(ctx, owner.Caller, ch.ID, refs); err != nil {
		t.Fatal(err)
	}
	before, err := e.svc.channel(ctx, owner.Caller, ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(others))
	start := make(chan struct{})
	for i, u := range others {
		invs, err := e.svc.ListInvitations(ctx, u.Caller)
		if err != nil || len(invs) != 1 {
			t.Fatalf("%s: %d invitations, %v", u.name, len(invs), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, _, errs[i] = e.svc.AcceptInvitation(ctx, u.Caller, invs[0].ID)
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s accepts: %v", others[i].name, err)
		}
	}
	after, err := e.svc.channel(ctx, owner.Caller, ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := after.HeadSeq-before.HeadSeq, uint64(len(others)); got != want || len(after.Members) != len(others)+1 {
		t.Fatalf("head moved by %d, want %d (one JOINED event each); %d members", got, want, len(after.Members))
	}
	_, seqs := storedSeqs(t, e.db, ch.ID)
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("channel log seqs %v: not contiguous from 1", seqs)
		}
	}
}

// TestEnqueueBatchUsesIndexes: with a thousand accounts, an enqueue batch
// on PostgreSQL finds the sender's usage row by its key. Its generic plans
// used to scan the whole account_usage table twice per batch (the lock and
// the update) while the table held up to a few thousand rows
// (migrations_pg/0015_expand_index_lookups.sql). The server flushes a
// table's scan counters a moment after each batch: the test waits for the
// batches' index scans (two per batch) to show, then checks that no
// sequential scan came with them.
func TestEnqueueBatchUsesIndexes(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL's planner; SQLite looks usage rows up by key")
	}
	e := newEnv(t, nil)
	if err := e.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO account_usage (account_id) SELECT 'filler-' || g FROM generate_series(1, 1000) AS g`); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `ANALYZE account_usage`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	stats := func() (seqScans, idxScans int64) {
		t.Helper()
		err := e.db.ReadTx(ctx, func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, `SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'account_usage'`).Scan(&seqScans, &idxScans)
		})
		if err != nil {
			t.Fatal(err)
		}
		return seqScans, idxScans
	}
	// The set-up's own lookups (by key, on custom plans) first.
	var seq0, idx0 int64 = -1, -1
	waitutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, "the set-up's statistics to settle", func() bool {
		s, i := stats()
		settled := s == seq0 && i == idx0 && i > 0
		seq0, idx0 = s, i
		return settled
	})
	const sends = 20
	for i := range sends {
		e.send(t, alice, ch.ID, dt.Application(g, 0, 10+i))
	}
	waitutil.WaitFor(t, 30*time.Second, 20*time.Millisecond, "the batches' index scans of account_usage", func() bool {
		_, i := stats()
		return i >= idx0+2*sends
	})
	if s, _ := stats(); s != seq0 {
		t.Fatalf("%d enqueue batches scanned account_usage (1 000 rows) %d times; want its primary key only", sends, s-seq0)
	}
}
