package client

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// process applies what Sync stored: Welcomes first (they create groups),
// then channel messages in sequence order. Each item is applied, and the
// group state saved, in one transaction that also deletes the item and
// moves the channel's processed cursor. Messages of a channel this device
// has no group for yet wait (their Welcome may still be on its way).
func (c *Client) process(ctx context.Context) (int, error) {
	c.groupMu.Lock()
	defer c.groupMu.Unlock()
	me, err := c.Identity(ctx)
	if err != nil {
		return 0, err
	}
	me.key.Wipe()
	n, err := c.processWelcomes(ctx, me)
	if err != nil {
		return n, err
	}
	var followups [][]byte
	type dropReq struct {
		channelID []byte
		account   string
	}
	var drops []dropReq
	for {
		batch, err := c.inboundBatch(ctx)
		if err != nil {
			return n, err
		}
		progressed := false
		for _, in := range batch {
			var follow bool
			var drop string
			done, err := c.processOne(ctx, me, in, &follow, &drop)
			if err != nil {
				return n, err
			}
			if drop != "" {
				drops = append(drops, dropReq{in.channelID, drop})
			}
			if done {
				n++
				progressed = true
			}
			if follow {
				followups = append(followups, in.channelID)
			}
		}
		if !progressed || len(batch) < inboundPage {
			break
		}
	}
	// A member left by proposing its own removal: the remaining member with
	// the lowest leaf commits it (the others' redo finds nothing to do).
	for _, ch := range followups {
		if err := c.queueCommitLocked(ctx, ch, commitIntent{Op: "commit"}); err != nil {
			c.log.Warn("client: commit of a leave proposal", "err", err)
		}
	}
	// An invitee declined: the remaining member with the lowest leaf drops
	// its leaves from the MLS group (members.go).
	for _, d := range drops {
		if err := c.queueCommitLocked(ctx, d.channelID, commitIntent{Op: "drop", Accounts: []string{d.account}}); err != nil {
			c.log.Warn("client: removing a declined invitee from the group", "account", d.account, "err", err)
		}
	}
	return n, nil
}

type inboundMsg struct {
	channelID []byte
	seq       int64
	messageID string
	senderDev string
	raw       []byte
	serverMs  int64
}

const inboundPage = 200

// inboundBatch returns stored messages of channels that have a group.
func (c *Client) inboundBatch(ctx context.Context) ([]inboundMsg, error) {
	var out []inboundMsg
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT i.channel_id, i.seq, i.message_id, i.sender_device_id, i.mls_message, i.server_ms
			FROM inbound i JOIN groups g ON g.channel_id = i.channel_id ORDER BY i.channel_id, i.seq LIMIT ?`, inboundPage)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var m inboundMsg
			if err := rows.Scan(&m.channelID, &m.seq, &m.messageID, &m.senderDev, &m.raw, &m.serverMs); err != nil {
				return err
			}
			out = append(out, m)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: read inbound: %w", err)
	}
	return out, nil
}

// processOne applies one channel message. follow reports a leave proposal
// this device should commit; drop, an account whose leaves this device
// should remove (it declined its invitation).
func (c *Client) processOne(ctx context.Context, me *Identity, in inboundMsg, follow *bool, drop *string) (bool, error) {
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		*follow, *drop = false, ""
		done := func() error {
			if _, err := tx.ExecContext(ctx, `DELETE FROM inbound WHERE channel_id = ? AND seq = ?`, in.channelID, in.seq); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `UPDATE cursors SET processed = max(processed, ?) WHERE channel_id = ?`, in.seq, in.channelID)
			return err
		}
		r, state, err := loadGroupRow(ctx, tx, "channel_id = ?", in.channelID)
		if err != nil {
			return err
		}
		if in.senderDev == "" && r != nil {
			// A membership change the server announced (no device sends
			// with an empty id).
			if *drop, err = c.processEvent(ctx, tx, me, r, state, in); err != nil {
				return err
			}
			return done()
		}
		// Own messages: commits were merged when the server accepted them,
		// application messages stored when sent (MLS senders cannot decrypt
		// their own messages).
		if r == nil || r.status != statusActive || state == nil || in.senderDev == me.DeviceID {
			return done()
		}
		// Its sender sent it again after a server restore: no longer lost
		// (the sender's device id binds the id to its sender).
		res, err := tx.ExecContext(ctx, `DELETE FROM restore_lost WHERE channel_id = ? AND message_id = ? AND EXISTS (SELECT 1 FROM messages m
			WHERE m.channel_id = restore_lost.channel_id AND m.message_id = restore_lost.message_id AND m.outgoing = 0
			AND substr(m.sender, -length(?) - 1) = '/' || ?)`, in.channelID, in.messageID, in.senderDev, in.senderDev)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE messages SET seq = ?, server_ms = ? WHERE channel_id = ? AND message_id = ?`,
				in.seq, in.serverMs, in.channelID, in.messageID); err != nil {
				return err
			}
		}
		g, err := mls.ImportGroup(mlsConfig, state)
		if err != nil {
			return fmt.Errorf("client: group state of %s: %w", r.name, err)
		}
		p, err := g.ProcessMessage(in.raw)
		if err != nil {
			// Undecryptable for good: sent before this device joined (an
			// older epoch), replayed, or malformed. Dropped, not retried.
			c.log.Info("client: message not processed", "group", r.name, "seq", in.seq, "err", err)
			if errors.Is(err, mls.ErrFutureEpoch) {
				c.log.Warn("client: a message is for a future epoch: a commit was missed; the group needs a rejoin", "group", r.name)
			}
			return done()
		}
		switch p.Kind {
		case mls.KindApplication:
			if err := c.storeApp(ctx, tx, r, p, in); err != nil {
				return err
			}
		case mls.KindCommit:
			if p.SelfRemoved || !g.Active() {
				if _, err := tx.ExecContext(ctx, `UPDATE groups SET status = ?, state = NULL, updated_ms = ? WHERE channel_id = ?`,
					statusRemoved, c.now().UnixMilli(), r.channelID); err != nil {
					return err
				}
				return done()
			}
		case mls.KindProposal:
			if pr := p.Proposal; pr != nil && pr.Type == mls.ProposalTypeRemove && pr.Remove != nil &&
				p.Sender.Type == mls.SenderTypeMember && pr.Remove.Removed == p.Sender.LeafIndex {
				*follow = lowestOther(g, pr.Remove.Removed) == g.OwnLeaf()
			}
		}
		if err := saveGroup(ctx, tx, r.channelID, g, c.now().UnixMilli()); err != nil {
			return err
		}
		return done()
	})
	if err != nil {
		return false, fmt.Errorf("client: process message %d: %w", in.seq, err)
	}
	return true, nil
}

// lowestOther is the lowest leaf index among members other than leaf.
func lowestOther(g *mls.Group, leaf uint32) uint32 {
	best := ^uint32(0)
	for _, m := range g.Members() {
		if m.Leaf != leaf && m.Leaf < best {
			best = m.Leaf
		}
	}
	return best
}

func (c *Client) storeApp(ctx context.Context, tx *sql.Tx, r *groupRow, p *mls.Processed, in inboundMsg) error {
	var am qpcv1.AppMessage
	if err := proto.Unmarshal(p.ApplicationData, &am); err != nil || am.GetVersion() == 0 {
		c.log.Info("client: application payload not understood", "group", r.name, "seq", in.seq, "err", err)
		return nil
	}
	if am.GetVersion() > 1 {
		c.log.Info("client: application payload of a newer version; upgrade qpc", "group", r.name, "version", am.GetVersion())
		return nil
	}
	if g := am.GetKeyLog(); g != nil {
		// The sender's newest key log head: checked after this batch
		// (keylog.go), silently unless it disagrees with ours.
		if err := queueGossip(ctx, tx, g.GetTreeHead(), fmt.Sprintf("%s in %s", p.SenderIdentity, r.name), c.now().UnixMilli()); err != nil {
			return err
		}
		if am.GetText() == "" {
			return nil // a control message only
		}
	}
	mid := am.GetMessageId()
	if mid == "" {
		mid = in.messageID
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO messages (channel_id, message_id, seq, sender, display, text, reply_to, sent_ms, server_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, r.channelID, mid, in.seq, string(p.SenderIdentity),
		am.GetSenderDisplayName(), am.GetText(), am.GetReplyTo(), am.GetSentUnixMs(), in.serverMs); err != nil {
		return err
	}
	// A group joined from a Welcome has a placeholder name until a member
	// says what they call it.
	if gn := am.GetGroupName(); r.kind == kindGroup && strings.HasPrefix(r.name, "#") && validGroupName(gn) == nil {
		if _, err := tx.ExecContext(ctx, `UPDATE groups SET name = ? WHERE channel_id = ? AND NOT EXISTS (SELECT 1 FROM groups WHERE name = ?)`,
			gn, r.channelID, gn); err != nil {
			return err
		}
	}
	return nil
}

type inboxItem struct {
	seq       int64
	kind      int32
	channelID []byte
	payload   []byte
}

// processWelcomes joins the groups of stored Welcomes.
func (c *Client) processWelcomes(ctx context.Context, me *Identity) (int, error) {
	var items []inboxItem
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT seq, kind, channel_id, payload FROM inbox ORDER BY seq`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var it inboxItem
			if err := rows.Scan(&it.seq, &it.kind, &it.channelID, &it.payload); err != nil {
				return err
			}
			items = append(items, it)
		}
		return rows.Err()
	})
	if err != nil || len(items) == 0 {
		return 0, err
	}
	// Known before the transactions below: join checks each Welcome's suite.
	if _, err := c.SuitePolicy(ctx); err != nil {
		return 0, err
	}
	dms := map[string]bool{}
	var lc qpcv1.ListChannelsResponse
	if err := c.call(ctx, "ListChannels", &qpcv1.ListChannelsRequest{}, &lc); err == nil {
		for _, ch := range lc.GetChannels() {
			dms[string(ch.GetChannelId())] = ch.GetType() == qpcv1.ChannelType_CHANNEL_TYPE_DM
		}
	}
	n := 0
	for _, it := range items {
		err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `DELETE FROM inbox WHERE seq = ?`, it.seq); err != nil {
				return err
			}
			if it.kind == int32(qpcv1.InboxKind_INBOX_KIND_MEMBERSHIP) {
				return c.processInboxEvent(ctx, tx, me, it)
			}
			if it.kind == int32(qpcv1.InboxKind_INBOX_KIND_ACCOUNT_EVENT) {
				return c.storeAccountEvent(ctx, tx, it.seq, it.payload)
			}
			if it.kind != int32(qpcv1.InboxKind_INBOX_KIND_WELCOME) {
				return nil
			}
			return c.join(ctx, tx, me, it, dms[string(it.channelID)])
		})
		if err != nil {
			return n, fmt.Errorf("client: process Welcome: %w", err)
		}
		n++
	}
	return n, nil
}

// join joins a group from a Welcome (inside the transaction that deletes
// the inbox item and the used KeyPackage's keys).
func (c *Client) join(ctx context.Context, tx *sql.Tx, me *Identity, it inboxItem, dm bool) error {
	var m mls.MLSMessage
	if err := m.Unmarshal(it.payload); err != nil || m.Welcome == nil {
		c.log.Info("client: inbox item is not a Welcome", "err", err)
		return nil
	}
	var bundle *mls.KeyPackageBundle
	var ref []byte
	for _, s := range m.Welcome.Secrets {
		b, ok, err := keyPackageBundle(ctx, tx, s.NewMember)
		if err != nil {
			return err
		}
		if ok {
			bundle, ref = b, s.NewMember
			break
		}
	}
	if bundle == nil {
		c.log.Info("client: Welcome for none of this device's KeyPackages (used or expired)")
		return nil
	}
	defer bundle.Wipe()
	// Downgrade guard: the Welcome's suite must be the KeyPackage's (mls
	// checks that too) and one the server's policy admits.
	if err := c.checkGroupSuite(ctx, m.Welcome.CipherSuite, bundle.KeyPackage.CipherSuite); err != nil {
		c.log.Warn("client: Welcome refused", "err", err)
		return nil
	}
	g, err := mls.JoinFromWelcome(mlsConfig, it.payload, bundle, mls.JoinOptions{})
	if err != nil {
		c.log.Warn("client: Welcome refused", "err", err)
		return nil
	}
	existing, _, err := loadGroupRow(ctx, tx, "channel_id = ?", it.channelID)
	if err != nil {
		return err
	}
	if existing != nil && existing.status == statusActive {
		var epoch int64
		if err := tx.QueryRowContext(ctx, `SELECT epoch FROM groups WHERE channel_id = ?`, it.channelID).Scan(&epoch); err != nil {
			return err
		}
		if g.Epoch() <= uint64(epoch) {
			return nil // already a member; an old Welcome
		}
		// A newer Welcome for a group this device holds: it was removed
		// without seeing it (the notice expired) and has accepted a new
		// invitation; the new state replaces the stale one.
		c.log.Info("client: a newer Welcome replaces a stale group state", "group", existing.name)
	}
	kind, peer := kindGroup, ""
	short := hex.EncodeToString(it.channelID)
	if len(short) > 8 {
		short = short[:8]
	}
	name := "#" + short
	if dm {
		kind = kindDM
		for _, mem := range g.Members() {
			if acc, _, _ := strings.Cut(string(mem.Identity), "/"); acc != me.AccountName {
				peer, name = acc, "@"+acc
				break
			}
		}
	}
	if existing != nil {
		name = existing.name
	}
	name, err = freeName(ctx, tx, name, it.channelID)
	if err != nil {
		return err
	}
	state, err := g.Export()
	if err != nil {
		return err
	}
	now := c.now().UnixMilli()
	if _, err := tx.ExecContext(ctx, `INSERT INTO groups (channel_id, group_id, name, kind, peer, epoch, state, status, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (channel_id) DO UPDATE SET group_id = excluded.group_id, epoch = excluded.epoch, state = excluded.state, status = excluded.status, updated_ms = excluded.updated_ms`,
		it.channelID, g.GroupID(), name, kind, peer, int64(g.Epoch()), state, statusActive, now); err != nil {
		return err
	}
	// No cursor here: the first message fetched for the channel sets it
	// (a joiner does not know where its part of the log starts).
	return consumeKeyPackage(ctx, tx, ref)
}

// freeName returns name, or name-2, name-3 ... if another channel has it.
func freeName(ctx context.Context, tx *sql.Tx, name string, channelID []byte) (string, error) {
	cand := name
	for i := 2; ; i++ {
		var other []byte
		err := tx.QueryRowContext(ctx, `SELECT channel_id FROM groups WHERE name = ?`, cand).Scan(&other)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && string(other) == string(channelID)) {
			return cand, nil
		}
		if err != nil {
			return "", err
		}
		cand = fmt.Sprintf("%s-%d", name, i)
	}
}
