package client

import (
	"context"
	"database/sql"
	"fmt"
)

// Delivery states of an outgoing message in history.
const (
	DeliveryDelivered = "delivered" // the server has it
	DeliveryPending   = "pending"   // in the outbox, not yet taken by the server
	DeliveryRefused   = "refused"   // the server refused it for good (qpc outbox retry or discard)
	DeliveryDiscarded = "discarded" // dropped from the outbox by the user; never delivered
	DeliveryLost      = "lost"      // delivered, then lost when the server was restored from a backup, and not sent again
)

// Message is one decrypted message of a channel's history.
type Message struct {
	Channel     string `json:"channel"`
	MessageID   string `json:"message_id"`
	Seq         uint64 `json:"seq"`
	Sender      string `json:"sender"` // "<account_name>/<device_id>"
	DisplayName string `json:"display_name"`
	Text        string `json:"text"`
	ReplyTo     string `json:"reply_to,omitempty"`
	SentUnixMs  int64  `json:"sent_unix_ms"`
	Outgoing    bool   `json:"outgoing"`
	// Delivery is set for outgoing messages: delivered, pending, refused
	// or discarded (see the Delivery* constants).
	Delivery string `json:"delivery,omitempty"`
	// DeliveryError is why a refused message was refused.
	DeliveryError string `json:"delivery_error,omitempty"`
	// Set on a membership change the server announced (Text says it in words).
	Event *Event `json:"event,omitempty"`
	// LostInRestore: the server was restored from a backup taken before
	// this message and no longer has it (others' messages: until their
	// sender sends them again; outgoing ones: Delivery is lost).
	LostInRestore bool `json:"lost_in_restore,omitempty"`
}

// messageColumns are the columns scanMessages reads; the query joins
// groups g, messages m and (LEFT) outbox o.
const messageColumns = `g.name, m.message_id, m.seq, m.sender, m.display, m.text, m.reply_to, m.sent_ms, m.outgoing,
	COALESCE(o.status, ''), COALESCE(o.last_error, ''), m.event,
	EXISTS (SELECT 1 FROM restore_lost rl WHERE rl.channel_id = m.channel_id AND rl.message_id = m.message_id)`

const messageJoins = `messages m JOIN groups g ON g.channel_id = m.channel_id LEFT JOIN outbox o ON o.message_id = m.message_id`

func scanMessage(rows *sql.Rows, extra ...any) (Message, error) {
	var m Message
	var seq int64
	var status, lastErr, ev string
	dst := append([]any{&m.Channel, &m.MessageID, &seq, &m.Sender, &m.DisplayName, &m.Text, &m.ReplyTo, &m.SentUnixMs, &m.Outgoing, &status, &lastErr, &ev, &m.LostInRestore}, extra...)
	if err := rows.Scan(dst...); err != nil {
		return m, err
	}
	m.Seq, m.Event = uint64(seq), parseEvent(ev)
	if m.Outgoing {
		m.Delivery = deliveryOf(m.Seq, status)
		if m.LostInRestore || status == OutboxLost {
			m.Delivery, m.LostInRestore = DeliveryLost, true
		}
		if m.Delivery == DeliveryRefused || m.Delivery == DeliveryLost {
			m.DeliveryError = lastErr
		}
	}
	return m, nil
}

// deliveryOf is an outgoing message's delivery state from its seq and its
// outbox status ("" when it has no outbox entry any more).
func deliveryOf(seq uint64, status string) string {
	switch {
	case seq > 0 || status == OutboxSent:
		return DeliveryDelivered
	case status == OutboxFailed:
		return DeliveryRefused
	case status == "":
		return DeliveryDiscarded
	default:
		return DeliveryPending // pending, or stale and being redone
	}
}

func scanMessages(rows *sql.Rows) ([]Message, error) {
	defer rows.Close()
	var out []Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// History returns a channel's stored messages (at most limit, the newest),
// oldest first: delivered ones in the server's order, then those not
// delivered (pending, refused, discarded) in the order written. Outgoing
// messages carry their Delivery state.
func (c *Client) History(ctx context.Context, channel string, limit int) ([]Message, error) {
	if limit <= 0 {
		limit = 100
	}
	ch, err := c.channelOf(ctx, channel)
	if err != nil {
		return nil, err
	}
	var out []Message
	err = c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT * FROM (SELECT `+messageColumns+`, (m.seq = 0) * 9007199254740991 + m.seq AS k, m.rowid AS r
			FROM `+messageJoins+`
			WHERE m.channel_id = ? ORDER BY k DESC, r DESC LIMIT ?) ORDER BY k, r`, ch, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k, r int64
			m, err := scanMessage(rows, &k, &r)
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: history: %w", err)
	}
	return out, nil
}

// Received returns incoming messages not returned before (recv and watch
// print them), oldest first, and marks them shown.
func (c *Client) Received(ctx context.Context) ([]Message, error) {
	var out []Message
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+messageColumns+` FROM `+messageJoins+`
			WHERE m.shown = 0 ORDER BY m.rowid`)
		if err != nil {
			return err
		}
		if out, err = scanMessages(rows); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE messages SET shown = 1 WHERE shown = 0`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: read messages: %w", err)
	}
	return out, nil
}
