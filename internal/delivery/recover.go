package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Operator recovery of a wedged group.
//
// The server cannot check MLS content, so a member can post a commit that
// decodes but that no other member can process. The server accepts it (its
// epoch is current) and moves the channel to the next epoch; everyone else
// stays behind, their commits now get STALE_EPOCH and their messages fall
// out of the accepted window as the offender commits on. Clients drop the
// commit they cannot process and carry on at their epoch, so the operator's
// part is to move the channel back: RevertEpoch sets its epoch to the last
// one the members share, forgets the GroupInfo the reverted commits
// supplied, and can take the offender off the channel in the same
// transaction. A member then commits the offender's removal at that epoch.
// The commits stay in the log (clients skip them); they are attributed in
// ChannelAdmin's commit list and in the delivery.enqueue audit events.

// CommitInfo is one commit in a channel's log.
type CommitInfo struct {
	Seq           uint64
	Epoch         uint64 // the epoch the commit was made in (it started Epoch+1)
	SenderAccount string // account id
	SenderDevice  string
	Time          time.Time
}

// ChannelAdmin is what an operator sees of a channel.
type ChannelAdmin struct {
	Channel
	GroupInfoEpoch *uint64      // epoch of the stored GroupInfo; nil: none
	Commits        []CommitInfo // the latest first, at most the limit asked for
}

// ChannelForAdmin reads a channel and its latest commits, without a
// membership check (the admin socket is the caller). An unknown channel
// wraps ErrNotFound.
func (s *Service) ChannelForAdmin(ctx context.Context, id []byte, commits int) (ChannelAdmin, error) {
	if len(id) != ChannelIDSize {
		return ChannelAdmin{}, fmt.Errorf("delivery: channel: %w: channel id is %d bytes, want %d", ErrInvalidRequest, len(id), ChannelIDSize)
	}
	commits = min(max(commits, 0), 1000)
	var out ChannelAdmin
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		ch, err := readChannel(ctx, tx, id, s.now().UnixMilli())
		if err != nil {
			return err
		}
		out = ChannelAdmin{Channel: ch}
		var gi sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT epoch FROM channel_group_info WHERE channel_id = ?`, id).Scan(&gi); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if gi.Valid {
			e := uint64(gi.Int64)
			out.GroupInfoEpoch = &e
		}
		// Walks the log backwards from the head through messages_seq; with
		// few commits among many messages that reads many rows, which is
		// fine for an operator's command (the log is bounded by retention).
		rows, err := tx.QueryContext(ctx, `SELECT seq, epoch, sender_account, sender_device, created_at FROM messages
			WHERE channel_id = ? AND content_type = 3 ORDER BY seq DESC LIMIT ?`, id, commits)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c CommitInfo
			var seq, epoch, at int64
			if err := rows.Scan(&seq, &epoch, &c.SenderAccount, &c.SenderDevice, &at); err != nil {
				return err
			}
			c.Seq, c.Epoch, c.Time = uint64(seq), uint64(epoch), time.UnixMilli(at)
			out.Commits = append(out.Commits, c)
		}
		return rows.Err()
	})
	if err != nil {
		return ChannelAdmin{}, fmt.Errorf("delivery: channel: %w", err)
	}
	return out, nil
}

// Reverted is the outcome of RevertEpoch.
type Reverted struct {
	From, To         uint64
	GroupInfoCleared bool
	Removed          int // membership rows removed (RemoveAccount)
}

// OperatorActor is the actor name of a membership event the server's
// operator caused (no account did: the actor account id is empty). No
// account name can hold a space, so members cannot mistake it for one.
const OperatorActor = "the server's operator"

// RevertEpoch moves a channel's epoch back to `to` (lower than its current
// epoch) so that members can commit again from the last epoch they share.
// A stored GroupInfo for a later epoch is deleted (it came from a reverted
// commit and would lead rejoiners into the wedged group). If
// removeAccountID is set, that account's memberships and cursors in the
// channel go in the same transaction, so the offender can neither post nor
// read any more (a disabled account too: the caller resolved the id), and
// a REMOVED event goes to the channel's log and to the inboxes of the
// devices that lost access, as for a member's removal: the members see
// who was taken off, the offender's client learns it, and the removal
// holds a seq of its own, which a woken long poll relies on
// (hubrecent.go). actor names the operator for the audit event.
func (s *Service) RevertEpoch(ctx context.Context, id []byte, to uint64, removeAccountID, actor string) (Reverted, error) {
	if len(id) != ChannelIDSize {
		return Reverted{}, fmt.Errorf("delivery: revert epoch: %w: channel id is %d bytes, want %d", ErrInvalidRequest, len(id), ChannelIDSize)
	}
	if to > 1<<62 {
		return Reverted{}, fmt.Errorf("delivery: revert epoch: %w: epoch %d", ErrInvalidRequest, to)
	}
	removeID := removeAccountID
	var devices []string
	var subjectName string
	if removeID != "" {
		var err error
		if devices, err = s.activeDevices(ctx, removeID); err != nil {
			return Reverted{}, fmt.Errorf("delivery: revert epoch: %w", err)
		}
		subjectName = s.accountName(ctx, removeID)
		// Access is taken away: no woken poll answers from memory until
		// the removal is published (hubrecent.go).
		defer s.hub.raiseFence()()
	}
	var res Reverted
	var evs []pendingEvent
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res, evs = Reverted{To: to}, nil
		var cur int64
		if err := tx.QueryRowContext(ctx, `SELECT epoch FROM channels WHERE id = ?`, id).Scan(&cur); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return ErrNotFound
			}
			return err
		}
		res.From = uint64(cur)
		if to >= res.From {
			return fmt.Errorf("%w: the channel is at epoch %d; revert to an earlier one", ErrInvalidRequest, res.From)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE channels SET epoch = ? WHERE id = ?`, int64(to), id); err != nil {
			return err
		}
		r, err := tx.ExecContext(ctx, `DELETE FROM channel_group_info WHERE channel_id = ? AND epoch > ?`, id, int64(to))
		if err != nil {
			return err
		}
		n, _ := r.RowsAffected()
		res.GroupInfoCleared = n > 0
		if removeID != "" {
			n, lost, err := removeMembership(ctx, tx, id, Member{AccountID: removeID}, devices)
			if err != nil {
				return err
			}
			res.Removed = n
			if n > 0 {
				nowMS := s.now().UnixMilli()
				ev := &qpcv1.MembershipEvent{ChannelId: id, ActorAccountName: OperatorActor, SubjectAccountId: removeID,
					SubjectAccountName: subjectName, TimeUnixMs: nowMS, Type: qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED}
				seq, err := s.writeEvent(ctx, tx, ev, lost, nowMS)
				if err != nil {
					return err
				}
				evs = append(evs, pendingEvent{channelID: id, seq: seq, typ: ev.Type, devices: lost, accounts: []string{removeID}})
			}
		}
		return nil
	})
	if err != nil {
		return Reverted{}, fmt.Errorf("delivery: revert epoch: %w", err)
	}
	s.publishEvents(evs) // the removed account's key too: its channel list changed
	s.audit.Event(ctx, "channel.epoch_revert", slog.String("actor", actor), slog.String("channel_id", hexID(id)),
		slog.Uint64("from_epoch", res.From), slog.Uint64("to_epoch", res.To), slog.Bool("group_info_cleared", res.GroupInfoCleared),
		slog.String("removed_account_id", removeID), slog.Int("removed_memberships", res.Removed))
	return res, nil
}
