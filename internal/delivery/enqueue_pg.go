package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicprochat/quicprochat/internal/store"
)

// Group commit of enqueues on PostgreSQL.
//
// The enqueues of one channel are serialised by the channel's row lock: that
// is what keeps its log in order with no gap, on every node. With one
// transaction per enqueue a busy channel was served one lock, eight round
// trips, one commit and one WAL flush at a time (about 400 messages/s on
// the benchmark machine, docs/benchmarks.md). So a node queues the enqueues
// it holds for a channel and one runner per channel stores them together,
// the way the SQLite writer batches (internal/store/writer.go):
//
//  1. lock the channel row (FOR UPDATE; another node's batch waits here);
//  2. one read: which callers are members, and which message ids are stored;
//  3. lock the senders' usage rows (in account order, after the channel, as
//     every enqueue does);
//  4. decide each request in arrival order, in Go, with the rules SQLite
//     uses (decideEnqueue, checkQuota), each accepted message moving the
//     head, the epoch and the sender's usage the next request sees;
//  5. one statement stores every accepted message (and a commit's
//     GroupInfo) and moves the channel's head and the senders' usage; then
//     one COMMIT;
//  6. one wake-up for the batch's new head, here and (one NOTIFY) on the
//     other nodes.
//
// Steps 1-3 are one call of the server-side function qpc_enqueue_lock
// (migration 0013), which runs the same statements inside the database
// server and decides nothing. So a batch is four round trips (BEGIN, the
// function, the store statement, COMMIT) and one commit whatever it holds,
// where one transaction per enqueue took eight each and the first batched
// version six. A request refused
// by a rule (stale epoch, quota, not a member, an id of another sender) gets
// its own error and takes nothing from the others; an error of the
// transaction (the database unreachable, the commit's outcome unknown) is
// every request's error and none of them is stored: the clients retry
// under the same message ids, which the next batch answers with the
// original seqs if the commit did happen.

// Bounds of one batch: how many enqueues, and how many payload bytes
// (at least one enqueue, whatever its size).
const (
	pgBatchMax      = 256
	pgBatchMaxBytes = 8 << 20
)

// Request states, as the SQLite writer's: the runner takes a request right
// before its batch starts; a caller whose context ends first cancels it.
const (
	pgQueued int32 = iota
	pgTaken
	pgCancelled
)

// pgEnqueue is one Enqueue waiting for its channel's runner.
type pgEnqueue struct {
	ctx       context.Context
	c         Caller
	messageID string
	msg       []byte
	groupInfo []byte
	tree      []byte // the ratchet tree beside groupInfo; nil: none
	req       enqueueRequest
	now       time.Time
	state     atomic.Int32
	done      chan pgEnqueued // buffered 1
}

type pgEnqueued struct {
	res  Enqueued
	kind int
	err  error
}

// enqueueBatcher holds, per channel, the enqueues waiting for the channel's
// runner; a channel has a runner while it has an entry.
type enqueueBatcher struct {
	mu     sync.Mutex
	queues map[string][]*pgEnqueue
}

// queueEnqueuePG queues one message for its channel's runner and returns
// at once; wait gives the outcome. Messages one goroutine queues for a
// channel are decided in that order. If ctx ends before the runner took
// the request it is never stored; once taken, wait returns the real
// outcome.
func (s *Service) queueEnqueuePG(ctx context.Context, c Caller, id []byte, messageID string, msg, groupInfo, tree []byte, req enqueueRequest, now time.Time) (wait func() (Enqueued, int, error), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &pgEnqueue{ctx: ctx, c: c, messageID: messageID, msg: msg, groupInfo: groupInfo, tree: tree, req: req, now: now, done: make(chan pgEnqueued, 1)}
	key := string(id)
	b := &s.batcher
	b.mu.Lock()
	q, running := b.queues[key]
	b.queues[key] = append(q, r)
	b.mu.Unlock()
	if !running {
		// The runner outlives this request: it works from its own copy of
		// the id (the key), not from the request's buffer.
		go s.runEnqueues(key)
	}
	return func() (Enqueued, int, error) {
		select {
		case out := <-r.done:
			return out.res, out.kind, out.err
		case <-ctx.Done():
			if r.state.CompareAndSwap(pgQueued, pgCancelled) {
				return Enqueued{}, 0, ctx.Err()
			}
			out := <-r.done
			return out.res, out.kind, out.err
		}
	}, nil
}

// runEnqueues is a channel's runner: it stores the channel's queued
// enqueues a batch at a time and ends when none is left. Requests that
// arrive while a batch runs make the next one.
func (s *Service) runEnqueues(key string) {
	id := []byte(key)
	b := &s.batcher
	for {
		b.mu.Lock()
		q := b.queues[key]
		if len(q) == 0 {
			delete(b.queues, key)
			b.mu.Unlock()
			return
		}
		n, bytes := 0, 0
		for n < len(q) && n < pgBatchMax && (n == 0 || bytes+len(q[n].msg)+len(q[n].groupInfo)+len(q[n].tree) <= pgBatchMaxBytes) {
			bytes += len(q[n].msg) + len(q[n].groupInfo) + len(q[n].tree)
			n++
		}
		taken := q[:n:n]
		b.queues[key] = append([]*pgEnqueue(nil), q[n:]...)
		b.mu.Unlock()

		batch := taken[:0:0]
		for _, r := range taken {
			if r.state.CompareAndSwap(pgQueued, pgTaken) {
				batch = append(batch, r)
			}
		}
		if len(batch) > 0 {
			s.storeBatch(id, batch)
		}
	}
}

// storeBatch stores batch in one transaction and answers every request.
func (s *Service) storeBatch(id []byte, batch []*pgEnqueue) {
	out := make([]pgEnqueued, len(batch))
	// The batch is no one caller's: it runs to its end (the store bounds a
	// transaction by postgres.statement_timeout) whoever gives up waiting.
	ctx := context.WithoutCancel(batch[0].ctx)
	err := s.db.WriteTxLocked(ctx, func(tx *sql.Tx) error {
		return s.storeBatchTx(ctx, tx, id, batch, out)
	})
	if err != nil && len(batch) > 1 && !store.IsUnavailable(err) && !store.IsDiskFull(err) && !errors.Is(err, store.ErrClosed) {
		// The database refused a statement of the batch: which request
		// caused it is unknown, so each is stored alone and only the
		// culprit fails (as the SQLite writer does with a failed batch).
		for _, r := range batch {
			s.storeBatch(id, []*pgEnqueue{r})
		}
		return
	}
	var head uint64
	var stored []*cachedMessage
	for i, r := range batch {
		if err != nil {
			out[i] = pgEnqueued{kind: out[i].kind, err: err}
		} else if res := out[i].res; out[i].err == nil && !res.Duplicate {
			head = max(head, res.Seq)
			// The message as a read returns it; the hub copies what it keeps.
			tp, _ := storedTraceParent(r.ctx).(string)
			stored = append(stored, &cachedMessage{Message: Message{ChannelID: id, Seq: res.Seq, MessageID: r.messageID,
				SenderAccount: r.c.AccountID, SenderDevice: r.c.DeviceID, Epoch: res.msgEpoch, Time: time.UnixMilli(r.req.nowMS),
				Body: r.msg, traceParent: tp}, expiresMS: res.expiresMS})
		}
	}
	if head > 0 {
		// One wake-up (and one NOTIFY to the other nodes) for the batch;
		// a woken waiter here may answer from its messages (hubrecent.go).
		s.hub.publishChannel(id, head, stored...)
	}
	for i, r := range batch {
		r.done <- out[i]
	}
}

// Statements of the batch (the SQLite path's are in enqueue.go).
const (
	// batchLock is steps 1-3 in one call: qpc_enqueue_lock (migration
	// 0013, internal/store/migrations_pg) locks the channel row, reads
	// which callers are members and which message ids are stored, then
	// locks (creating the missing ones) the senders' usage rows in account
	// order, the same statements this file used to send one by one. It
	// also switches the rest of the transaction to generic plans
	// (set_config(..., true) lasts until COMMIT): the batch's statements
	// take arrays; a custom plan knows their length, a generic one guesses
	// ten rows, so for small batches PostgreSQL kept choosing custom plans
	// and planned them again for every batch: 0.9 ms of planning per
	// message at 16 channels, more than the writes (docs/benchmarks.md).
	// Their generic plans use the same indexes.
	batchLock = `SELECT what, a, b, n1, n2, n3, n4, n5, g FROM qpc_enqueue_lock(?, ?::text[], ?::text[], ?::text[], ?::text[])`
	// batchStore stores every accepted message, moves the channel's head
	// and the senders' usage and, when the batch holds a commit with a
	// GroupInfo, stores it with the ratchet tree sent beside it (the
	// arguments after the head's; NULL: none).
	batchStore = `WITH stored AS (
			INSERT INTO messages (channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body, trace_parent)
			SELECT ?::bytea, s, mid, a, d, e, ct, c, x, b, NULLIF(tp, '')
			FROM unnest(?::bigint[], ?::text[], ?::text[], ?::text[], ?::bigint[], ?::int[], ?::bigint[], ?::bigint[], ?::bytea[], ?::text[])
				AS t(s, mid, a, d, e, ct, c, x, b, tp)
		), head AS (
			UPDATE channels SET head_seq = ?, epoch = ? WHERE id = ?
		), gi AS (
			INSERT INTO channel_group_info (channel_id, epoch, group_info, ratchet_tree, ratchet_tree_epoch)
			SELECT ?::bytea, ?::bigint, gi, ?::bytea, ?::bigint FROM (SELECT ?::bytea AS gi) g WHERE gi IS NOT NULL
			ON CONFLICT (channel_id) DO UPDATE SET epoch = excluded.epoch, group_info = excluded.group_info,
				ratchet_tree = excluded.ratchet_tree, ratchet_tree_epoch = excluded.ratchet_tree_epoch
		)
		UPDATE account_usage u SET message_bytes = u.message_bytes + t.b, messages = u.messages + t.n
		FROM unnest(?::text[], ?::bigint[], ?::bigint[]) AS t(a, b, n) WHERE u.account_id = t.a`
)

// storeBatchTx decides and stores batch in tx, filling out (reset first:
// the store may run it again after a deadlock).
func (s *Service) storeBatchTx(ctx context.Context, tx *sql.Tx, id []byte, batch []*pgEnqueue, out []pgEnqueued) error {
	clear(out)
	accounts, devices, ids := make([]string, len(batch)), make([]string, len(batch)), make([]string, len(batch))
	for i, r := range batch {
		accounts[i], devices[i], ids[i] = r.c.AccountID, r.c.DeviceID, r.messageID
	}

	// The channel (locked), who is a member, which ids are stored, and the
	// senders' usage (locked).
	type stored struct {
		seq    int64
		device string
	}
	var ch enqueueState
	found := false
	members := map[Caller]bool{}
	dups := map[string]stored{}
	usage := map[string]Usage{}
	// The senders' usage rows are locked in account order, as every
	// enqueue locks them.
	senders := make([]string, 0, len(accounts))
	for _, a := range accounts {
		if !contains(senders, a) {
			senders = append(senders, a)
		}
	}
	sort.Strings(senders)
	rows, err := tx.QueryContext(ctx, batchLock, id, accounts, devices, ids, senders)
	if err != nil {
		return err
	}
	for rows.Next() {
		var what string
		var a, b sql.NullString
		var n [5]sql.NullInt64
		var g []byte
		if err := rows.Scan(&what, &a, &b, &n[0], &n[1], &n[2], &n[3], &n[4], &g); err != nil {
			rows.Close()
			return err
		}
		switch what {
		case "c":
			found = true
			ch.kind, ch.epoch, ch.head, ch.ttlMS, ch.groupID = int(n[0].Int64), n[1].Int64, n[2].Int64, n[3].Int64, g
		case "m":
			members[Caller{AccountID: a.String, DeviceID: b.String}] = true
		case "d":
			dups[a.String] = stored{seq: n[0].Int64, device: b.String}
		case "u":
			usage[a.String] = Usage{MessageBytes: n[0].Int64, Messages: n[1].Int64, InboxBytes: n[2].Int64, InboxItems: n[3].Int64, Channels: n[4].Int64}
		default:
			rows.Close()
			return fmt.Errorf("qpc_enqueue_lock returned a row of kind %q", what)
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if !found {
		for i := range out {
			out[i].err = ErrNotMember
		}
		return nil
	}
	for i := range out {
		out[i].kind = ch.kind
	}

	// Decide in arrival order; each accepted message is what the next
	// request sees (head, epoch, stored ids, the sender's usage).
	var w batchWrite
	var groupInfo, tree []byte
	var giEpoch int64
	var withTree []int // accepted requests with a tree (the last one's stays)
	for i, r := range batch {
		st := ch
		st.member = members[r.c]
		if d, ok := dups[r.messageID]; ok {
			st.dupSeq, st.dupDevice = d.seq, d.device
		}
		plan, err := decideEnqueue(st, r.req)
		out[i].res = Enqueued{Time: r.now}
		if err != nil || plan.duplicate {
			out[i].res.Seq, out[i].res.Epoch, out[i].res.Duplicate = plan.seq, plan.epoch, plan.duplicate
			out[i].res.TreeStored = plan.duplicate && len(r.tree) > 0
			out[i].err = err
			continue
		}
		add := Usage{MessageBytes: int64(len(r.msg)), Messages: 1}
		if err := checkQuota(usage[r.c.AccountID], add, s.quota); err != nil {
			out[i].err = err
			continue
		}
		usage[r.c.AccountID] = usage[r.c.AccountID].plus(add)
		ch.head, ch.epoch = int64(plan.seq), int64(plan.epoch)
		dups[r.messageID] = stored{seq: int64(plan.seq), device: r.c.DeviceID}
		w.add(r, plan)
		if len(r.groupInfo) > 0 {
			groupInfo, tree, giEpoch = r.groupInfo, r.tree, int64(plan.epoch)
			if len(r.tree) > 0 {
				withTree = append(withTree, i)
			}
		}
		out[i].res.Seq, out[i].res.Epoch = plan.seq, plan.epoch
		out[i].res.msgEpoch, out[i].res.expiresMS = r.req.framing.Epoch, plan.expiresMS
	}
	if len(w.seq) == 0 {
		return nil
	}
	ua, ub, un := w.usage()
	treeArg, treeEpoch := treeArgs(tree, uint64(giEpoch))
	_, err = tx.ExecContext(ctx, batchStore, id, w.seq, w.messageID, w.account, w.device, w.epoch, w.contentType, w.created, w.expires, w.body, w.traceParent,
		ch.head, ch.epoch, id, id, giEpoch, treeArg, treeEpoch, groupInfo, ua, ub, un)
	if err == nil {
		for _, i := range withTree {
			out[i].res.TreeStored = true
		}
	}
	return err
}

// contains is slices.Contains for the few accounts of a batch.
func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// batchWrite is the accepted messages of a batch, as the columns of
// batchStore's unnest.
type batchWrite struct {
	seq, epoch, created, expires []int64
	messageID, account, device   []string
	contentType                  []int32
	body                         [][]byte
	traceParent                  []string // "" (stored as NULL) when not sampled
}

func (w *batchWrite) add(r *pgEnqueue, p enqueuePlan) {
	w.seq = append(w.seq, int64(p.seq))
	w.messageID = append(w.messageID, r.messageID)
	w.account = append(w.account, r.c.AccountID)
	w.device = append(w.device, r.c.DeviceID)
	w.epoch = append(w.epoch, int64(r.req.framing.Epoch))
	w.contentType = append(w.contentType, int32(r.req.framing.ContentType))
	w.created = append(w.created, r.req.nowMS)
	w.expires = append(w.expires, p.expiresMS)
	w.body = append(w.body, r.msg)
	tp, _ := storedTraceParent(r.ctx).(string)
	w.traceParent = append(w.traceParent, tp)
}

// usage sums the accepted messages per sender account.
func (w *batchWrite) usage() (accounts []string, bytes, messages []int64) {
	at := map[string]int{}
	for i, a := range w.account {
		j, ok := at[a]
		if !ok {
			j = len(accounts)
			at[a] = j
			accounts, bytes, messages = append(accounts, a), append(bytes, 0), append(messages, 0)
		}
		bytes[j] += int64(len(w.body[i]))
		messages[j]++
	}
	return accounts, bytes, messages
}
