package delivery

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// Message is one stored channel message.
type Message struct {
	ChannelID     []byte
	Seq           uint64
	MessageID     string
	SenderAccount string
	SenderDevice  string
	Epoch         uint64
	Time          time.Time
	Body          []byte

	traceParent string // the enqueuing span's, when it was sampled
}

// InboxItem is one stored inbox payload.
type InboxItem struct {
	Seq           uint64
	Kind          int
	ChannelID     []byte
	SenderAccount string
	SenderDevice  string
	Time          time.Time
	Body          []byte
}

// Batch is what a fetch returns.
type Batch struct {
	Messages []Message
	Inbox    []InboxItem
	More     bool // the limit (count or bytes) stopped the read
}

func (b *Batch) empty() bool { return len(b.Messages) == 0 && len(b.Inbox) == 0 }

// Fetch limits.
const (
	DefaultFetchLimit = 100
	MaxFetchLimit     = 1000
)

// channelPos is a channel the device reads, where it stands, and the head
// its snapshot saw.
type channelPos struct {
	id   []byte
	kind int
	pos  uint64
	head uint64
	base uint64 // at most the device's acknowledged position (cursor or membership start)
}

// After holds read-ahead positions a client already has beyond its
// acknowledged cursors (channel id as a string -> seq, and the inbox seq);
// a fetch returns what follows the later of cursor and position. The zero
// value means "from the cursors".
type After struct {
	Channels map[string]uint64
	Inbox    uint64
}

// Fetch returns, for the calling device, the messages after its cursor (or
// its read-ahead position) in every channel it is a member of (in sequence
// order per channel) and its unacknowledged inbox items. It does not move
// cursors (Ack does).
func (s *Service) Fetch(ctx context.Context, c Caller, limit int, after After) (Batch, error) {
	ctx, span := tracing.Start(ctx, "delivery.fetch")
	defer span.End()
	b, _, err := s.read(ctx, c, limit, after)
	if err != nil {
		tracing.Fail(span, "error")
		return Batch{}, err
	}
	s.fetched(ctx, c, &b, "fetch")
	s.traceBatch(span, &b)
	return b, nil
}

// traceBatch notes what a fetch returned on its span and links the span
// to the spans that enqueued the messages.
func (s *Service) traceBatch(span trace.Span, b *Batch) {
	if !span.IsRecording() {
		return
	}
	tracing.Set(span, tracing.Int(tracing.KeyMessages, len(b.Messages)), tracing.Int(tracing.KeyInboxItems, len(b.Inbox)))
	linkEnqueuers(span, b)
}

// FetchWait is Fetch that, when nothing is waiting, blocks until something
// arrives for the device, timeout passes (clipped to the long-poll cap),
// ctx ends or drain is closed; then it returns what there is (maybe nothing).
func (s *Service) FetchWait(ctx context.Context, c Caller, timeout time.Duration, limit int, after After, drain <-chan struct{}) (b Batch, err error) {
	timeout = min(max(timeout, 0), s.longPollMax)
	ctx, span := tracing.Start(ctx, "delivery.fetch_wait")
	if span.IsRecording() {
		tracing.Set(span, tracing.Int(tracing.KeyTimeoutMS, int(timeout.Milliseconds())))
		defer func() {
			if err != nil {
				tracing.Fail(span, "error")
			}
			s.traceBatch(span, &b)
			span.End()
		}()
	}
	w := s.hub.newWaiter()
	defer s.hub.remove(w)
	// Account and inbox keys first: anything that changes the channel list
	// or the inbox after this point wakes us.
	s.hub.add(w, accountKey(c.AccountID))
	s.hub.add(w, deviceKey(c.DeviceID))
	// The timeout is kept by the service's one deadline timer, not a
	// runtime timer per poll (deadlines.go).
	deadline := s.deadlines.add(timeout)
	defer s.deadlines.remove(deadline)
	watched := map[string]bool{}
	var chans []channelPos
	gen, woken := 0, false
	for first := true; ; first = false {
		// A woken round may be answered from the messages just committed
		// (hubrecent.go), under the generation of the read or park it
		// stands on.
		if woken {
			if mb, moved, ok := s.hub.fromMemory(w, chans, gen, fetchLimit(limit), s.maxPayload, s.now().UnixMilli()); ok {
				s.metrics.memoryServes.Inc()
				s.hub.setView(w, c, moved, after.Inbox, gen)
				s.fetched(ctx, c, &mb, "fetch_wait")
				return mb, nil
			}
		}
		gen = s.hub.beginRead(w)
		// The first round may park, or answer, without reading: the
		// device's view (hubview.go) shows that its read would find
		// nothing, or only messages this node has just committed.
		parked := false
		if first {
			var vb Batch
			vb, chans, parked = s.hub.fromView(c, after, fetchLimit(limit), s.maxPayload, s.now().UnixMilli())
			if parked && !vb.empty() {
				s.metrics.viewAnswers.Inc()
				s.hub.setView(w, c, chans, after.Inbox, gen)
				s.fetched(ctx, c, &vb, "fetch_wait")
				return vb, nil
			}
		}
		if parked {
			b = Batch{}
			s.metrics.unreadParks.Inc()
		} else {
			b, chans, err = s.read(ctx, c, limit, after)
			if err != nil {
				return Batch{}, err
			}
			if len(b.Inbox) == 0 && !b.More {
				s.hub.setView(w, c, chans, after.Inbox, gen)
			}
		}
		if !b.empty() {
			s.fetched(ctx, c, &b, "fetch_wait")
			return b, nil
		}
		again := false
		for _, ch := range chans {
			k := string(ch.id)
			if watched[k] {
				continue
			}
			watched[k] = true
			if s.hub.addChannel(w, ch.id, ch.head) {
				again = true
			}
		}
		if again || s.hub.generation() != gen {
			continue
		}
		s.hub.waiting(w)
		_, wait := tracing.Start(ctx, "delivery.long_poll_wait")
		woken = false
		select {
		case <-w.ch:
			woken = true
			// Linger: under load more messages follow within moments; one
			// read (and one response) for several of them costs far less
			// than one each. Bounded by the caller's timeout.
			if s.linger > 0 {
				lt := time.NewTimer(s.linger)
				select {
				case <-lt.C:
				case <-deadline.done:
					// Stays closed: the wait below sees it at once.
				case <-drain:
				case <-ctx.Done():
				}
				lt.Stop()
			}
			endWait(wait, woken)
		case <-deadline.done:
			endWait(wait, woken)
			s.fetched(ctx, c, &b, "fetch_wait")
			return b, nil
		case <-drain:
			endWait(wait, woken)
			s.fetched(ctx, c, &b, "fetch_wait")
			return b, nil
		case <-ctx.Done():
			endWait(wait, woken)
			return Batch{}, ctx.Err()
		}
	}
}

// endWait ends a long-poll wait span, noting whether a wake-up (rather
// than the timeout, a drain or the caller) ended it.
func endWait(span trace.Span, woken bool) {
	if span.IsRecording() {
		tracing.Set(span, attribute.Bool(tracing.KeyWoken, woken))
		span.End()
	}
}

func (s *Service) fetched(ctx context.Context, c Caller, b *Batch, op string) {
	var bytes int
	for i := range b.Messages {
		bytes += len(b.Messages[i].Body)
	}
	for i := range b.Inbox {
		bytes += len(b.Inbox[i].Body)
	}
	s.metrics.fetches.WithLabelValues(op).Inc()
	s.metrics.fetchedMessages.Add(float64(len(b.Messages) + len(b.Inbox)))
	s.metrics.fetchedBytes.Add(float64(bytes))
	if !b.empty() {
		s.audit.Event(ctx, "delivery.fetch", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.Int("messages", len(b.Messages)), slog.Int("inbox_items", len(b.Inbox)), slog.Int("size", bytes))
	}
}

// The fetch path's queries, prepared once per reader connection
// (store.DB.ReadStmt).
const (
	fetchChannels = `SELECT c.id, c.kind, c.head_seq, MIN(m.from_seq), MAX(cu.acked_seq)
		FROM channel_members m JOIN channels c ON c.id = m.channel_id
		LEFT JOIN cursors cu ON cu.device_id = ? AND cu.channel_id = m.channel_id
		WHERE m.account_id = ? AND m.device_id IN ('', ?)
		GROUP BY c.id ORDER BY c.id`
	fetchMessages = `SELECT seq, message_id, sender_account, sender_device, epoch, created_at, body, trace_parent
		FROM messages WHERE channel_id = ? AND seq > ? AND expires_at > ? ORDER BY seq LIMIT ?`
	fetchInbox = `SELECT i.seq, i.kind, i.channel_id, i.sender_account, i.sender_device, i.created_at, i.body
		FROM inbox i JOIN inbox_heads h ON h.device_id = i.device_id
		WHERE i.device_id = ? AND i.seq > h.acked_seq AND i.seq > ? AND i.expires_at > ? ORDER BY i.seq LIMIT ?`
	fetchInboxWaiting = `SELECT EXISTS (SELECT 1 FROM inbox i JOIN inbox_heads h ON h.device_id = i.device_id
		WHERE i.device_id = ? AND i.seq > h.acked_seq AND i.seq > ? AND i.expires_at > ?)`
)

// fetchLimit is the number of messages and items a fetch asking for limit
// returns at most.
func fetchLimit(limit int) int {
	if limit <= 0 {
		return DefaultFetchLimit
	}
	return min(limit, MaxFetchLimit)
}

// read is one snapshot read of everything waiting for the device.
func (s *Service) read(ctx context.Context, c Caller, limit int, after After) (Batch, []channelPos, error) {
	limit = fetchLimit(limit)
	budget := s.maxPayload
	now := s.now().UnixMilli()
	if s.db.Backend() == store.BackendPostgres {
		return s.readPG(ctx, c, limit, after, now, budget)
	}
	var b Batch
	var chans []channelPos
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		b, chans = Batch{}, nil
		st, err := s.db.ReadStmt(ctx, tx, fetchChannels)
		if err != nil {
			return err
		}
		rows, err := st.QueryContext(ctx, c.DeviceID, c.AccountID, c.DeviceID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var p channelPos
			var head, from int64
			var acked sql.NullInt64
			if err := rows.Scan(&p.id, &p.kind, &head, &from, &acked); err != nil {
				rows.Close()
				return err
			}
			// A position beyond the head (only a confused client sends one)
			// reads nothing rather than wrapping around.
			p.head = uint64(head)
			p.base = uint64(max(from, acked.Int64))
			p.pos = min(max(p.base, after.Channels[string(p.id)]), p.head)
			chans = append(chans, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		left := limit
		for _, p := range chans {
			if p.head <= p.pos {
				continue
			}
			if left == 0 || budget <= 0 {
				b.More = true
				break
			}
			n, more, err := s.readMessages(ctx, tx, p, now, left, &budget, &b)
			if err != nil {
				return err
			}
			left -= n
			b.More = b.More || more
		}
		if left == 0 || budget <= 0 {
			var waiting bool
			st, err := s.db.ReadStmt(ctx, tx, fetchInboxWaiting)
			if err == nil {
				err = st.QueryRowContext(ctx, c.DeviceID, int64(min(after.Inbox, 1<<62)), now).Scan(&waiting)
			}
			if err != nil {
				return err
			}
			b.More = b.More || waiting
			return nil
		}
		return s.readInbox(ctx, tx, c.DeviceID, after.Inbox, now, left, &budget, &b)
	})
	if err != nil {
		return Batch{}, nil, fmt.Errorf("delivery: fetch: %w", err)
	}
	return b, chans, nil
}

// fetchPG is read in one statement on PostgreSQL: qpc_fetch (migration
// 0013) runs the loop of read above in the database server, on one
// snapshot (docs/storage.md, "Fetch on PostgreSQL: one statement").
const fetchPG = `SELECT what, ch, kind, seq, head, message_id, sender_account, sender_device, epoch, created_at, body, trace_parent
	FROM qpc_fetch(?, ?, ?::bytea[], ?::bigint[], ?, ?, ?, ?)`

// readPG is read on PostgreSQL: one round trip instead of a transaction
// of up to five.
func (s *Service) readPG(ctx context.Context, c Caller, limit int, after After, now int64, budget int) (Batch, []channelPos, error) {
	afterIDs, afterSeqs := make([][]byte, 0, len(after.Channels)), make([]int64, 0, len(after.Channels))
	for id, seq := range after.Channels {
		afterIDs, afterSeqs = append(afterIDs, []byte(id)), append(afterSeqs, int64(min(seq, 1<<62)))
	}
	var b Batch
	var chans []channelPos
	err := s.db.ReadStatementPG(ctx, func(rows *sql.Rows) error {
		for rows.Next() {
			var what string
			var ch, body []byte
			var kind sql.NullInt32
			var seq, head, epoch, created sql.NullInt64
			var messageID, account, device, tp sql.NullString
			if err := rows.Scan(&what, &ch, &kind, &seq, &head, &messageID, &account, &device, &epoch, &created, &body, &tp); err != nil {
				return err
			}
			switch what {
			case "c":
				p := channelPos{id: ch, kind: int(kind.Int32), pos: uint64(seq.Int64), head: uint64(head.Int64)}
				if a, ok := after.Channels[string(ch)]; !ok || a < p.pos {
					// pos is the acknowledged position (clipped to the
					// head), not the read-ahead one: a lower bound of it.
					p.base = p.pos
				}
				chans = append(chans, p)
			case "m":
				b.Messages = append(b.Messages, Message{ChannelID: ch, Seq: uint64(seq.Int64), MessageID: messageID.String,
					SenderAccount: account.String, SenderDevice: device.String, Epoch: uint64(epoch.Int64),
					Time: time.UnixMilli(created.Int64), Body: body, traceParent: tp.String})
			case "i":
				b.Inbox = append(b.Inbox, InboxItem{Seq: uint64(seq.Int64), Kind: int(kind.Int32), ChannelID: ch,
					SenderAccount: account.String, SenderDevice: device.String, Time: time.UnixMilli(created.Int64), Body: body})
			case "M":
				b.More = true
			default:
				return fmt.Errorf("qpc_fetch returned a row of kind %q", what)
			}
		}
		return nil
	}, fetchPG, c.AccountID, c.DeviceID, afterIDs, afterSeqs, int64(min(after.Inbox, 1<<62)), now, limit, int64(budget))
	if err != nil {
		return Batch{}, nil, fmt.Errorf("delivery: fetch: %w", err)
	}
	return b, chans, nil
}

func (s *Service) readMessages(ctx context.Context, tx *sql.Tx, p channelPos, now int64, limit int, budget *int, b *Batch) (int, bool, error) {
	st, err := s.db.ReadStmt(ctx, tx, fetchMessages)
	if err != nil {
		return 0, false, err
	}
	rows, err := st.QueryContext(ctx, p.id, int64(p.pos), now, limit+1)
	if err != nil {
		return 0, false, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if n == limit || (*budget <= 0 && n > 0) {
			return n, true, nil
		}
		m := Message{ChannelID: p.id}
		var seq, epoch, created int64
		var tp sql.NullString
		if err := rows.Scan(&seq, &m.MessageID, &m.SenderAccount, &m.SenderDevice, &epoch, &created, &m.Body, &tp); err != nil {
			return n, false, err
		}
		if *budget < len(m.Body) && len(b.Messages)+len(b.Inbox) > 0 {
			return n, true, nil
		}
		m.Seq, m.Epoch, m.Time, m.traceParent = uint64(seq), uint64(epoch), time.UnixMilli(created), tp.String
		*budget -= len(m.Body)
		b.Messages = append(b.Messages, m)
		n++
	}
	return n, false, rows.Err()
}

func (s *Service) readInbox(ctx context.Context, tx *sql.Tx, device string, after uint64, now int64, limit int, budget *int, b *Batch) error {
	st, err := s.db.ReadStmt(ctx, tx, fetchInbox)
	if err != nil {
		return err
	}
	rows, err := st.QueryContext(ctx, device, int64(min(after, 1<<62)), now, limit+1)
	if err != nil {
		return err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if n == limit {
			b.More = true
			return nil
		}
		var it InboxItem
		var seq, created int64
		if err := rows.Scan(&seq, &it.Kind, &it.ChannelID, &it.SenderAccount, &it.SenderDevice, &created, &it.Body); err != nil {
			return err
		}
		if *budget < len(it.Body) && len(b.Messages)+len(b.Inbox) > 0 {
			b.More = true
			return nil
		}
		it.Seq, it.Time = uint64(seq), time.UnixMilli(created)
		*budget -= len(it.Body)
		b.Inbox = append(b.Inbox, it)
		n++
	}
	return rows.Err()
}

// Cursor is an acknowledgement: everything in the channel up to Seq is done.
type Cursor struct {
	ChannelID []byte
	Seq       uint64
}

// Ack moves the device's cursors forward (never back, never past the
// channel's head) and drops inbox items up to inboxSeq. A cursor for a
// channel the device cannot read fails the whole Ack with ErrNotMember.
func (s *Service) Ack(ctx context.Context, c Caller, cursors []Cursor, inboxSeq uint64) error {
	for _, cu := range cursors {
		if len(cu.ChannelID) != ChannelIDSize || cu.Seq > 1<<62 {
			return fmt.Errorf("delivery: ack: %w: cursor", ErrInvalidRequest)
		}
	}
	if inboxSeq > 1<<62 {
		return fmt.Errorf("delivery: ack: %w: inbox seq", ErrInvalidRequest)
	}
	// READ COMMITTED with the acknowledged inbox rows locked: the usage
	// rows of their senders are updated relative to their latest version,
	// so an Ack does not retry against its senders' concurrent writes.
	err := s.db.WriteTxLocked(ctx, func(tx *sql.Tx) error {
		for _, cu := range cursors {
			_, head, err := loadForMember(ctx, tx, c, cu.ChannelID)
			if err != nil {
				return err
			}
			seq := int64(min(cu.Seq, head))
			if _, err := tx.ExecContext(ctx, `INSERT INTO cursors (device_id, channel_id, account_id, acked_seq) VALUES (?, ?, ?, ?)
				ON CONFLICT (device_id, channel_id) DO UPDATE SET acked_seq = excluded.acked_seq
				WHERE cursors.acked_seq < excluded.acked_seq`,
				c.DeviceID, cu.ChannelID, c.AccountID, seq); err != nil {
				return err
			}
		}
		if inboxSeq > 0 {
			// acked_seq = max(acked_seq, min(inboxSeq, head_seq)), in SQL both engines speak.
			seq := int64(inboxSeq)
			if _, err := tx.ExecContext(ctx, `UPDATE inbox_heads SET acked_seq = CASE WHEN head_seq < ? THEN head_seq ELSE ? END
				WHERE device_id = ? AND acked_seq < CASE WHEN head_seq < ? THEN head_seq ELSE ? END`,
				seq, seq, c.DeviceID, seq, seq); err != nil {
				return err
			}
			// The items leave their senders' inbox quotas (the server's own
			// notices were charged to nobody). The rows are locked first:
			// the sweep may be deleting some of them.
			freed, err := senderUsage(ctx, tx, `SELECT sender_account, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM inbox
				WHERE id IN (SELECT id FROM inbox WHERE device_id = ? AND seq <= ?`+s.db.ForUpdate()+`) AND `+chargedInbox+` GROUP BY sender_account`, c.DeviceID, int64(inboxSeq))
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM inbox WHERE device_id = ? AND seq <= ?`, c.DeviceID, int64(inboxSeq)); err != nil {
				return err
			}
			if err := s.release(ctx, tx, freed); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "ack", err)
		return fmt.Errorf("delivery: ack: %w", err)
	}
	return nil
}

// GroupInfo returns the latest GroupInfo a committer stored for the
// channel, and its epoch; members only. A channel without one wraps ErrNotFound.
func (s *Service) GroupInfo(ctx context.Context, c Caller, id []byte) ([]byte, uint64, error) {
	gi, _, epoch, err := s.readGroupInfo(ctx, c, id, false)
	return gi, epoch, err
}
