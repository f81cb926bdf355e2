package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Rejoin brings this device back into a group whose messages it can no
// longer follow (it was offline past the server's retention, so a commit
// expired unread): it fetches the GroupInfo the server keeps, joins by
// external commit (replacing its own old leaf), and resumes from the
// commit's sequence number. Messages sent between the gap and the rejoin
// stay unreadable. A refused commit (STALE_EPOCH) is retried with a fresh
// GroupInfo.
func (c *Client) Rejoin(ctx context.Context, name string) error {
	ch, err := c.channelOf(ctx, name)
	if err != nil {
		return err
	}
	return c.rejoin(ctx, ch)
}

func (c *Client) rejoin(ctx context.Context, channelID []byte) error {
	for attempt := 0; attempt < maxRedo; attempt++ {
		var gi qpcv1.GetGroupInfoResponse
		if err := c.call(ctx, "GetGroupInfo", &qpcv1.GetGroupInfoRequest{ChannelId: channelID}, &gi); err != nil {
			return fmt.Errorf("client: rejoin: GroupInfo: %w", err)
		}
		suite, err := c.rejoinSuite(ctx, channelID, gi.GetGroupInfo())
		if err != nil {
			return fmt.Errorf("client: rejoin: %w", err)
		}
		id, sk, err := c.signerFor(ctx, suite)
		if err != nil {
			return err
		}
		defer id.key.Wipe()
		defer sk.Wipe()
		c.groupMu.Lock()
		g, commit, err := mls.JoinExternal(mlsConfig, gi.GetGroupInfo(), mls.BasicIdentity(id.AccountName, id.DeviceID), sk,
			mls.ExternalJoinOptions{RemovePrior: true, EncodedTree: gi.GetRatchetTree(),
				Leaf: mls.KeyPackageOptions{LeafExtensions: id.leafExtensions(), Capabilities: leafCapabilities()}})
		c.groupMu.Unlock()
		if err != nil {
			return fmt.Errorf("client: rejoin: external commit: %w", err)
		}
		var newInfo, newTree []byte
		if c.serverStoresTrees(ctx) {
			newInfo, newTree, err = g.GroupInfoSeparateTree(TreeBesideExtension)
		} else {
			newInfo, err = g.GroupInfo()
		}
		if err != nil {
			return fmt.Errorf("client: rejoin: GroupInfo: %w", err)
		}
		mid, err := c.newMessageID()
		if err != nil {
			return err
		}
		var resp qpcv1.EnqueueResponse
		err = c.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: channelID, MessageId: mid, MlsMessage: commit, GroupInfo: newInfo, RatchetTree: newTree}, &resp)
		if err == nil && len(newTree) > 0 && !resp.GetRatchetTreeStored() {
			c.treeDropped()
		}
		var se *wire.StatusError
		if errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_STALE_EPOCH {
			continue // another commit won; join the newer epoch
		}
		if err != nil {
			return fmt.Errorf("client: rejoin: send external commit: %w", err)
		}
		c.groupMu.Lock()
		err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			// Application messages still queued were encrypted for the
			// group state just replaced (after a server restore, possibly
			// an epoch the server never had): encrypt them again.
			if err := reprotectPending(ctx, tx, g, channelID); err != nil {
				return err
			}
			state, err := g.Export()
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE groups SET group_id = ?, state = ?, epoch = ?, status = ?, updated_ms = ? WHERE channel_id = ?`,
				g.GroupID(), state, int64(g.Epoch()), statusActive, c.now().UnixMilli(), channelID); err != nil {
				return err
			}
			seq := int64(resp.GetSeq())
			if _, err := tx.ExecContext(ctx, `DELETE FROM inbound WHERE channel_id = ? AND seq <= ?`, channelID, seq); err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `UPDATE cursors SET processed = max(processed, ?), gap_from = 0, gap_to = 0 WHERE channel_id = ?`, seq, channelID)
			return err
		})
		c.groupMu.Unlock()
		if err != nil {
			return fmt.Errorf("client: rejoin: save group state: %w", err)
		}
		c.log.Info("client: rejoined by external commit", "channel", fmt.Sprintf("%x", channelID), "epoch", g.Epoch())
		return nil
	}
	return fmt.Errorf("client: rejoin: still refused after %d attempts; try again later", maxRedo)
}

// reprotectPending encrypts the channel's queued application messages
// again under g (same message ids).
func reprotectPending(ctx context.Context, tx *sql.Tx, g *mls.Group, channelID []byte) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, intent FROM outbox WHERE channel_id = ? AND status IN (?, ?) AND kind = 'app' AND intent IS NOT NULL ORDER BY id`,
		channelID, OutboxPending, OutboxStale)
	if err != nil {
		return err
	}
	type entry struct {
		id     int64
		intent []byte
	}
	var due []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.id, &e.intent); err != nil {
			rows.Close()
			return err
		}
		due = append(due, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, e := range due {
		ct, err := g.Protect(e.intent, nil)
		if err != nil {
			return fmt.Errorf("client: rejoin: encrypt a queued message again: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET status = ?, mls_message = ? WHERE id = ?`, OutboxPending, ct, e.id); err != nil {
			return err
		}
	}
	return nil
}

// rejoinGaps rejoins every active group whose channel has a gap.
func (c *Client) rejoinGaps(ctx context.Context) (int, error) {
	var chans [][]byte
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT c.channel_id FROM cursors c JOIN groups g ON g.channel_id = c.channel_id
			WHERE c.gap_from > 0 AND g.status = ?`, statusActive)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ch []byte
			if err := rows.Scan(&ch); err != nil {
				return err
			}
			chans = append(chans, ch)
		}
		return rows.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("client: read cursors: %w", err)
	}
	if len(chans) == 0 {
		return 0, nil
	}
	// A gap matters only if a commit expired in it: then the channel's
	// epoch has moved past the group's. A gap of application messages
	// and server events only (membership announcements expire like
	// messages) leaves the group state current: those are lost, no rejoin.
	var lc qpcv1.ListChannelsResponse
	if err := c.call(ctx, "ListChannels", &qpcv1.ListChannelsRequest{}, &lc); err != nil {
		return 0, fmt.Errorf("client: list channels: %w", err)
	}
	serverEpoch := map[string]uint64{}
	for _, ch := range lc.GetChannels() {
		serverEpoch[string(ch.GetChannelId())] = ch.GetEpoch()
	}
	n := 0
	for _, ch := range chans {
		var local int64
		if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, `SELECT epoch FROM groups WHERE channel_id = ?`, ch).Scan(&local)
		}); err != nil {
			return n, fmt.Errorf("client: read group: %w", err)
		}
		if e, ok := serverEpoch[string(ch)]; ok && e == uint64(local) {
			if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE cursors SET gap_from = 0, gap_to = 0 WHERE channel_id = ?`, ch)
				return err
			}); err != nil {
				return n, fmt.Errorf("client: clear gap: %w", err)
			}
			c.log.Info("client: a gap held no commit; the group state is current", "channel", fmt.Sprintf("%x", ch), "epoch", local)
			continue
		}
		if err := c.rejoin(ctx, ch); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
