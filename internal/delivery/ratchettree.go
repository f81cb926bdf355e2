package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// The ratchet tree a committer sends beside a GroupInfo without the
// ratchet_tree extension (docs/protocol.md, "Ratchet tree beside the
// GroupInfo"): stored in channel_group_info with the epoch it belongs to
// (migration 0014), returned with the GroupInfo only when that epoch is
// the GroupInfo's. A qpcd one release older replaces the GroupInfo without
// touching the tree columns; the epoch check keeps its stale tree from
// being served.

// treeArgs are the ratchet_tree and ratchet_tree_epoch values stored with
// a GroupInfo of epoch: NULL and NULL without a tree.
func treeArgs(tree []byte, epoch uint64) (any, any) {
	if len(tree) == 0 {
		return nil, nil
	}
	return tree, int64(epoch)
}

// GroupInfoTree is GroupInfo with the ratchet tree stored beside it
// (nil when the GroupInfo carries the tree, or none of its epoch is
// stored); members only. A channel without a GroupInfo wraps ErrNotFound.
func (s *Service) GroupInfoTree(ctx context.Context, c Caller, id []byte) (groupInfo, tree []byte, epoch uint64, err error) {
	return s.readGroupInfo(ctx, c, id, true)
}

// readGroupInfo reads the channel's GroupInfo and its epoch, and with
// withTree the tree stored beside it (left unread otherwise: it can be
// megabytes).
func (s *Service) readGroupInfo(ctx context.Context, c Caller, id []byte, withTree bool) (groupInfo, tree []byte, epoch uint64, err error) {
	treeCols := "NULL, NULL"
	if withTree {
		treeCols = "g.ratchet_tree, g.ratchet_tree_epoch"
	}
	var e int64
	err = s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var member bool
		var ge, te sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT g.group_info, g.epoch, `+treeCols+`, `+isMember+`
			FROM channels c LEFT JOIN channel_group_info g ON g.channel_id = c.id WHERE c.id = ?`,
			c.AccountID, c.DeviceID, id).Scan(&groupInfo, &ge, &tree, &te, &member)
		e = ge.Int64
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotMember
		case err != nil:
			return err
		case !member:
			return ErrNotMember
		case len(groupInfo) == 0:
			return fmt.Errorf("%w: no GroupInfo stored for the channel yet", ErrNotFound)
		}
		if !te.Valid || te.Int64 != ge.Int64 {
			tree = nil
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "group_info", err)
		return nil, nil, 0, fmt.Errorf("delivery: group info: %w", err)
	}
	return groupInfo, tree, uint64(e), nil
}
