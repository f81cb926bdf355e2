package client

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Outbox statuses.
const (
	OutboxPending = "pending" // not yet accepted by the server
	OutboxSent    = "sent"    // the server has it (seq set)
	OutboxStale   = "stale"   // a commit refused with STALE_EPOCH; the group layer redoes it
	OutboxFailed  = "failed"  // refused for good (last_error says why)
)

// NewMessageID returns a random (version 4) UUID.
func NewMessageID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("client: message id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
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
	id, err := NewMessageID()
	if err != nil {
		return "", err
	}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		return queueTx(ctx, tx, id, channelID, mlsMessage, groupInfo, c.now().UnixMilli())
	})
	return id, err
}

// OutboxEntry is one outbox row.
type OutboxEntry struct {
	ID        int64  `json:"-"`
	MessageID string `json:"message_id"`
	ChannelID []byte `json:"channel_id"`
	Status    string `json:"status"`
	Seq       uint64 `json:"seq,omitempty"`
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error,omitempty"`
	mls, gi   []byte
}

// Outbox lists the outbox, oldest first (sent entries included).
func (c *Client) Outbox(ctx context.Context) ([]OutboxEntry, error) {
	return c.outboxWhere(ctx, "1 = 1")
}

func (c *Client) outboxWhere(ctx context.Context, where string, args ...any) ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, message_id, channel_id, status, seq, attempts, last_error, mls_message, group_info
			FROM outbox WHERE `+where+` ORDER BY id`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e OutboxEntry
			var seq int64
			if err := rows.Scan(&e.ID, &e.MessageID, &e.ChannelID, &e.Status, &seq, &e.Attempts, &e.LastError, &e.mls, &e.gi); err != nil {
				return err
			}
			e.Seq = uint64(seq)
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
	Sent    int `json:"sent"`
	Stale   int `json:"stale"`
	Failed  int `json:"failed"`
	Pending int `json:"pending"` // still waiting (the server unreachable)
}

// Flush sends every pending outbox entry in order. A transient failure
// (server down, draining, rate-limited) stops the flush with the entry and
// those after it still pending, to be sent by the next Flush; since the
// server stores a message id once, an entry whose reply was lost is sent
// again harmlessly, so each message is delivered exactly once. A commit
// refused with STALE_EPOCH is marked stale for the group layer to redo;
// any other refusal marks the entry failed.
func (c *Client) Flush(ctx context.Context) (FlushReport, error) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	var rep FlushReport
	pending, err := c.outboxWhere(ctx, "status = ?", OutboxPending)
	if err != nil {
		return rep, err
	}
	for i, e := range pending {
		var resp qpcv1.EnqueueResponse
		err := c.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: e.ChannelID, MessageId: e.MessageID, MlsMessage: e.mls, GroupInfo: e.gi}, &resp)
		status, seq, lastErr := OutboxSent, resp.GetSeq(), ""
		var se *wire.StatusError
		switch {
		case err == nil:
			rep.Sent++
		case Retryable(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			c.bumpAttempts(ctx, e.ID, err)
			rep.Pending = len(pending) - i
			return rep, fmt.Errorf("client: send (will retry; %d message(s) wait in the outbox): %w", rep.Pending, err)
		case errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_STALE_EPOCH:
			status, lastErr = OutboxStale, err.Error()
			rep.Stale++
		default:
			status, lastErr = OutboxFailed, err.Error()
			rep.Failed++
		}
		werr := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, seq = ?, attempts = attempts + 1, last_error = ?, sent_ms = ? WHERE id = ?`,
				status, int64(seq), lastErr, c.now().UnixMilli(), e.ID)
			if err != nil || status != OutboxSent {
				return err
			}
			_, err = tx.ExecContext(ctx, `UPDATE messages SET seq = ?, server_ms = ? WHERE channel_id = ? AND message_id = ?`,
				int64(seq), resp.GetServerTimeUnixMs(), e.ChannelID, e.MessageID)
			return err
		})
		if werr != nil {
			return rep, fmt.Errorf("client: update outbox: %w", werr)
		}
	}
	return rep, nil
}

func (c *Client) bumpAttempts(ctx context.Context, id int64, cause error) {
	ctx = context.WithoutCancel(ctx)
	_ = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?`, cause.Error(), id)
		return err
	})
}
