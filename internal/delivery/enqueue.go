package delivery

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// Framing is the cleartext part of a PublicMessage or PrivateMessage the
// server reads.
type Framing struct {
	GroupID     []byte
	Epoch       uint64
	ContentType mls.ContentType
}

// ParseFraming decodes an MLSMessage and returns its cleartext framing.
// Only PublicMessage and PrivateMessage belong on a channel; anything else
// (Welcome, GroupInfo, KeyPackage, garbage) wraps ErrInvalidMessage.
func ParseFraming(raw []byte) (Framing, error) {
	var m mls.MLSMessage
	// Aliased: the framing is all that is kept, so the ciphertext is not copied.
	if err := m.UnmarshalAliased(raw); err != nil {
		return Framing{}, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	switch {
	case m.WireFormat == mls.WireFormatPublicMessage && m.PublicMessage != nil:
		c := &m.PublicMessage.Content
		return Framing{GroupID: c.GroupID, Epoch: c.Epoch, ContentType: c.ContentType}, nil
	case m.WireFormat == mls.WireFormatPrivateMessage && m.PrivateMessage != nil:
		p := m.PrivateMessage
		return Framing{GroupID: p.GroupID, Epoch: p.Epoch, ContentType: p.ContentType}, nil
	default:
		return Framing{}, fmt.Errorf("%w: wire format %d does not belong on a channel (Welcomes go to inboxes, GroupInfo with a commit)", ErrInvalidMessage, m.WireFormat)
	}
}

// parseGroupInfo checks that raw is an MLSMessage(GroupInfo) (or a bare
// GroupInfo) for groupID at epoch, and, when separateTree (a ratchet tree
// came beside it), that it lacks the ratchet_tree extension. It reports
// whether the GroupInfo carries the tree.
func parseGroupInfo(raw, groupID []byte, epoch uint64, separateTree bool) (embedded bool, err error) {
	var gi *mls.GroupInfo
	var m mls.MLSMessage
	if err := m.Unmarshal(raw); err == nil {
		if m.WireFormat != mls.WireFormatGroupInfo || m.GroupInfo == nil {
			return false, fmt.Errorf("%w: group_info is an MLSMessage of wire format %d", ErrInvalidMessage, m.WireFormat)
		}
		gi = m.GroupInfo
	} else {
		gi = new(mls.GroupInfo)
		if err := gi.Unmarshal(raw); err != nil {
			return false, fmt.Errorf("%w: group_info: %w", ErrInvalidMessage, err)
		}
	}
	if !bytes.Equal(gi.GroupContext.GroupID, groupID) {
		return false, fmt.Errorf("%w: group_info is for another group", ErrInvalidMessage)
	}
	if gi.GroupContext.Epoch != epoch {
		return false, fmt.Errorf("%w: group_info is for epoch %d, the commit starts epoch %d", ErrInvalidMessage, gi.GroupContext.Epoch, epoch)
	}
	for _, x := range gi.Extensions {
		if x.Type == mls.ExtensionTypeRatchetTree {
			embedded = true
		}
	}
	if separateTree && embedded {
		return true, fmt.Errorf("%w: ratchet_tree sent beside a group_info that carries the tree", ErrInvalidRequest)
	}
	return embedded, nil
}

// The enqueue path's statements, prepared once on the writer connection
// (store.DB.WriteStmt).
const (
	// One read: the channel, the caller's membership and an earlier
	// message with this id.
	// The sender's usage comes with the channel: one statement fewer in
	// the single writer per message (SQLite only; PostgreSQL locks usage
	// rows in qpc_enqueue_lock).
	enqueueSelect = `SELECT c.kind, c.group_id, c.epoch, c.head_seq, c.ttl_ms, ` + isMember + `,
			d.seq, d.epoch, d.sender_device,
			u.message_bytes, u.messages, u.inbox_bytes, u.inbox_items, u.channels
		FROM channels c LEFT JOIN messages d ON d.channel_id = c.id AND d.message_id = ?
		LEFT JOIN account_usage u ON u.account_id = ?
		WHERE c.id = ?`
	enqueueInsert = `INSERT INTO messages
		(channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body, trace_parent)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	enqueueUpdate = `UPDATE channels SET head_seq = ?, epoch = ? WHERE id = ?`
)

// Enqueued is the outcome of Enqueue.
type Enqueued struct {
	Seq       uint64
	Epoch     uint64 // the channel's epoch after the message
	Duplicate bool   // the message id was stored before; nothing was stored now
	Time      time.Time
	// TreeStored: the item's RatchetTree is stored beside its GroupInfo
	// (or, for a duplicate, the item carried one to this server).
	TreeStored bool

	// What the hub needs besides the item to answer from the stored
	// message (hubrecent.go): its epoch and expiry.
	msgEpoch  uint64
	expiresMS int64
}

// Enqueue appends an MLS message to a channel's log. The same message id
// from the same device returns the original sequence number. A commit is
// accepted only for the channel's current epoch and advances it; other
// messages are accepted for the current epoch and EpochsBehind earlier
// ones. groupInfo, with a commit, replaces the channel's GroupInfo (and
// drops a ratchet tree stored beside the one it replaces; EnqueueItem
// stores a new one).
func (s *Service) Enqueue(ctx context.Context, c Caller, id []byte, messageID string, msg, groupInfo []byte) (Enqueued, error) {
	return s.EnqueueItem(ctx, c, EnqueueItem{ChannelID: id, MessageID: messageID, MLSMessage: msg, GroupInfo: groupInfo})
}

// EnqueueItem is Enqueue of one item, which may carry a ratchet tree
// beside its GroupInfo.
func (s *Service) EnqueueItem(ctx context.Context, c Caller, it EnqueueItem) (Enqueued, error) {
	return s.finishEnqueue(s.startEnqueue(ctx, c, it))
}

// MaxBatchItems is how many messages one EnqueueBatch carries at most
// (EnqueueBatchRequest.items).
const MaxBatchItems = 64

// EnqueueItem is one message of EnqueueBatch.
type EnqueueItem struct {
	ChannelID  []byte
	MessageID  string
	MLSMessage []byte
	GroupInfo  []byte
	// RatchetTree, with a GroupInfo that lacks the ratchet_tree
	// extension: the epoch's tree, stored beside it (GroupInfoTree).
	RatchetTree []byte

	embedsTree  bool   // set by queueEnqueue: the GroupInfo carries the tree
	traceParent string // set by queueEnqueue on SQLite: as stored
}

// treePlacement labels where a stored GroupInfo's ratchet tree is, for
// qpcd_group_infos_stored_total.
func (it *EnqueueItem) treePlacement() string {
	switch {
	case len(it.RatchetTree) > 0:
		return "beside"
	case it.embedsTree:
		return "embedded"
	default:
		return "missing"
	}
}

// size is the item's bytes that count toward the payload cap.
func (it *EnqueueItem) size() int {
	return len(it.MLSMessage) + len(it.GroupInfo) + len(it.RatchetTree)
}

// BatchResult is the outcome of one EnqueueBatch item: what its own
// Enqueue would have returned.
type BatchResult struct {
	Enqueued
	Err error
}

// EnqueueBatch enqueues items as if each were its own Enqueue call, in the
// order given (an item sees the writes of the earlier ones, a later item
// of the same channel gets a later seq), and returns one result each: its
// own seq, duplicate flag, error, metrics and audit event. Items may name
// different channels. They are all queued before the first is waited for,
// so they share group commits (SQLite's writer, PostgreSQL's per-channel
// batches) instead of each waiting for its own; every result, an error or
// not, is final and durable as Enqueue's. The call as a whole is refused
// with ErrInvalidRequest above MaxBatchItems items, and with ErrTooLarge
// when the items' payloads together pass the payload cap.
func (s *Service) EnqueueBatch(ctx context.Context, c Caller, items []EnqueueItem) ([]BatchResult, error) {
	if err := s.CheckBatch(items); err != nil {
		return nil, err
	}
	ops := make([]*enqueueOp, len(items))
	for i, it := range items {
		ops[i] = s.startEnqueue(ctx, c, it)
	}
	out := make([]BatchResult, len(items))
	for i, op := range ops {
		out[i].Enqueued, out[i].Err = s.finishEnqueue(op)
	}
	return out, nil
}

// CheckBatch applies EnqueueBatch's caps to the batch as a whole: 1 to
// MaxBatchItems items (ErrInvalidRequest), and the items' payloads
// together within the payload cap (ErrTooLarge).
func (s *Service) CheckBatch(items []EnqueueItem) error {
	if len(items) == 0 || len(items) > MaxBatchItems {
		return fmt.Errorf("delivery: enqueue batch: %w: %d items, 1..%d per batch", ErrInvalidRequest, len(items), MaxBatchItems)
	}
	total := 0
	for _, it := range items {
		total += it.size()
	}
	if total > s.maxPayload {
		return fmt.Errorf("delivery: enqueue batch: %w: the items hold %d bytes together, at most %d (limits.max_payload_bytes); send fewer per batch",
			ErrTooLarge, total, s.maxPayload)
	}
	return nil
}

// enqueueOp is one message between startEnqueue, which checks it and
// queues its write, and finishEnqueue, which waits for the write and
// accounts for it.
type enqueueOp struct {
	ctx     context.Context // carries the delivery.enqueue span
	rpcSpan trace.Span
	span    trace.Span
	c       Caller
	item    EnqueueItem
	// err: refused before its write was queued; otherwise wait gives
	// the write's outcome.
	err  error
	wait func() (Enqueued, int, error)
}

// startEnqueue checks one message and queues its write without waiting
// for it.
func (s *Service) startEnqueue(ctx context.Context, c Caller, it EnqueueItem) *enqueueOp {
	op := &enqueueOp{rpcSpan: trace.SpanFromContext(ctx), c: c, item: it}
	op.ctx, op.span = tracing.Start(ctx, "delivery.enqueue")
	op.wait, op.err = s.queueEnqueue(op.ctx, c, &op.item)
	return op
}

// finishEnqueue waits for op's write and counts, traces, wakes and audits
// its outcome.
func (s *Service) finishEnqueue(op *enqueueOp) (Enqueued, error) {
	ctx, c, span := op.ctx, op.c, op.span
	id, msg, groupInfo := op.item.ChannelID, op.item.MLSMessage, op.item.GroupInfo
	var res Enqueued
	var kind int
	err := op.err
	if err == nil {
		res, kind, err = op.wait()
	}
	result := "ok"
	switch {
	case err == nil && res.Duplicate:
		result = "duplicate"
	case err == nil:
	case errors.Is(err, ErrStaleEpoch):
		result = "stale_epoch"
	case errors.Is(err, ErrQuotaExceeded):
		result = "quota"
		s.countQuotaRefusal(ctx, c, err)
	case errors.Is(err, ErrNotMember), errors.Is(err, ErrNotFound):
		result = "denied"
		s.denied(ctx, c, "enqueue", err)
	case errors.Is(err, ErrInvalidMessage), errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrTooLarge), errors.Is(err, ErrMessageIDConflict),
		errors.Is(err, ErrMessageIDExpired):
		result = "invalid"
	default:
		result = "error"
	}
	label := kindLabel(kind)
	if kind == 0 {
		label = "unknown"
	}
	s.metrics.enqueued.WithLabelValues(label, result).Inc()
	if span.IsRecording() {
		tracing.Set(op.rpcSpan, tracing.ChannelKind(label))
		tracing.Set(span, tracing.ChannelKind(label), tracing.Result(result), tracing.Int(tracing.KeyPayloadSize, len(msg)))
		if err != nil {
			tracing.Fail(span, result)
		}
		span.End()
	}
	if err != nil {
		return Enqueued{}, fmt.Errorf("delivery: enqueue: %w", err)
	}
	if !res.Duplicate {
		s.metrics.enqueuedBytes.WithLabelValues(label).Add(float64(len(msg)))
		if len(groupInfo) > 0 {
			s.metrics.groupInfos.WithLabelValues(op.item.treePlacement()).Inc()
		}
		if s.db.Backend() != store.BackendPostgres {
			// On PostgreSQL the batch woke the channel's waiters, once for
			// all its messages (enqueue_pg.go).
			// The message as a read returns it; the hub copies what it keeps.
			s.hub.publishChannel(id, res.Seq, &cachedMessage{Message: Message{ChannelID: id, Seq: res.Seq, MessageID: op.item.MessageID,
				SenderAccount: c.AccountID, SenderDevice: c.DeviceID, Epoch: res.msgEpoch, Time: time.UnixMilli(res.Time.UnixMilli()),
				Body: msg, traceParent: op.item.traceParent}, expiresMS: res.expiresMS})
		}
	}
	s.audit.Event(ctx, "delivery.enqueue", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("channel_id", hexID(id)), slog.Uint64("seq", res.Seq), slog.Uint64("epoch", res.Epoch),
		slog.Int("size", len(msg)), slog.Int("group_info_size", len(groupInfo)), slog.Int("ratchet_tree_size", len(op.item.RatchetTree)),
		slog.Bool("duplicate", res.Duplicate))
	return res, nil
}

// queueEnqueue checks one message and queues its write: on SQLite to the
// one writer, on PostgreSQL to the channel's runner. wait returns the
// outcome; err is a refusal before anything was queued.
func (s *Service) queueEnqueue(ctx context.Context, c Caller, it *EnqueueItem) (wait func() (Enqueued, int, error), err error) {
	id, messageID, msg, groupInfo, tree := it.ChannelID, it.MessageID, it.MLSMessage, it.GroupInfo, it.RatchetTree
	if len(id) != ChannelIDSize {
		return nil, fmt.Errorf("%w: channel id is %d bytes", ErrInvalidRequest, len(id))
	}
	if messageID == "" || len(messageID) > 64 {
		return nil, fmt.Errorf("%w: message id must be 1..64 bytes", ErrInvalidRequest)
	}
	if !utf8.ValidString(messageID) || strings.ContainsRune(messageID, 0) {
		// PostgreSQL's text refuses NUL, and one bad id must not fail the
		// batch it would share with other senders' messages.
		return nil, fmt.Errorf("%w: message id must be UTF-8 text without NUL", ErrInvalidRequest)
	}
	if it.size() > s.maxPayload {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, it.size(), s.maxPayload)
	}
	if len(tree) > 0 && len(groupInfo) == 0 {
		return nil, fmt.Errorf("%w: ratchet_tree only comes with a group_info", ErrInvalidRequest)
	}
	f, err := ParseFraming(msg)
	if err != nil {
		return nil, err
	}
	isCommit := f.ContentType == mls.ContentTypeCommit
	if len(groupInfo) > 0 && !isCommit {
		return nil, fmt.Errorf("%w: group_info only comes with a commit", ErrInvalidRequest)
	}
	if isCommit && len(groupInfo) > 0 {
		if it.embedsTree, err = parseGroupInfo(groupInfo, f.GroupID, f.Epoch+1, len(tree) > 0); err != nil {
			return nil, err
		}
	}
	now := s.now()
	nowMS := now.UnixMilli()
	idMS, timedID := messageIDTime(messageID)
	req := enqueueRequest{
		device: c.DeviceID, framing: f, nowMS: nowMS, idMS: idMS, timedID: timedID,
		retentionMS: s.retention.Milliseconds(), behind: s.behind,
	}
	if s.db.Backend() == store.BackendPostgres {
		// Batched per channel under the channel's row lock (enqueue_pg.go).
		return s.queueEnqueuePG(ctx, c, id, messageID, msg, groupInfo, tree, req, now)
	}
	var res Enqueued
	var kind int
	tp := storedTraceParent(ctx)
	it.traceParent, _ = tp.(string)
	// SQLite: the one writer serialises the enqueues and group-commits them.
	waitTx := s.db.QueueWriteTx(ctx, func(tx *sql.Tx) error {
		res, kind = Enqueued{Time: now}, 0
		st, err := s.loadEnqueueState(ctx, tx, c, id, messageID)
		if err != nil {
			return err
		}
		kind = st.kind
		plan, err := decideEnqueue(st, req)
		if err != nil || plan.duplicate {
			res.Seq, res.Epoch, res.Duplicate = plan.seq, plan.epoch, plan.duplicate
			res.TreeStored = plan.duplicate && len(tree) > 0
			return err
		}
		if err := s.chargeFrom(ctx, tx, c.AccountID, st.usage, Usage{MessageBytes: int64(len(msg)), Messages: 1}); err != nil {
			return err
		}
		ins, err := s.db.WriteStmt(ctx, tx, enqueueInsert)
		if err != nil {
			return err
		}
		if _, err := ins.ExecContext(ctx, id, int64(plan.seq), messageID, c.AccountID, c.DeviceID, int64(f.Epoch), int(f.ContentType), nowMS, plan.expiresMS, msg, tp); err != nil {
			return err
		}
		up, err := s.db.WriteStmt(ctx, tx, enqueueUpdate)
		if err != nil {
			return err
		}
		if _, err := up.ExecContext(ctx, int64(plan.seq), int64(plan.epoch), id); err != nil {
			return err
		}
		if isCommit && len(groupInfo) > 0 {
			treeArg, treeEpoch := treeArgs(tree, plan.epoch)
			if _, err := tx.ExecContext(ctx, `INSERT INTO channel_group_info (channel_id, epoch, group_info, ratchet_tree, ratchet_tree_epoch) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (channel_id) DO UPDATE SET epoch = excluded.epoch, group_info = excluded.group_info,
					ratchet_tree = excluded.ratchet_tree, ratchet_tree_epoch = excluded.ratchet_tree_epoch`,
				id, int64(plan.epoch), groupInfo, treeArg, treeEpoch); err != nil {
				return err
			}
			res.TreeStored = len(tree) > 0
		}
		res.Seq, res.Epoch, res.msgEpoch, res.expiresMS = plan.seq, plan.epoch, f.Epoch, plan.expiresMS
		return nil
	})
	return func() (Enqueued, int, error) {
		err := waitTx()
		return res, kind, err
	}, nil
}

// enqueueState is what an enqueue decision rests on, loaded in the write
// transaction (on PostgreSQL under the channel's row lock, enqueue_pg.go).
type enqueueState struct {
	kind               int
	groupID            []byte
	epoch, head, ttlMS int64
	member             bool
	dupSeq             int64 // > 0: a message with this id is stored at this seq
	dupDevice          string
	usage              Usage // the sender account's stored usage (zero: no row yet)
}

// enqueueRequest is the part of an Enqueue the rules look at.
type enqueueRequest struct {
	device      string
	framing     Framing
	nowMS       int64
	idMS        int64 // the time a UUIDv7 message id carries, if timedID
	timedID     bool
	retentionMS int64
	behind      uint64 // epochs behind the current one accepted for non-commits
}

// enqueuePlan is the decision: store at seq, moving the channel to epoch;
// or, for a duplicate, answer with the original seq.
type enqueuePlan struct {
	seq, epoch uint64
	expiresMS  int64
	duplicate  bool
}

// decideEnqueue applies the Delivery Service's rules to a loaded channel:
// membership, idempotent message ids, the group binding, epoch fencing
// (a commit only for the current epoch, first wins; other messages for the
// current epoch and req.behind earlier ones) and expired message ids. It
// reads nothing and writes nothing, so both storage engines share it and
// tests can drive it without a database.
func decideEnqueue(st enqueueState, req enqueueRequest) (enqueuePlan, error) {
	if !st.member {
		return enqueuePlan{}, ErrNotMember
	}
	if st.dupSeq > 0 {
		if st.dupDevice != req.device {
			return enqueuePlan{}, ErrMessageIDConflict
		}
		return enqueuePlan{seq: uint64(st.dupSeq), epoch: uint64(st.epoch), duplicate: true}, nil
	}
	f := req.framing
	if !bytes.Equal(f.GroupID, st.groupID) {
		return enqueuePlan{}, fmt.Errorf("%w: the message is for another group than the channel's", ErrInvalidMessage)
	}
	isCommit := f.ContentType == mls.ContentTypeCommit
	cur := uint64(st.epoch)
	newEpoch := cur
	switch {
	case isCommit && f.Epoch != cur:
		return enqueuePlan{}, fmt.Errorf("%w: commit for epoch %d, the channel is at epoch %d", ErrStaleEpoch, f.Epoch, cur)
	case isCommit:
		newEpoch = cur + 1
	case f.Epoch > cur || f.Epoch+req.behind < cur:
		return enqueuePlan{}, fmt.Errorf("%w: message for epoch %d, the channel accepts %d..%d", ErrStaleEpoch, f.Epoch, cur-min(cur, req.behind), cur)
	}
	life := req.retentionMS
	if st.ttlMS > 0 {
		life = min(life, st.ttlMS)
	}
	if req.timedID && req.idMS < req.nowMS-life+min(idClockSkew.Milliseconds(), life/2) {
		return enqueuePlan{}, fmt.Errorf("%w: the id was made %s, the channel keeps messages for %s; send the message under a new id",
			ErrMessageIDExpired, time.UnixMilli(req.idMS).UTC().Format(time.RFC3339), time.Duration(life)*time.Millisecond)
	}
	return enqueuePlan{seq: uint64(st.head) + 1, epoch: newEpoch, expiresMS: req.nowMS + life}, nil
}

// loadEnqueueState reads the channel, the caller's membership and an
// earlier message with messageID in one joined read (SQLite: the one
// writer excludes every other writer, so the read is current).
func (s *Service) loadEnqueueState(ctx context.Context, tx *sql.Tx, c Caller, id []byte, messageID string) (enqueueState, error) {
	var st enqueueState
	var dupSeq, dupEpoch sql.NullInt64
	var dupDevice sql.NullString
	var u [5]sql.NullInt64
	sel, err := s.db.WriteStmt(ctx, tx, enqueueSelect)
	if err == nil {
		err = sel.QueryRowContext(ctx, c.AccountID, c.DeviceID, messageID, c.AccountID, id).Scan(&st.kind, &st.groupID, &st.epoch, &st.head, &st.ttlMS, &st.member,
			&dupSeq, &dupEpoch, &dupDevice, &u[0], &u[1], &u[2], &u[3], &u[4])
	}
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return enqueueState{}, ErrNotMember
	case err != nil:
		return enqueueState{}, err
	}
	if dupSeq.Valid {
		st.dupSeq, st.dupDevice = dupSeq.Int64, dupDevice.String
	}
	st.usage = Usage{MessageBytes: u[0].Int64, Messages: u[1].Int64, InboxBytes: u[2].Int64, InboxItems: u[3].Int64, Channels: u[4].Int64}
	return st, nil
}

// idClockSkew bounds how far ahead of the server a sender's clock may run
// and its replayed ids still be caught after their original expired. The
// margin is at most half the channel's message lifetime, so on a DM with a
// short TTL a sender's clock may lag by the other half and its fresh ids
// are still accepted; with the default week, a lag of six days and 23 hours.
const idClockSkew = time.Hour

// messageIDTime returns the creation time (Unix ms) a UUIDv7 message id
// carries. Idempotency is checked against the stored messages, which the
// retention sweep deletes; the id's own time closes the gap after that: a
// v7 id older than the channel's message lifetime is refused. Ids of other
// forms are deduplicated only while their original is stored.
func messageIDTime(id string) (int64, bool) {
	u, err := uuid.Parse(id)
	if err != nil || u.Version() != 7 {
		return 0, false
	}
	sec, nsec := u.Time().UnixTime()
	return sec*1000 + nsec/1e6, true
}

// InboxRecipient names one device of an account.
type InboxRecipient struct {
	AccountName string
	DeviceID    string
}

// SendToInbox stores a payload in each recipient device's inbox. The caller
// must be a member of channelID, and each recipient account (or device) a
// member too: Welcomes are sent after the commit that adds the recipient
// was accepted and the recipient was added to the channel. A Welcome for a
// pending invitee is held with its invitation instead (members.go); the
// count returned includes it.
func (s *Service) SendToInbox(ctx context.Context, c Caller, channelID []byte, kind int, payload []byte, to []InboxRecipient) (n int, err error) {
	ctx, span := tracing.Start(ctx, "delivery.send_to_inbox")
	if span.IsRecording() {
		tracing.Set(span, tracing.Int(tracing.KeyPayloadSize, len(payload)), tracing.Int(tracing.KeyRecipients, len(to)))
		defer func() {
			if err != nil {
				tracing.Fail(span, "error")
			}
			span.End()
		}()
	}
	if kind != InboxWelcome && kind != InboxOther {
		return 0, fmt.Errorf("%w: inbox kind %d", ErrInvalidRequest, kind)
	}
	if len(payload) == 0 {
		return 0, fmt.Errorf("%w: empty payload", ErrInvalidRequest)
	}
	if len(payload) > s.maxPayload {
		return 0, fmt.Errorf("%w: %d bytes, at most %d (limits.max_payload_bytes)", ErrTooLarge, len(payload), s.maxPayload)
	}
	// Every recipient device gets its own copy, so one call stores the
	// payload times the recipients: bounded per call here, and counted
	// in full against the sender's inbox quota below.
	if int64(len(payload))*int64(len(to)) > int64(s.maxInbox) {
		s.metrics.quotaRefusals.WithLabelValues(LimitInboxCallBytes).Inc()
		s.audit.Event(ctx, "quota.refused", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("limit", LimitInboxCallBytes), slog.Int64("adding", int64(len(payload))*int64(len(to))), slog.Int64("max", int64(s.maxInbox)))
		return 0, fmt.Errorf("%w: %s to %d devices stores %s, at most %s per call (limits.max_inbox_call_bytes, QPC_LIMITS_MAX_INBOX_CALL_BYTES); send to fewer devices per call",
			ErrTooLarge, FormatBytes(int64(len(payload))), len(to), FormatBytes(int64(len(payload))*int64(len(to))), FormatBytes(int64(s.maxInbox)))
	}
	if kind == InboxWelcome {
		var m mls.MLSMessage
		if err := m.Unmarshal(payload); err != nil || m.WireFormat != mls.WireFormatWelcome {
			return 0, fmt.Errorf("%w: a WELCOME payload must be an MLSMessage(Welcome)", ErrInvalidMessage)
		}
	}
	devs := make([]Device, 0, len(to))
	seen := map[string]bool{}
	for _, r := range to {
		a, err := s.account(ctx, r.AccountName)
		if err != nil {
			return 0, err
		}
		d, err := s.dir.Device(ctx, r.DeviceID)
		if err != nil {
			return 0, err
		}
		if d.AccountID != a.ID || !d.Active {
			return 0, fmt.Errorf("%w: %q has no active device %q", ErrUnknownAccount, r.AccountName, r.DeviceID)
		}
		if !seen[d.ID] {
			seen[d.ID] = true
			devs = append(devs, d)
		}
	}
	now := s.now().UnixMilli()
	held, dropped := 0, 0
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, _, err := loadForMember(ctx, tx, c, channelID); err != nil {
			return err
		}
		held, dropped = 0, 0
		// A held Welcome that replaces an earlier one for the same device
		// gives the earlier one's room back to its sender.
		replaced := map[string]Usage{}
		for _, d := range devs {
			// Members get the item; a pending invitee's Welcome waits with
			// its invitation (one for a declined invitee is dropped);
			// anyone else, or a recipient that blocked the sender, refuses
			// the whole call (members.go).
			act, err := s.inboxRecipient(ctx, tx, c, channelID, d, kind, payload, now, replaced)
			if err != nil {
				return err
			}
			switch act {
			case inboxHold:
				held++
				continue
			case inboxDrop:
				dropped++
				continue
			}
			if err := s.insertInbox(ctx, tx, d.ID, kind, channelID, c.AccountID, c.DeviceID, now, payload); err != nil {
				return err
			}
		}
		// Last, after the inbox heads: Ack takes the same locks in that
		// order. A held Welcome is stored, so it is charged now like an
		// inbox item (it becomes one when its invitee accepts, and its
		// room is given back when it is acknowledged, declined, withdrawn
		// or expires); a dropped one stores nothing.
		n := int64(len(devs) - dropped)
		if mine, ok := replaced[c.AccountID]; ok {
			delete(replaced, c.AccountID)
			if err := s.release(ctx, tx, map[string]Usage{c.AccountID: mine}); err != nil {
				return err
			}
		}
		if err := s.charge(ctx, tx, c.AccountID, Usage{InboxBytes: n * int64(len(payload)), InboxItems: n}); err != nil {
			return err
		}
		return s.release(ctx, tx, replaced)
	})
	if err != nil {
		s.countQuotaRefusal(ctx, c, err)
		s.denied(ctx, c, "send_to_inbox", err)
		return 0, fmt.Errorf("delivery: send to inbox: %w", err)
	}
	kl := "other"
	if kind == InboxWelcome {
		kl = "welcome"
	}
	for _, d := range devs {
		s.hub.publish(deviceKey(d.ID))
	}
	s.metrics.inboxItems.WithLabelValues(kl).Add(float64(len(devs)))
	s.metrics.enqueuedBytes.WithLabelValues("inbox").Add(float64(len(payload) * len(devs)))
	s.audit.Event(ctx, "delivery.inbox_send", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("channel_id", hexID(channelID)), slog.String("kind", kl), slog.Int("recipients", len(devs)), slog.Int("held", held), slog.Int("dropped", dropped), slog.Int("size", len(payload)))
	return len(devs), nil
}

func hexID(b []byte) string { return hex.EncodeToString(b) }

// denied counts and audits authorisation failures by operation.
func (s *Service) denied(ctx context.Context, c Caller, op string, err error) {
	if errors.Is(err, ErrNotMember) {
		s.metrics.denied.WithLabelValues(op).Inc()
		s.audit.Event(ctx, "delivery.denied", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("operation", op))
	}
}
