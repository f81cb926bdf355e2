package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Gap is a stretch of a channel's log this device never received: the
// server's sequence numbers are contiguous, so a jump means those messages
// expired (retention) before the device fetched them. The group state can
// no longer follow the channel; the device must rejoin by external commit
// from the stored GroupInfo.
type Gap struct {
	ChannelID []byte `json:"channel_id"`
	From      uint64 `json:"from"` // first missing seq
	To        uint64 `json:"to"`   // last missing seq
}

// SyncReport says what one Sync stored.
type SyncReport struct {
	Messages   int   `json:"messages"`   // channel messages stored for processing
	Duplicates int   `json:"duplicates"` // already stored (an ack had been lost)
	Inbox      int   `json:"inbox"`      // inbox items (Welcomes) stored
	Gaps       []Gap `json:"gaps,omitempty"`
	Processed  int   `json:"processed"` // handed to the group layer and done
	Rejoined   int   `json:"rejoined"`  // groups rejoined by external commit after a gap
	// RemovedFrom names the groups and DMs this Sync found this device
	// removed from (by a commit it processed, or because the server no
	// longer counts it in the channel): each is reported once.
	RemovedFrom []string `json:"removed_from,omitempty"`
	// ServerRestored is set by the Sync that found the server restored
	// from a backup (its store incarnation changed) and reconciled this
	// device with it (restore.go).
	ServerRestored *ServerRestore `json:"server_restored,omitempty"`
}

// fetchLimit is the page size asked for.
const fetchLimit = 100

// Sync fetches what is waiting (waiting up to wait for something to arrive
// when wait > 0), stores it and moves the local cursors in one
// transaction, then acknowledges it to the server. Whatever arrives is
// safe on disk before the server forgets it; an ack lost to a crash only
// makes the server send the same messages again, which the cursors
// recognise as duplicates.
func (c *Client) Sync(ctx context.Context, wait time.Duration) (_ SyncReport, err error) {
	ctx, span := c.span(ctx, "client.sync")
	defer endSpan(span, &err)
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	var rep SyncReport
	active, err := c.activeGroups(ctx)
	if err != nil {
		return rep, err
	}
	refill := false // the server saw others take this device's KeyPackages
	for {
		var resp qpcv1.FetchResponse
		var err error
		if wait > 0 {
			err = c.call(ctx, "FetchWait", &qpcv1.FetchWaitRequest{TimeoutMs: uint32(min(wait, time.Hour).Milliseconds()), Limit: fetchLimit}, &resp)
		} else {
			err = c.call(ctx, "Fetch", &qpcv1.FetchRequest{Limit: fetchLimit}, &resp)
		}
		if err != nil {
			return rep, fmt.Errorf("client: fetch: %w", err)
		}
		refill = refill || resp.GetRefillKeyPackages()
		// Before storing: a restored server hands out again sequence
		// numbers this device's cursors have passed.
		restored, err := c.noteIncarnation(ctx, resp.GetStoreIncarnation())
		if err != nil {
			return rep, err
		}
		if restored != nil {
			rep.ServerRestored = restored
			refill = true // the restore deleted every unclaimed KeyPackage
		}
		ack, err := c.store(ctx, &resp, &rep)
		if err != nil {
			return rep, err
		}
		if ack != nil {
			if err := c.call(ctx, "Ack", ack, &qpcv1.AckResponse{}); err != nil {
				return rep, fmt.Errorf("client: ack: %w", err)
			}
			if err := c.markAcked(ctx, ack); err != nil {
				return rep, err
			}
		}
		n, err := c.process(ctx)
		rep.Processed += n
		if err != nil {
			return rep, err
		}
		if !resp.GetMore() {
			// A Welcome used a KeyPackage up; a refill signal means others
			// took some (perhaps a drain): either way, top up now.
			c.maybeUpkeep(ctx, rep.Inbox > 0 || refill)
			if rep.RemovedFrom, err = c.membershipCheck(ctx, active); err != nil {
				return rep, err
			}
			if err := c.checkGossip(ctx); err != nil {
				return rep, err
			}
			if len(rep.Gaps) > 0 {
				n, err := c.rejoinGaps(ctx)
				rep.Rejoined += n
				if err != nil {
					return rep, err
				}
			}
			return rep, nil
		}
		wait = 0
	}
}

// store writes a fetch response and the cursors it moves, in one
// transaction, and returns the Ack to send (nil: nothing new).
func (c *Client) store(ctx context.Context, resp *qpcv1.FetchResponse, rep *SyncReport) (*qpcv1.AckRequest, error) {
	if len(resp.GetMessages()) == 0 && len(resp.GetInbox()) == 0 {
		return nil, nil
	}
	ack := &qpcv1.AckRequest{}
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		cursors := map[string]uint64{}
		known := map[string]bool{}
		for _, m := range resp.GetMessages() {
			ch := string(m.GetChannelId())
			cur, ok := cursors[ch]
			if !ok {
				var s int64
				err := tx.QueryRowContext(ctx, `SELECT seq FROM cursors WHERE channel_id = ?`, m.GetChannelId()).Scan(&s)
				switch {
				case errors.Is(err, sql.ErrNoRows):
				case err != nil:
					return err
				default:
					cur, known[ch] = uint64(s), true
				}
			}
			seq := m.GetSeq()
			if known[ch] && seq <= cur {
				rep.Duplicates++
				cursors[ch] = cur
				continue
			}
			if known[ch] && seq > cur+1 {
				// This device's own messages in the hole were not missed.
				var own int64
				if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM outbox WHERE channel_id = ? AND status = ? AND seq > ? AND seq < ?`,
					m.GetChannelId(), OutboxSent, int64(cur), int64(seq)).Scan(&own); err != nil {
					return err
				}
				if uint64(own) == seq-cur-1 {
					cur = seq - 1
				}
			}
			if known[ch] && seq > cur+1 {
				g := Gap{ChannelID: m.GetChannelId(), From: cur + 1, To: seq - 1}
				rep.Gaps = append(rep.Gaps, g)
				if _, err := tx.ExecContext(ctx, `UPDATE cursors SET gap_from = ?, gap_to = ? WHERE channel_id = ?`, int64(g.From), int64(g.To), g.ChannelID); err != nil {
					return err
				}
				c.log.Warn("client: messages expired before this device fetched them; the group needs an external rejoin",
					"channel", fmt.Sprintf("%x", g.ChannelID), "from", g.From, "to", g.To)
			}
			body := m.GetMlsMessage()
			if ev := m.GetEvent(); ev != nil {
				// A server event: kept encoded, with no sender device
				// (process.go tells it apart by that).
				var err error
				if body, err = proto.Marshal(ev); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO inbound (channel_id, seq, message_id, sender_account_id, sender_device_id, mls_message, epoch, server_ms)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, m.GetChannelId(), int64(seq), m.GetMessageId(),
				m.GetSenderAccountId(), m.GetSenderDeviceId(), body, int64(m.GetEpoch()), m.GetServerTimeUnixMs()); err != nil {
				return err
			}
			rep.Messages++
			cursors[ch], known[ch] = seq, true
		}
		for ch, seq := range cursors {
			if _, err := tx.ExecContext(ctx, `INSERT INTO cursors (channel_id, seq) VALUES (?, ?)
				ON CONFLICT (channel_id) DO UPDATE SET seq = max(seq, excluded.seq)`, []byte(ch), int64(seq)); err != nil {
				return err
			}
			ack.Cursors = append(ack.Cursors, &qpcv1.ChannelCursor{ChannelId: []byte(ch), Seq: seq})
		}
		var inboxSeq int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE((SELECT value FROM kv WHERE key = 'inbox_seq'), 0)`).Scan(&inboxSeq); err != nil {
			return err
		}
		top := uint64(inboxSeq)
		for _, it := range resp.GetInbox() {
			if it.GetSeq() <= uint64(inboxSeq) {
				rep.Duplicates++
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO inbox (seq, kind, channel_id, sender_account_id, sender_device_id, payload, server_ms)
				VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, int64(it.GetSeq()), int32(it.GetKind()), it.GetChannelId(),
				it.GetSenderAccountId(), it.GetSenderDeviceId(), it.GetPayload(), it.GetServerTimeUnixMs()); err != nil {
				return err
			}
			rep.Inbox++
			top = max(top, it.GetSeq())
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO kv (key, value) VALUES ('inbox_seq', ?)
			ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)`, int64(top)); err != nil {
			return err
		}
		ack.InboxSeq = top
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client: store fetched messages: %w", err)
	}
	return ack, nil
}

func (c *Client) markAcked(ctx context.Context, ack *qpcv1.AckRequest) error {
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		for _, cur := range ack.GetCursors() {
			if _, err := tx.ExecContext(ctx, `UPDATE cursors SET acked = max(acked, ?) WHERE channel_id = ?`, int64(cur.GetSeq()), cur.GetChannelId()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("client: record ack: %w", err)
	}
	return nil
}

// Cursor is a channel's local position.
type Cursor struct {
	ChannelID []byte `json:"channel_id"`
	Seq       uint64 `json:"seq"`   // last stored
	Acked     uint64 `json:"acked"` // last acknowledged to the server
	Gap       *Gap   `json:"gap,omitempty"`
}

// Cursors lists the per-channel cursors.
func (c *Client) Cursors(ctx context.Context) ([]Cursor, error) {
	var out []Cursor
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT channel_id, seq, acked, gap_from, gap_to FROM cursors ORDER BY channel_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var cu Cursor
			var seq, acked, gf, gt int64
			if err := rows.Scan(&cu.ChannelID, &seq, &acked, &gf, &gt); err != nil {
				return err
			}
			cu.Seq, cu.Acked = uint64(seq), uint64(acked)
			if gf > 0 {
				cu.Gap = &Gap{ChannelID: cu.ChannelID, From: uint64(gf), To: uint64(gt)}
			}
			out = append(out, cu)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: read cursors: %w", err)
	}
	return out, nil
}

// upkeepEvery is how often Sync runs the full KeyPackage upkeep (which also
// replaces KeyPackages about to expire), besides after every Welcome.
const upkeepEvery = time.Hour

// maybeUpkeep runs KeyPackageUpkeep when a Welcome arrived, the last full
// check is older than upkeepEvery, or the server's stock (counted on every
// Sync: one cheap call) is below the target or lacks the last-resort
// KeyPackage, as after the server was restored from an older backup.
// Failures are logged, not returned: the stock is checked again next time.
func (c *Client) maybeUpkeep(ctx context.Context, force bool) {
	now := c.now().UnixMilli()
	var last int64
	_ = c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT COALESCE((SELECT value FROM kv WHERE key = 'kp_checked_ms'), 0)`).Scan(&last)
	})
	if !force && now-last < upkeepEvery.Milliseconds() {
		short, err := c.stockShort(ctx)
		if err != nil {
			c.log.Warn("client: count KeyPackages", "err", err)
			return
		}
		if !short {
			return
		}
		c.log.Info("client: the server's KeyPackage stock of this device is short; uploading")
	}
	if _, err := c.KeyPackageUpkeep(ctx); err != nil {
		c.log.Warn("client: KeyPackage upkeep", "err", err)
		return
	}
	_ = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO kv (key, value) VALUES ('kp_checked_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, now)
		return err
	})
}

// stockShort reports whether the server holds fewer of this device's
// KeyPackages than the target, or no last-resort one.
func (c *Client) stockShort(ctx context.Context) (bool, error) {
	if _, err := c.Identity(ctx); err != nil {
		return false, nil // not registered: nothing to keep
	}
	s, err := c.Settings(ctx)
	if err != nil {
		return false, err
	}
	n, err := c.KeyPackageStock(ctx)
	if err != nil {
		return false, err
	}
	return int(n.GetDeviceCount()) < s.Stock || !n.GetHasLastResort(), nil
}

// activeGroups returns the channel ids (as map keys) of the groups and DMs
// this device is an active member of, with their names.
func (c *Client) activeGroups(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT channel_id, name FROM groups WHERE status = ?`, statusActive)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ch []byte
			var name string
			if err := rows.Scan(&ch, &name); err != nil {
				return err
			}
			out[string(ch)] = name
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: read groups: %w", err)
	}
	return out, nil
}

// membershipCheck finds the groups of before (active when the Sync began)
// this device is no longer in: removed by a commit processed meanwhile, or
// dropped from the channel on the server (a removed member cannot fetch
// the commit that removed her, so without this she would learn it only
// when a send is refused). Those the server dropped are marked removed.
// It returns their names.
func (c *Client) membershipCheck(ctx context.Context, before map[string]string) ([]string, error) {
	if len(before) == 0 {
		return nil, nil
	}
	var lc qpcv1.ListChannelsResponse
	if err := c.call(ctx, "ListChannels", &qpcv1.ListChannelsRequest{}, &lc); err != nil {
		c.log.Warn("client: list channels", "err", err)
		return c.removedSince(ctx, before, nil)
	}
	on := map[string]bool{}
	for _, ch := range lc.GetChannels() {
		on[string(ch.GetChannelId())] = true
	}
	missing := false
	for ch := range before {
		missing = missing || !on[ch]
	}
	if missing {
		// A channel this device is invited to (and has not accepted) is
		// not a removal: its state stays until the answer (accepting
		// brings a newer Welcome, which replaces it).
		var li qpcv1.ListInvitationsResponse
		// A server older than invitations has none to list.
		if err := c.call(ctx, "ListInvitations", &qpcv1.ListInvitationsRequest{}, &li); err != nil && !olderServer(err) {
			c.log.Warn("client: list invitations", "err", err)
			return c.removedSince(ctx, before, nil)
		}
		for _, in := range li.GetInvitations() {
			if _, ok := before[string(in.GetChannelId())]; ok {
				on[string(in.GetChannelId())] = true
			}
		}
	}
	return c.removedSince(ctx, before, on)
}

// removedSince marks groups of before missing from on (when on is not nil)
// removed, and returns the names of those of before not active any more.
func (c *Client) removedSince(ctx context.Context, before map[string]string, on map[string]bool) ([]string, error) {
	var out []string
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		out = nil
		for ch, name := range before {
			if on != nil && !on[ch] {
				if _, err := tx.ExecContext(ctx, `UPDATE groups SET status = ?, state = NULL, updated_ms = ? WHERE channel_id = ? AND status = ?`,
					statusRemoved, c.now().UnixMilli(), []byte(ch), statusActive); err != nil {
					return err
				}
			}
			var status string
			err := tx.QueryRowContext(ctx, `SELECT status FROM groups WHERE channel_id = ?`, []byte(ch)).Scan(&status)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if status == statusRemoved {
				out = append(out, name)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client: record removal: %w", err)
	}
	slices.Sort(out)
	return out, nil
}
