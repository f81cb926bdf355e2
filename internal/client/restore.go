package client

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// After a server restore (docs/client.md, "After a server restore").
//
// A restore rolls the server back to a snapshot: every channel's head, and
// the epoch of its group, go back to what they were then, and the server
// hands out the sequence numbers after the snapshot's head again. This
// device's cursors may be ahead of those heads, and a message at or below a
// cursor is taken for one already stored: without reconciling, everything
// the restored server accepts up to the old cursor would be dropped here
// silently. Fetch answers carry the store's incarnation id, which every
// restore replaces; when it changes, the device reconciles once.

// RestoredChannel is one channel the restore set back, as this device saw it.
type RestoredChannel struct {
	Channel     string `json:"channel"` // group or @DM name on this device
	ChannelID   []byte `json:"channel_id"`
	LocalSeq    uint64 `json:"local_seq"`   // where this device's cursor was
	ServerHead  uint64 `json:"server_head"` // this device's position on the restored server (cursor moved down to it)
	LocalEpoch  uint64 `json:"local_epoch"`
	ServerEpoch uint64 `json:"server_epoch"`
	// Lost: others' messages in this device's history past the restored
	// head, marked lost until their senders send them again.
	Lost int `json:"lost"`
	// Resent: this device's messages the server no longer has, queued to
	// be sent again as they were (same message id and MLS message).
	Resent int `json:"resent"`
	// NotResent: ids of this device's messages the server no longer has
	// that cannot be sent again (the group is gone here); history marks
	// them lost.
	NotResent []string `json:"not_resent,omitempty"`
}

// ServerRestore says what this device did when it found the server
// restored from a backup.
type ServerRestore struct {
	Channels []RestoredChannel `json:"channels"`
	Lost     int               `json:"lost"`
	Resent   int               `json:"resent"`
}

// metaIncarnation is the client meta key holding the server's store
// incarnation id as last seen; metaRestoreNotice, the ServerRestore not yet
// shown to the user.
const (
	metaIncarnation   = "server_incarnation"
	metaRestoreNotice = "restore_notice"
)

// ErrGroupAheadOfServer: the group's state here is at a later epoch than
// the server's channel, because the server was restored from a backup taken
// before a commit. The message stays queued.
var ErrGroupAheadOfServer = errors.New("client: the group is ahead of the server (the server was restored from a backup)")

// GroupAheadError is ErrGroupAheadOfServer with the group and epochs.
type GroupAheadError struct {
	Group       string
	LocalEpoch  uint64
	ServerEpoch uint64
}

func (e *GroupAheadError) Error() string {
	return fmt.Sprintf("%v: %s is at epoch %d here and at epoch %d on the server, which lost the change(s) made since; "+
		"the change comes back when the member who made it runs qpc recv (its client sends it again), and your message waits in the outbox until then; "+
		"if that member's device is gone, every member runs qpc group rejoin %s",
		ErrGroupAheadOfServer, e.Group, e.LocalEpoch, e.ServerEpoch, e.Group)
}

func (e *GroupAheadError) Unwrap() error { return ErrGroupAheadOfServer }

// noteIncarnation compares the server's incarnation id with the one last
// seen and reconciles when it changed. An empty id (an older server) and
// the first one seen change nothing.
func (c *Client) noteIncarnation(ctx context.Context, inc string) (*ServerRestore, error) {
	if inc == "" {
		return nil, nil
	}
	var seen sql.NullString
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaIncarnation).Scan(&seen)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: read the server's incarnation: %w", err)
	}
	if seen.String == inc {
		return nil, nil
	}
	if seen.String == "" {
		// First contact (or a client from before incarnations): nothing to
		// compare with; remember it.
		return nil, c.db.WriteTx(ctx, func(tx *sql.Tx) error { return setMeta(ctx, tx, metaIncarnation, inc) })
	}
	c.log.Warn("client: the server was restored from a backup; reconciling this device with it")
	return c.reconcileRestore(ctx, inc)
}

func setMeta(ctx context.Context, tx *sql.Tx, key, value string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	return err
}

// reconcileRestore brings this device in line with a restored server:
// stored messages are applied first; then, per channel whose cursor is past
// the server's head, the cursor moves down to the head, what others sent
// past it is marked lost in history, and this device's own messages past it
// are queued again as they were (Flush sends them; the server's epoch
// fencing decides whether each still fits). The inbox position restarts so
// no Welcome of the restored server is mistaken for one already seen. All
// of it, and the new incarnation id, in one transaction: a crash redoes it.
func (c *Client) reconcileRestore(ctx context.Context, inc string) (*ServerRestore, error) {
	if _, err := c.process(ctx); err != nil {
		return nil, err
	}
	var lc qpcv1.ListChannelsResponse
	if err := c.call(ctx, "ListChannels", &qpcv1.ListChannelsRequest{}, &lc); err != nil {
		return nil, fmt.Errorf("client: list channels after a server restore: %w", err)
	}
	type serverChannel struct{ head, epoch, acked uint64 }
	server := map[string]serverChannel{}
	for _, ch := range lc.GetChannels() {
		server[string(ch.GetChannelId())] = serverChannel{ch.GetHeadSeq(), ch.GetEpoch(), ch.GetAckedSeq()}
	}
	out := &ServerRestore{}
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		// Every channel this device holds anything of.
		rows, err := tx.QueryContext(ctx, `SELECT ch.id, COALESCE(g.name, ''), COALESCE(g.status, ''), COALESCE(g.epoch, 0), COALESCE(cu.seq, 0),
				COALESCE((SELECT max(seq) FROM outbox o WHERE o.channel_id = ch.id AND o.status = ?), 0)
			FROM (SELECT channel_id AS id FROM groups UNION SELECT channel_id FROM cursors UNION SELECT channel_id FROM outbox) ch
			LEFT JOIN groups g ON g.channel_id = ch.id LEFT JOIN cursors cu ON cu.channel_id = ch.id ORDER BY g.name`, OutboxSent)
		if err != nil {
			return err
		}
		type local struct {
			rc     RestoredChannel
			status string
			sent   uint64
		}
		var chans []local
		for rows.Next() {
			var l local
			var epoch, seq, sent int64
			if err := rows.Scan(&l.rc.ChannelID, &l.rc.Channel, &l.status, &epoch, &seq, &sent); err != nil {
				rows.Close()
				return err
			}
			l.rc.LocalEpoch, l.rc.LocalSeq, l.sent = uint64(epoch), uint64(seq), uint64(sent)
			chans = append(chans, l)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, l := range chans {
			rc := l.rc
			// The device's acknowledged position on the restored server is
			// at or below the snapshot's head, and everything up to it is
			// what the device had: the cursor moves down to it (the channel
			// head may already count messages sent since the restore). A
			// channel the restored server does not list for this device
			// (joined after the snapshot) has nothing of it: 0.
			sc := server[string(rc.ChannelID)]
			rc.ServerHead, rc.ServerEpoch = sc.acked, sc.epoch
			if rc.LocalSeq <= sc.acked && l.sent <= sc.acked {
				continue
			}
			head := int64(sc.acked)
			if head == 0 {
				// Nothing acknowledged: like a joiner, the first message
				// fetched sets the cursor (no false gap).
				if _, err := tx.ExecContext(ctx, `DELETE FROM cursors WHERE channel_id = ?`, rc.ChannelID); err != nil {
					return err
				}
			} else if _, err := tx.ExecContext(ctx, `UPDATE cursors SET seq = min(seq, ?), acked = min(acked, ?), processed = min(processed, ?),
				gap_from = CASE WHEN gap_from > ? THEN 0 ELSE gap_from END, gap_to = CASE WHEN gap_from > ? THEN 0 ELSE gap_to END
				WHERE channel_id = ?`, head, head, head, head, head, rc.ChannelID); err != nil {
				return err
			}
			// Left unprocessed (no group here yet): fetched again.
			if _, err := tx.ExecContext(ctx, `DELETE FROM inbound WHERE channel_id = ? AND seq > ?`, rc.ChannelID, head); err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO restore_lost (channel_id, message_id)
				SELECT channel_id, message_id FROM messages WHERE channel_id = ? AND outgoing = 0 AND seq > ? ON CONFLICT DO NOTHING`, rc.ChannelID, head)
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			rc.Lost = int(n)
			own, err := tx.QueryContext(ctx, `SELECT id, message_id FROM outbox WHERE channel_id = ? AND status = ? AND seq > ? ORDER BY id`, rc.ChannelID, OutboxSent, head)
			if err != nil {
				return err
			}
			type entry struct {
				id  int64
				mid string
			}
			var mine []entry
			for own.Next() {
				var e entry
				if err := own.Scan(&e.id, &e.mid); err != nil {
					own.Close()
					return err
				}
				mine = append(mine, e)
			}
			own.Close()
			if err := own.Err(); err != nil {
				return err
			}
			for _, e := range mine {
				if l.status != statusActive {
					// The group is gone here: nothing can send it again.
					if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, seq = 0, last_error = ? WHERE id = ?`,
						OutboxLost, "lost in a server restore; the group is no longer active on this device", e.id); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `UPDATE messages SET seq = 0 WHERE channel_id = ? AND message_id = ?`, rc.ChannelID, e.mid); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO restore_lost (channel_id, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, rc.ChannelID, e.mid); err != nil {
						return err
					}
					rc.NotResent = append(rc.NotResent, e.mid)
					continue
				}
				// Queued again as it was. The server may still have it (it
				// was in the snapshot): its message id makes the send
				// idempotent. The channel membership change of a remove or
				// leave is done again after it is accepted; a Welcome is
				// not (the invitation it answered was lost with the restore:
				// such members are invited again).
				if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, seq = 0, attempts = 0, last_error = '',
					after_done = 0 WHERE id = ?`, OutboxPending, e.id); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO outbox_replay (outbox_id) VALUES (?) ON CONFLICT DO NOTHING`, e.id); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE messages SET seq = 0, server_ms = 0 WHERE channel_id = ? AND message_id = ?`, rc.ChannelID, e.mid); err != nil {
					return err
				}
				rc.Resent++
			}
			out.Lost += rc.Lost
			out.Resent += rc.Resent
			out.Channels = append(out.Channels, rc)
		}
		// The restored server numbers its inbox items from its snapshot.
		if _, err := tx.ExecContext(ctx, `UPDATE kv SET value = 0 WHERE key = 'inbox_seq'`); err != nil {
			return err
		}
		if err := setMeta(ctx, tx, metaIncarnation, inc); err != nil {
			return err
		}
		notice, err := json.Marshal(out)
		if err != nil {
			return err
		}
		return setMeta(ctx, tx, metaRestoreNotice, string(notice))
	})
	if err != nil {
		return nil, fmt.Errorf("client: reconcile with the restored server: %w", err)
	}
	for _, rc := range out.Channels {
		c.log.Warn("client: channel set back by a server restore", "channel", rc.Channel, "local_seq", rc.LocalSeq, "server_head", rc.ServerHead,
			"local_epoch", rc.LocalEpoch, "server_epoch", rc.ServerEpoch, "lost", rc.Lost, "resent", rc.Resent, "not_resent", len(rc.NotResent))
	}
	return out, nil
}

// RestoreNotice returns what the last reconciliation with a restored
// server found, once (nil afterwards, and when there was none): qpc recv
// tells the user.
func (c *Client) RestoreNotice(ctx context.Context) (*ServerRestore, error) {
	var out *ServerRestore
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaRestoreNotice).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		out = &ServerRestore{}
		if err := json.Unmarshal([]byte(v), out); err != nil {
			return err
		}
		// Counted now: messages fetched again since are no longer lost.
		out.Lost = 0
		for i := range out.Channels {
			ch := &out.Channels[i]
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM restore_lost rl JOIN messages m ON m.channel_id = rl.channel_id AND m.message_id = rl.message_id
				WHERE rl.channel_id = ? AND m.outgoing = 0`, ch.ChannelID).Scan(&ch.Lost); err != nil {
				return err
			}
			out.Lost += ch.Lost
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM meta WHERE key = ?`, metaRestoreNotice)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: restore notice: %w", err)
	}
	return out, nil
}

// groupAhead checks, after a STALE_EPOCH, whether the group here is at a
// later epoch than the server's channel: only a restore of the server does
// that (normally a stale message means the server is ahead).
func (c *Client) groupAhead(ctx context.Context, channelID []byte) *GroupAheadError {
	var name string
	var epoch int64
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT name, epoch FROM groups WHERE channel_id = ? AND status = ?`, channelID, statusActive).Scan(&name, &epoch)
	})
	if err != nil {
		return nil
	}
	var lc qpcv1.ListChannelsResponse
	if err := c.call(ctx, "ListChannels", &qpcv1.ListChannelsRequest{}, &lc); err != nil {
		return nil
	}
	for _, ch := range lc.GetChannels() {
		if string(ch.GetChannelId()) == string(channelID) && ch.GetEpoch() < uint64(epoch) {
			return &GroupAheadError{Group: name, LocalEpoch: uint64(epoch), ServerEpoch: ch.GetEpoch()}
		}
	}
	return nil
}
