package client

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Outbox statuses.
const (
	OutboxPending = "pending" // not yet accepted by the server
	OutboxSent    = "sent"    // the server has it (seq set)
	OutboxStale   = "stale"   // a commit refused with STALE_EPOCH; the group layer redoes it
	OutboxFailed  = "failed"  // refused for good (last_error says why)
	// OutboxLost: accepted before the server was restored from a backup,
	// and not accepted again (the group moved on, or is gone here).
	OutboxLost = "lost"
)

// NewMessageID returns a time-ordered (version 7) UUID. Ids that sort by
// time keep the server's idempotency index appending instead of touching a
// random page per message, which measurably raises enqueue throughput.
func NewMessageID() (string, error) { return newMessageIDAt(time.Now()) }

// newMessageID is NewMessageID on the client's clock (Options.Now): the
// server refuses a v7 id older than the channel's message lifetime.
func (c *Client) newMessageID() (string, error) { return newMessageIDAt(c.now()) }

func newMessageIDAt(at time.Time) (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("client: message id: %w", err)
	}
	ms := uint64(max(at.UnixMilli(), 0)) // the 48-bit Unix-ms field of RFC 9562
	for i := range 6 {
		id[i] = byte(ms >> (40 - 8*i))
	}
	return id.String(), nil
}

// queueTx adds an MLS message to the outbox inside tx (the transaction that
// also stores what produced it, such as the new group state).
func queueTx(ctx context.Context, tx *sql.Tx, messageID string, channelID, mlsMessage, groupInfo []byte, nowMs int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO outbox (message_id, channel_id, mls_message, group_info, created_ms) VALUES (?, ?, ?, ?, ?)`,
		messageID, channelID, mlsMessage, groupInfo, nowMs)
	if err != nil {
		return fmt.Errorf("client: queue message: %w", err)
	}
	return nil
}

// QueueMLS puts an MLS message for a channel into the persistent outbox
// and returns its message id. Nothing is sent until Flush.
func (c *Client) QueueMLS(ctx context.Context, channelID, mlsMessage, groupInfo []byte) (string, error) {
	if len(channelID) != 16 {
		return "", fmt.Errorf("client: channel id is %d bytes, want 16", len(channelID))
	}
	id, err := c.newMessageID()
	if err != nil {
		return "", err
	}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		return queueTx(ctx, tx, id, channelID, mlsMessage, groupInfo, c.now().UnixMilli())
	})
	return id, err
}

// ErrRefused: the server refused a message for good (see IsRefusal); the
// outbox entry is marked failed and history shows it as not delivered.
var ErrRefused = errors.New("client: the server refused the message")

// NotSentError: messages wait in the outbox because the server could not
// take them now (unreachable, certificate changed, busy, failing, or the
// deadline passed). Nothing is lost: the next Flush (send, recv, watch)
// sends them, in order.
type NotSentError struct {
	Pending int // entries still pending
	Err     error
}

func (e *NotSentError) Error() string {
	return fmt.Sprintf("client: not sent yet (%d message(s) wait in the outbox and go out on the next send, recv or watch): %v", e.Pending, e.Err)
}

func (e *NotSentError) Unwrap() error { return e.Err }

// IsRefusal reports whether err is the server refusing a message for good:
// retrying the same message cannot succeed. Those are INVALID_ARGUMENT
// (malformed, or a message id too old), PERMISSION_DENIED (not a member of
// the channel), NOT_FOUND (no such channel), ALREADY_EXISTS (the message id
// belongs to another sender) and RESOURCE_EXHAUSTED without a retry-after
// (over the payload cap). Everything else is not a refusal of the message:
// transport and TLS failures (a changed certificate included), deadlines,
// UNAVAILABLE, DRAINING, RESOURCE_EXHAUSTED with a retry-after (rate limit,
// disk full), UNAUTHENTICATED (log in again), UNSUPPORTED_VERSION (upgrade)
// and INTERNAL: the server stores a message id once, so sending again is
// safe. STALE_EPOCH is handled by Flush (redo).
func IsRefusal(err error) bool {
	var se *wire.StatusError
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case qpcv1.Status_STATUS_INVALID_ARGUMENT, qpcv1.Status_STATUS_PERMISSION_DENIED,
		qpcv1.Status_STATUS_NOT_FOUND, qpcv1.Status_STATUS_ALREADY_EXISTS:
		return true
	case qpcv1.Status_STATUS_RESOURCE_EXHAUSTED:
		return se.RetryAfter <= 0
	}
	return false
}

// OutboxEntry is one outbox row.
type OutboxEntry struct {
	ID        int64  `json:"-"`
	MessageID string `json:"message_id"`
	ChannelID []byte `json:"channel_id"`
	Channel   string `json:"channel"` // the group or @DM name on this device ("" if forgotten)
	Status    string `json:"status"`
	Seq       uint64 `json:"seq,omitempty"`
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error,omitempty"`
	Kind      string `json:"kind"`
	// Replay: accepted before a server restore and queued again as it was.
	Replay    bool `json:"replay,omitempty"`
	mls, gi   []byte
	tree      []byte // the ratchet tree sent beside gi (ratchettree.go)
	kind      string
	intent    []byte
	welcome   []byte
	welcomeTo string
}

// Outbox lists the outbox, oldest first (sent entries included).
func (c *Client) Outbox(ctx context.Context) ([]OutboxEntry, error) {
	return c.outboxWhere(ctx, "1 = 1")
}

// ErrNoOutboxEntry: no outbox entry with that message id, or none in a
// state the operation applies to.
var ErrNoOutboxEntry = errors.New("client: no such message in the outbox")

// RetryOutbox puts failed messages back to pending (all of them when
// messageID is ""), so the next Flush sends them again; it returns how many.
// This also recovers messages that older versions marked failed after a
// transport or certificate failure. A refused commit cannot be retried (its
// change was dropped from the group state): do the change again.
func (c *Client) RetryOutbox(ctx context.Context, messageID string) (int, error) {
	var n int64
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if messageID != "" {
			var kind, status string
			err := tx.QueryRowContext(ctx, `SELECT kind, status FROM outbox WHERE message_id = ?`, messageID).Scan(&kind, &status)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("%w: %s (qpc outbox lists them)", ErrNoOutboxEntry, messageID)
			}
			if err != nil {
				return err
			}
			if status != OutboxFailed {
				return fmt.Errorf("%w: %s is %s, not failed; only failed messages are retried", ErrNoOutboxEntry, messageID, status)
			}
			if kind == "commit" || kind == "proposal" {
				return fmt.Errorf("client: %s is a group change the server refused; it was dropped from the group state: make the change again (qpc group add/remove/leave), or discard it", messageID)
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, last_error = '' WHERE status = ? AND kind IN ('app', 'raw') AND (? = '' OR message_id = ?)`,
			OutboxPending, OutboxFailed, messageID, messageID)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// DiscardOutbox drops a message that was not delivered (pending, failed or
// stale) from the outbox; history keeps it, marked discarded. A discarded
// pending commit is also dropped from the group state.
func (c *Client) DiscardOutbox(ctx context.Context, messageID string) error {
	c.sendMu.Lock() // not while a Flush is sending it
	defer c.sendMu.Unlock()
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	return c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		var kind, status string
		var ch []byte
		err := tx.QueryRowContext(ctx, `SELECT kind, status, channel_id FROM outbox WHERE message_id = ?`, messageID).Scan(&kind, &status, &ch)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: %s (qpc outbox lists them)", ErrNoOutboxEntry, messageID)
		}
		if err != nil {
			return err
		}
		if status == OutboxSent {
			return fmt.Errorf("%w: %s was delivered already; it cannot be discarded", ErrNoOutboxEntry, messageID)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM outbox WHERE message_id = ?`, messageID); err != nil {
			return err
		}
		if kind == "commit" && status == OutboxPending {
			if _, g, err := openGroup(ctx, tx, "", ch); err == nil && g.Pending() != nil {
				g.ClearPendingCommit()
				return saveGroup(ctx, tx, ch, g, c.now().UnixMilli())
			}
		}
		return nil
	})
}

func (c *Client) outboxWhere(ctx context.Context, where string, args ...any) ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT o.id, o.message_id, o.channel_id, COALESCE(g.name, ''), o.status, o.seq, o.attempts, o.last_error,
			o.mls_message, o.group_info, o.kind, o.intent, EXISTS (SELECT 1 FROM outbox_replay r WHERE r.outbox_id = o.id)
			FROM (SELECT * FROM outbox WHERE `+where+`) o LEFT JOIN groups g ON g.channel_id = o.channel_id ORDER BY o.id`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e OutboxEntry
			var seq int64
			var gi []byte
			if err := rows.Scan(&e.ID, &e.MessageID, &e.ChannelID, &e.Channel, &e.Status, &seq, &e.Attempts, &e.LastError, &e.mls, &gi, &e.kind, &e.intent, &e.Replay); err != nil {
				return err
			}
			if e.gi, e.tree, err = unpackOutboxGroupInfo(gi); err != nil {
				return fmt.Errorf("outbox entry %s: %w", e.MessageID, err)
			}
			e.Seq, e.Kind = uint64(seq), e.kind
			out = append(out, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: read outbox: %w", err)
	}
	return out, nil
}

// FlushReport says what Flush did.
type FlushReport struct {
	Sent     int `json:"sent"`
	Redone   int `json:"redone"` // refused with STALE_EPOCH, redone after processing the winner
	Failed   int `json:"failed"`
	Pending  int `json:"pending"` // still waiting (the server unreachable)
	Welcomes int `json:"welcomes"`
}

// maxRedo bounds how often one Flush redoes changes refused with
// STALE_EPOCH (each redo follows processing of the commit that won).
const maxRedo = 8

// Flush sends every pending outbox entry in order.
//
// A failure that is not a refusal by the server (server down, draining,
// rate-limited, failing; the certificate no longer matching the pin; a
// deadline) stops the flush; the entry and those after it stay pending for
// the next Flush. The server stores a message id once, so an
// entry whose reply was lost is sent again harmlessly: each message is
// delivered exactly once.
//
// When the server accepts a commit, the pending commit is merged into the
// group state in the transaction that marks the entry sent, and only then
// is its Welcome sent. STALE_EPOCH (another member's commit won) drops
// the pending commit, fetches and processes the winner, and redoes the
// change (or re-encrypts an application message) under the same rules.
// A refusal (IsRefusal) marks the entry failed; anything else leaves it
// pending and stops the flush with a *NotSentError.
func (c *Client) Flush(ctx context.Context) (_ FlushReport, err error) {
	ctx, span := c.span(ctx, "client.flush")
	defer endSpan(span, &err)
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	var rep FlushReport
	if err := c.afterAccept(ctx, &rep); err != nil {
		return rep, err
	}
	for redo := 0; ; {
		pending, err := c.outboxWhere(ctx, "status = ?", OutboxPending)
		if err != nil || len(pending) == 0 {
			return rep, err
		}
		stale := false
		for i := 0; i < len(pending) && !stale; i++ {
			if run := c.batchRun(pending[i:]); len(run) > 1 {
				n, st, err := c.flushBatch(ctx, run, &rep, &redo)
				var nse *NotSentError
				switch {
				case errors.As(err, &nse) && nse.Pending == 0:
					// Some entries of the batch stay pending: so do those
					// after it, in order.
					rep.Pending = n + len(pending) - i - len(run)
					nse.Pending = rep.Pending
					return rep, nse
				case err != nil:
					return rep, err
				case n >= 0:
					stale = st
					i += len(run) - 1
					continue
				}
				// n < 0: not sent as a batch (an older server, or the call
				// refused as a whole); this entry goes alone.
			}
			e := pending[i]
			if err := c.reprotectOld(ctx, &e); err != nil {
				return rep, err
			}
			var resp qpcv1.EnqueueResponse
			err := c.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: e.ChannelID, MessageId: e.MessageID, MlsMessage: e.mls, GroupInfo: e.gi, RatchetTree: e.tree}, &resp)
			if err == nil && len(e.tree) > 0 && !resp.GetRatchetTreeStored() {
				c.treeDropped()
			}
			o, cause, err := c.settle(ctx, e, &resp, err, &rep, &redo)
			if err != nil {
				return rep, err
			}
			switch o {
			case outcomeNotSent:
				rep.Pending = len(pending) - i
				return rep, &NotSentError{Pending: rep.Pending, Err: cause}
			case outcomeRedone:
				stale = true // the outbox changed: read it again
			}
		}
		if !stale {
			return rep, nil
		}
	}
}

// What settle did with the server's answer to one entry.
type outcome int

const (
	outcomeDone    outcome = iota // accepted, or refused for good
	outcomeRedone                 // STALE_EPOCH: redone; the outbox changed
	outcomeNotSent                // not a refusal: the entry stays pending
)

// settle acts on the server's answer to one outbox entry, sent alone or in
// a batch: resp and err are what its Enqueue returned. With outcomeNotSent,
// cause is why; err is a failure of the client itself.
func (c *Client) settle(ctx context.Context, e OutboxEntry, resp *qpcv1.EnqueueResponse, sendErr error, rep *FlushReport, redo *int) (o outcome, cause, err error) {
	var se *wire.StatusError
	stale := errors.As(sendErr, &se) && se.Code == qpcv1.Status_STATUS_STALE_EPOCH
	var ahead *GroupAheadError
	if stale {
		ahead = c.groupAhead(ctx, e.ChannelID)
	}
	switch {
	case sendErr == nil:
		if err := c.accepted(ctx, e, resp); err != nil {
			return 0, nil, err
		}
		rep.Sent++
		return outcomeDone, nil, c.afterAccept(ctx, rep)
	case ahead != nil:
		// The server was restored to an earlier epoch of the group:
		// redoing cannot help until the lost commit is sent again.
		c.bumpAttempts(ctx, e.ID, ahead)
		return outcomeNotSent, ahead, nil
	case stale && e.Replay && e.kind != "app":
		// A change made before the server restore that no longer fits
		// the channel (another commit took its epoch).
		rep.Failed++
		return outcomeDone, nil, c.lostInRestore(ctx, e, sendErr)
	case stale && e.kind != "raw":
		if *redo >= maxRedo {
			return 0, nil, fmt.Errorf("client: still refused after %d redos: %w", *redo, sendErr)
		}
		*redo++
		rep.Redone++
		return outcomeRedone, nil, c.redo(ctx, e, sendErr)
	case IsRefusal(sendErr) || stale:
		rep.Failed++
		return outcomeDone, nil, c.refused(ctx, e, sendErr)
	default:
		// Not a refusal: the server unreachable, its certificate changed,
		// a deadline, a busy or failing server. The entry stays pending.
		c.bumpAttempts(ctx, e.ID, sendErr)
		return outcomeNotSent, sendErr, nil
	}
}

// Bounds of one EnqueueBatch from Flush: the server's item cap, and a
// share of the smallest payload cap a server is configured with in
// practice, so a batch never meets the frame cap (a larger message goes
// alone).
const (
	flushBatchMax      = 64
	flushBatchMaxBytes = 1 << 20
	// noBatchFor: after an "unknown method" answer, how long Flush sends
	// one Enqueue per message before asking the server again.
	noBatchFor = 10 * time.Minute
)

// batchRun returns the entries at the head of pending that may go in one
// EnqueueBatch: consecutive application messages (no commits, proposals
// or raw messages, whose answers change what the next entry must be), up
// to the batch caps. Fewer than two: send alone.
func (c *Client) batchRun(pending []OutboxEntry) []OutboxEntry {
	if c.now().Before(c.noBatchUntil) {
		return nil
	}
	size := 0
	n := 0
	for n < len(pending) && n < flushBatchMax {
		e := pending[n]
		if e.kind != "app" || len(e.gi) > 0 || size+len(e.mls) > flushBatchMaxBytes {
			break
		}
		size += len(e.mls)
		n++
	}
	return pending[:n]
}

// flushBatch sends run with one EnqueueBatch and settles every entry by
// its own result, in order: an accepted one is marked sent, a refused one
// failed, a stale one redone; one that failed for a passing reason (rate
// limit, an unavailable database) stays pending alone while the others
// are settled, and the flush stops after the batch with a *NotSentError
// (Pending 0: the caller counts). n is how many stayed pending; n < 0
// (with no error): nothing was sent as a batch, send the entries alone.
func (c *Client) flushBatch(ctx context.Context, run []OutboxEntry, rep *FlushReport, redo *int) (n int, stale bool, err error) {
	req := &qpcv1.EnqueueBatchRequest{Items: make([]*qpcv1.EnqueueRequest, len(run))}
	for i := range run {
		if err := c.reprotectOld(ctx, &run[i]); err != nil {
			return 0, false, err
		}
		e := run[i]
		req.Items[i] = &qpcv1.EnqueueRequest{ChannelId: e.ChannelID, MessageId: e.MessageID, MlsMessage: e.mls}
	}
	var resp qpcv1.EnqueueBatchResponse
	err = c.call(ctx, "EnqueueBatch", req, &resp)
	if olderServer(err) {
		c.noBatchUntil = c.now().Add(noBatchFor)
		c.log.Debug("client: the server has no EnqueueBatch; sending one message per call", "err", err)
		return -1, false, nil
	}
	if err != nil || len(resp.GetResults()) != len(run) {
		// Refused as a whole (a rate limit, the server busy or gone, an
		// answer that does not fit): the entries go alone, and the first
		// meets whatever stopped the batch.
		return -1, false, nil
	}
	var first error
	for i, e := range run {
		r := resp.GetResults()[i]
		var sendErr error
		if r.GetStatus() != qpcv1.Status_STATUS_OK {
			sendErr = &wire.StatusError{Code: r.GetStatus(), Message: r.GetMessage(), RetryAfter: time.Duration(r.GetRetryAfterMs()) * time.Millisecond}
		}
		o, cause, err := c.settle(ctx, e, r.GetResponse(), sendErr, rep, redo)
		if err != nil {
			return 0, false, err
		}
		switch o {
		case outcomeNotSent:
			n++
			if first == nil {
				first = cause
			}
		case outcomeRedone:
			stale = true
		}
	}
	if n > 0 {
		return n, stale, &NotSentError{Err: first}
	}
	return 0, stale, nil
}

// accepted marks an entry sent and, for a commit, merges it into the group
// state, in one transaction.
func (c *Client) accepted(ctx context.Context, e OutboxEntry, resp *qpcv1.EnqueueResponse) error {
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, seq = ?, attempts = attempts + 1, last_error = '', sent_ms = ? WHERE id = ?`,
			OutboxSent, int64(resp.GetSeq()), c.now().UnixMilli(), e.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE messages SET seq = ?, server_ms = ? WHERE channel_id = ? AND message_id = ?`,
			int64(resp.GetSeq()), resp.GetServerTimeUnixMs(), e.ChannelID, e.MessageID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM restore_lost WHERE channel_id = ? AND message_id = ?`, e.ChannelID, e.MessageID); err != nil {
			return err
		}
		if e.kind != "commit" || e.Replay {
			// A replayed commit was merged when first accepted.
			return nil
		}
		r, g, err := openGroup(ctx, tx, "", e.ChannelID)
		if errors.Is(err, ErrNotMember) {
			return nil // the device left the group meanwhile: nothing to merge into
		}
		if err != nil {
			return err
		}
		pc := g.Pending()
		if pc == nil {
			return fmt.Errorf("client: %s: the accepted commit is not pending in the group state", r.name)
		}
		if err := g.MergePendingCommit(pc); err != nil {
			return fmt.Errorf("client: merge accepted commit: %w", err)
		}
		return saveGroup(ctx, tx, e.ChannelID, g, c.now().UnixMilli())
	})
	if err != nil {
		return fmt.Errorf("client: record accepted message: %w", err)
	}
	return nil
}

// afterAccept does what follows accepted entries: the Welcome of a
// commit, then the channel membership change of a remove or a leave. Both
// are recorded when done, so a failure here is retried by the next Flush.
func (c *Client) afterAccept(ctx context.Context, rep *FlushReport) error {
	if err := c.sendWelcomes(ctx, rep); err != nil {
		return err
	}
	var due []OutboxEntry
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, channel_id, status, intent FROM outbox WHERE status IN (?, ?) AND kind IN ('commit', 'proposal') AND after_done = 0 ORDER BY id`,
			OutboxSent, OutboxStale)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e OutboxEntry
			if err := rows.Scan(&e.ID, &e.ChannelID, &e.Status, &e.intent); err != nil {
				return err
			}
			due = append(due, e)
		}
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("client: read outbox: %w", err)
	}
	for _, e := range due {
		var in commitIntent
		if err := json.Unmarshal(e.intent, &in); err != nil {
			return fmt.Errorf("client: outbox intent: %w", err)
		}
		switch in.Op {
		case "remove":
			// Only after the commit was accepted (a stale one is redone as
			// a new entry, which does this).
			if e.Status == OutboxStale {
				break
			}
			var refs []*qpcv1.MemberRef
			for _, a := range in.Accounts {
				refs = append(refs, &qpcv1.MemberRef{AccountName: a})
			}
			// NOT_FOUND: none of them is in the channel any more (done
			// before; a commit sent again after a server restore).
			if err := c.call(ctx, "RemoveMembers", &qpcv1.RemoveMembersRequest{ChannelId: e.ChannelID, Members: refs}, &qpcv1.RemoveMembersResponse{}); err != nil && !isNotFound(err) {
				return fmt.Errorf("client: remove from the channel (will retry): %w", err)
			}
		case "leave":
			// Accepted or stale: the device has forgotten the group either way.
			if err := c.leaveChannel(ctx, e.ChannelID); err != nil {
				return err
			}
		}
		if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `UPDATE outbox SET after_done = 1 WHERE id = ?`, e.ID)
			return err
		}); err != nil {
			return fmt.Errorf("client: update outbox: %w", err)
		}
	}
	return nil
}

// isNotFound reports a NOT_FOUND status from the server.
func isNotFound(err error) bool {
	var se *wire.StatusError
	return errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND
}

func (c *Client) leaveChannel(ctx context.Context, channelID []byte) error {
	id, err := c.Identity(ctx)
	if err != nil {
		return err
	}
	id.key.Wipe()
	ref := &qpcv1.MemberRef{AccountName: id.AccountName, DeviceId: id.DeviceID}
	if err := c.call(ctx, "RemoveMembers", &qpcv1.RemoveMembersRequest{ChannelId: channelID, Members: []*qpcv1.MemberRef{ref}}, &qpcv1.RemoveMembersResponse{}); err != nil && !isNotFound(err) {
		return fmt.Errorf("client: leave the channel: %w", err)
	}
	return nil
}

// sendWelcomes sends the Welcomes of accepted commits not yet sent.
func (c *Client) sendWelcomes(ctx context.Context, rep *FlushReport) error {
	var due []OutboxEntry
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, channel_id, welcome, welcome_to FROM outbox WHERE status = ? AND welcome IS NOT NULL AND welcome_sent = 0 ORDER BY id`, OutboxSent)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e OutboxEntry
			var to sql.NullString
			if err := rows.Scan(&e.ID, &e.ChannelID, &e.welcome, &to); err != nil {
				return err
			}
			e.welcomeTo = to.String
			due = append(due, e)
		}
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("client: read outbox: %w", err)
	}
	for _, e := range due {
		var to []inboxAddress
		if err := json.Unmarshal([]byte(e.welcomeTo), &to); err != nil {
			return fmt.Errorf("client: outbox Welcome recipients: %w", err)
		}
		for start := 0; start < len(to); start += 100 {
			req := &qpcv1.SendToInboxRequest{ChannelId: e.ChannelID, Kind: qpcv1.InboxKind_INBOX_KIND_WELCOME, Payload: e.welcome}
			for _, a := range to[start:min(start+100, len(to))] {
				req.Recipients = append(req.Recipients, &qpcv1.InboxRecipient{AccountName: a.Account, DeviceId: a.Device})
			}
			if err := c.call(ctx, "SendToInbox", req, &qpcv1.SendToInboxResponse{}); err != nil {
				return fmt.Errorf("client: send Welcome (will retry): %w", err)
			}
		}
		if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `UPDATE outbox SET welcome_sent = 1 WHERE id = ?`, e.ID)
			return err
		}); err != nil {
			return fmt.Errorf("client: update outbox: %w", err)
		}
		rep.Welcomes++
	}
	return nil
}

// redo handles STALE_EPOCH: drop our pending commit, fetch and process
// what won, then queue the change again (a new commit under a new message
// id) or re-encrypt the application message (same message id: the server
// stored nothing under it).
func (c *Client) redo(ctx context.Context, e OutboxEntry, cause error) error {
	c.groupMu.Lock()
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ? WHERE id = ?`, OutboxStale, cause.Error(), e.ID); err != nil {
			return err
		}
		if e.kind != "commit" {
			return nil
		}
		_, g, err := openGroup(ctx, tx, "", e.ChannelID)
		if err != nil {
			return err
		}
		g.ClearPendingCommit()
		return saveGroup(ctx, tx, e.ChannelID, g, c.now().UnixMilli())
	})
	c.groupMu.Unlock()
	if err != nil {
		return fmt.Errorf("client: drop refused commit: %w", err)
	}
	// If the fetch fails the change is queued again anyway (it may be
	// refused as stale once more and redone then): a redo never drops it.
	if _, err := c.Sync(ctx, 0); err != nil {
		if rerr := c.requeue(ctx, e); rerr != nil {
			return errors.Join(fmt.Errorf("client: fetch the winning commit: %w", err), rerr)
		}
		return &NotSentError{Pending: 1, Err: fmt.Errorf("client: fetch the winning commit: %w", err)}
	}
	return c.requeue(ctx, e)
}

// requeue queues the change of a stale entry again: a new commit, or the
// application message encrypted in the current epoch.
func (c *Client) requeue(ctx context.Context, e OutboxEntry) error {
	switch e.kind {
	case "commit":
		var in commitIntent
		if err := json.Unmarshal(e.intent, &in); err != nil {
			return fmt.Errorf("client: outbox intent: %w", err)
		}
		if in.Op == "commit" {
			return nil // the winner committed the proposals already, or a later commit will
		}
		err := c.queueCommit(ctx, e.ChannelID, in)
		if errors.Is(err, ErrNotMember) && in.Op == "remove" {
			return nil // someone else removed them first
		}
		if errors.Is(err, errNothingToAdd) {
			return nil // someone else added them first
		}
		return err
	case "app":
		c.groupMu.Lock()
		defer c.groupMu.Unlock()
		return c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			ct, err := c.protectAgain(ctx, tx, &e)
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `UPDATE outbox SET status = ?, mls_message = ? WHERE id = ?`, OutboxPending, ct, e.ID)
			return err
		})
	case "proposal":
		// A leave proposal of an epoch that has passed: the device has
		// already forgotten the group; it still leaves the channel.
		return c.afterAccept(ctx, &FlushReport{})
	}
	return nil
}

// refused marks an entry failed for good; a refused commit is dropped from
// the group state.
func (c *Client) refused(ctx context.Context, e OutboxEntry, cause error) error {
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ? WHERE id = ?`, OutboxFailed, cause.Error(), e.ID); err != nil {
			return err
		}
		var se *wire.StatusError
		if errors.As(cause, &se) && se.Code == qpcv1.Status_STATUS_PERMISSION_DENIED {
			// The server no longer counts this device in the channel: it
			// was removed (the commit removing it is not fetchable any more).
			_, err := tx.ExecContext(ctx, `UPDATE groups SET status = ?, state = NULL, updated_ms = ? WHERE channel_id = ? AND status = ?`,
				statusRemoved, c.now().UnixMilli(), e.ChannelID, statusActive)
			return err
		}
		if e.kind != "commit" {
			return nil
		}
		_, g, err := openGroup(ctx, tx, "", e.ChannelID)
		if err != nil {
			return nil // the group is gone; nothing to drop
		}
		g.ClearPendingCommit()
		return saveGroup(ctx, tx, e.ChannelID, g, c.now().UnixMilli())
	})
	if err != nil {
		return fmt.Errorf("client: update outbox: %w", err)
	}
	c.log.Warn("client: message refused by the server", "message_id", e.MessageID, "err", cause)
	return nil
}

// protectAgain encrypts a queued application message's intent in the
// group's current epoch and saves the group's advanced secret tree, in tx;
// the caller stores the new ciphertext in the outbox entry. Callers hold
// groupMu.
func (c *Client) protectAgain(ctx context.Context, tx *sql.Tx, e *OutboxEntry) ([]byte, error) {
	_, g, err := openGroup(ctx, tx, "", e.ChannelID)
	if err != nil {
		return nil, err
	}
	ct, err := g.Protect(e.intent, nil)
	if err != nil {
		return nil, fmt.Errorf("client: encrypt again: %w", err)
	}
	if err := saveGroup(ctx, tx, e.ChannelID, g, c.now().UnixMilli()); err != nil {
		return nil, err
	}
	return ct, nil
}

// reprotectOld encrypts a queued application message again when the group
// has moved to another epoch since it was encrypted (same message id: if
// the server already took the old ciphertext under it, it answers
// duplicate). Members who joined since can then read it, and members
// removed since cannot; after a rejoin (a server restore) the old epoch may
// be one the others never had.
func (c *Client) reprotectOld(ctx context.Context, e *OutboxEntry) error {
	if e.kind != "app" || len(e.intent) == 0 {
		return nil
	}
	var m mls.MLSMessage
	if err := m.Unmarshal(e.mls); err != nil || m.PrivateMessage == nil {
		return nil // the server judges it
	}
	var epoch int64
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT epoch FROM groups WHERE channel_id = ? AND status = ? AND state IS NOT NULL`, e.ChannelID, statusActive).Scan(&epoch)
	})
	if errors.Is(err, sql.ErrNoRows) || (err == nil && uint64(epoch) == m.PrivateMessage.Epoch) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("client: read group: %w", err)
	}
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		ct, err := c.protectAgain(ctx, tx, e)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET mls_message = ? WHERE id = ?`, ct, e.ID); err != nil {
			return err
		}
		e.mls = ct
		return nil
	})
	if err != nil {
		return fmt.Errorf("client: encrypt a queued message for the current epoch: %w", err)
	}
	return nil
}

// lostInRestore marks a replayed entry the restored server refused: lost,
// and so is its message in history.
func (c *Client) lostInRestore(ctx context.Context, e OutboxEntry, cause error) error {
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ? WHERE id = ?`,
			OutboxLost, "lost in a server restore: "+cause.Error(), e.ID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO restore_lost (channel_id, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, e.ChannelID, e.MessageID)
		return err
	})
	if err != nil {
		return fmt.Errorf("client: update outbox: %w", err)
	}
	c.log.Warn("client: a change made before the server restore cannot be sent again", "message_id", e.MessageID, "kind", e.kind, "err", cause)
	return nil
}

func (c *Client) bumpAttempts(ctx context.Context, id int64, cause error) {
	ctx = context.WithoutCancel(ctx)
	_ = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?`, cause.Error(), id)
		return err
	})
}
