package delivery

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Sizes of ids.
const (
	ChannelIDSize = 16
	GroupIDSize   = 32
)

// Channel is a channel with its members.
type Channel struct {
	ID      []byte
	Kind    int // KindGroup or KindDM
	GroupID []byte
	Epoch   uint64
	HeadSeq uint64
	TTL     time.Duration // 0: the server's retention
	Members []Member
}

// Member is an account (DeviceID "") or one device of it.
type Member struct {
	AccountID string
	DeviceID  string
}

// MemberRef names a member by account name.
type MemberRef struct {
	AccountName string
	DeviceID    string // "": every device of the account
}

// isMember is the membership test used by every operation: the account is
// a member, or this device of it is.
const isMember = `EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id
	AND m.account_id = ? AND m.device_id IN ('', ?))`

// DMChannelID derives a DM channel's id from its two account ids (in either order).
func DMChannelID(a, b string) []byte {
	if b < a {
		a, b = b, a
	}
	h := sha256.New()
	h.Write([]byte("qpc dm channel v1\x00"))
	fmt.Fprintf(h, "%d:%s%d:%s", len(a), a, len(b), b)
	return h.Sum(nil)[:ChannelIDSize]
}

// CreateGroup creates the channel of an MLS group with the caller's account
// as its first member. If the group's channel exists and the caller is a
// member, it is returned with created false; if the caller is not a member,
// the error wraps ErrChannelExists.
func (s *Service) CreateGroup(ctx context.Context, c Caller, groupID []byte, epoch uint64) (Channel, bool, error) {
	if len(groupID) != GroupIDSize {
		return Channel{}, false, fmt.Errorf("%w: group id is %d bytes, want %d", ErrInvalidRequest, len(groupID), GroupIDSize)
	}
	if epoch > 1<<62 {
		return Channel{}, false, fmt.Errorf("%w: epoch %d", ErrInvalidRequest, epoch)
	}
	id := make([]byte, ChannelIDSize)
	if _, err := rand.Read(id); err != nil {
		return Channel{}, false, err
	}
	now := s.now().UnixMilli()
	var created bool
	var out []byte
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		created, out = false, nil
		var existing []byte
		var member bool
		err := tx.QueryRowContext(ctx, `SELECT c.id, `+isMember+` FROM channels c WHERE c.group_id = ?`,
			c.AccountID, c.DeviceID, groupID).Scan(&existing, &member)
		switch {
		case err == nil && member:
			out = existing
			return nil
		case err == nil:
			return ErrChannelExists
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if err := s.chargeChannel(ctx, tx, c); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO channels (id, kind, group_id, epoch, created_by, created_at)
			VALUES (?, ?, ?, ?, ?, ?)`, id, KindGroup, groupID, int64(epoch), c.AccountID, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at)
			VALUES (?, ?, '', 0, ?, ?)`, id, c.AccountID, c.AccountID, now); err != nil {
			return err
		}
		created, out = true, id
		return nil
	})
	if err != nil {
		return Channel{}, false, fmt.Errorf("delivery: create group channel: %w", err)
	}
	if created {
		s.audit.Event(ctx, "channel.create", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(out)), slog.String("channel_type", "group"))
	}
	ch, err := s.channel(ctx, c, out)
	return ch, created, err
}

// CreateDM creates (or returns) the DM channel between the caller's
// account and peerName's. Both accounts are members; ttl, when set and
// below the retention, bounds its messages' lifetime.
func (s *Service) CreateDM(ctx context.Context, c Caller, peerName string, groupID []byte, ttl time.Duration) (Channel, bool, error) {
	if len(groupID) != GroupIDSize {
		return Channel{}, false, fmt.Errorf("%w: group id is %d bytes, want %d", ErrInvalidRequest, len(groupID), GroupIDSize)
	}
	peer, err := s.account(ctx, peerName)
	if err != nil {
		return Channel{}, false, err
	}
	if peer.ID == c.AccountID {
		return Channel{}, false, fmt.Errorf("%w: a DM needs two different accounts", ErrInvalidRequest)
	}
	var ttlMS int64
	if ttl > 0 && ttl < s.retention {
		ttlMS = ttl.Milliseconds()
	}
	id := DMChannelID(c.AccountID, peer.ID)
	now := s.now().UnixMilli()
	var created bool
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		created = false
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM channels WHERE id = ?`, id).Scan(&one)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		err = tx.QueryRowContext(ctx, `SELECT 1 FROM channels WHERE group_id = ?`, groupID).Scan(&one)
		switch {
		case err == nil:
			return ErrChannelExists
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if err := s.chargeChannel(ctx, tx, c); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO channels (id, kind, group_id, epoch, ttl_ms, created_by, created_at)
			VALUES (?, ?, ?, 0, ?, ?, ?)`, id, KindDM, groupID, ttlMS, c.AccountID, now); err != nil {
			return err
		}
		for _, a := range []string{c.AccountID, peer.ID} {
			if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at)
				VALUES (?, ?, '', 0, ?, ?)`, id, a, c.AccountID, now); err != nil {
				return err
			}
		}
		created = true
		return nil
	})
	if err != nil {
		return Channel{}, false, fmt.Errorf("delivery: create DM channel: %w", err)
	}
	if created {
		s.hub.publish(accountKey(peer.ID))
		s.audit.Event(ctx, "channel.create", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(id)), slog.String("channel_type", "dm"), slog.String("peer_account_id", peer.ID))
	}
	ch, err := s.channel(ctx, c, id)
	return ch, created, err
}

func (s *Service) account(ctx context.Context, name string) (Account, error) {
	a, err := s.dir.AccountByName(ctx, name)
	if err != nil {
		return Account{}, err
	}
	if !a.Active {
		return Account{}, fmt.Errorf("%w: %q is disabled", ErrUnknownAccount, name)
	}
	return a, nil
}

// resolve turns member refs into members, checking devices belong to their account.
func (s *Service) resolve(ctx context.Context, refs []MemberRef) ([]Member, error) {
	out := make([]Member, 0, len(refs))
	for _, r := range refs {
		a, err := s.account(ctx, r.AccountName)
		if err != nil {
			return nil, err
		}
		if r.DeviceID != "" {
			d, err := s.dir.Device(ctx, r.DeviceID)
			if err != nil {
				return nil, err
			}
			if d.AccountID != a.ID || !d.Active {
				return nil, fmt.Errorf("%w: %q has no active device %q", ErrUnknownAccount, r.AccountName, r.DeviceID)
			}
		}
		out = append(out, Member{AccountID: a.ID, DeviceID: r.DeviceID})
	}
	return out, nil
}

// loadForMember reads a channel's kind and head and checks that the caller
// is a member; an unknown channel is ErrNotMember too.
func loadForMember(ctx context.Context, tx *sql.Tx, c Caller, id []byte) (kind int, head uint64, err error) {
	var member bool
	var h int64
	err = tx.QueryRowContext(ctx, `SELECT c.kind, c.head_seq, `+isMember+` FROM channels c WHERE c.id = ?`,
		c.AccountID, c.DeviceID, id).Scan(&kind, &h, &member)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, 0, ErrNotMember
	case err != nil:
		return 0, 0, err
	case !member:
		return 0, 0, ErrNotMember
	}
	return kind, uint64(h), nil
}

// AddMembers adds accounts (or single devices) to a group channel. Any
// member may add. New members read from the current head on.
func (s *Service) AddMembers(ctx context.Context, c Caller, id []byte, refs []MemberRef) (Channel, error) {
	members, err := s.resolve(ctx, refs)
	if err != nil {
		return Channel{}, err
	}
	now := s.now().UnixMilli()
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		kind, head, err := loadForMember(ctx, tx, c, id)
		if err != nil {
			return err
		}
		if kind == KindDM {
			return fmt.Errorf("%w: a DM's members are fixed", ErrInvalidRequest)
		}
		for _, m := range members {
			if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members
				(channel_id, account_id, device_id, from_seq, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?)
				ON CONFLICT DO NOTHING`,
				id, m.AccountID, m.DeviceID, int64(head), c.AccountID, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "add_members", err)
		return Channel{}, fmt.Errorf("delivery: add members: %w", err)
	}
	for _, m := range members {
		s.hub.publish(accountKey(m.AccountID))
		s.audit.Event(ctx, "channel.member_add", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(id)), slog.String("member_account_id", m.AccountID), slog.String("member_device_id", m.DeviceID))
	}
	return s.channel(ctx, c, id)
}

// RemoveMembers removes accounts (DeviceID "": every membership row of the
// account) or single devices from a group channel. Any member may remove
// any member, itself included (leave). It returns the rows removed.
func (s *Service) RemoveMembers(ctx context.Context, c Caller, id []byte, refs []MemberRef) (int, error) {
	members, err := s.resolve(ctx, refs)
	if err != nil {
		return 0, err
	}
	var removed int
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		removed = 0
		kind, _, err := loadForMember(ctx, tx, c, id)
		if err != nil {
			return err
		}
		if kind == KindDM {
			return fmt.Errorf("%w: a DM's members are fixed", ErrInvalidRequest)
		}
		for _, m := range members {
			var r sql.Result
			if m.DeviceID == "" {
				r, err = tx.ExecContext(ctx, `DELETE FROM channel_members WHERE channel_id = ? AND account_id = ?`, id, m.AccountID)
				if err == nil {
					_, err = tx.ExecContext(ctx, `DELETE FROM cursors WHERE channel_id = ? AND account_id = ?`, id, m.AccountID)
				}
			} else {
				r, err = tx.ExecContext(ctx, `DELETE FROM channel_members WHERE channel_id = ? AND account_id = ? AND device_id = ?`, id, m.AccountID, m.DeviceID)
				if err == nil {
					_, err = tx.ExecContext(ctx, `DELETE FROM cursors WHERE channel_id = ? AND device_id = ?`, id, m.DeviceID)
				}
			}
			if err != nil {
				return err
			}
			n, _ := r.RowsAffected()
			removed += int(n)
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "remove_members", err)
		return 0, fmt.Errorf("delivery: remove members: %w", err)
	}
	for _, m := range members {
		s.hub.publish(accountKey(m.AccountID))
		s.audit.Event(ctx, "channel.member_remove", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(id)), slog.String("member_account_id", m.AccountID), slog.String("member_device_id", m.DeviceID))
	}
	return removed, nil
}

// ListChannels returns the channels the calling device may read.
func (s *Service) ListChannels(ctx context.Context, c Caller) ([]Channel, error) {
	var out []Channel
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT DISTINCT m.channel_id FROM channel_members m
			WHERE m.account_id = ? AND m.device_id IN ('', ?) ORDER BY m.channel_id`, c.AccountID, c.DeviceID)
		if err != nil {
			return err
		}
		var ids [][]byte
		for rows.Next() {
			var id []byte
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, id := range ids {
			ch, err := readChannel(ctx, tx, id)
			if err != nil {
				return err
			}
			out = append(out, ch)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: list channels: %w", err)
	}
	return out, nil
}

// channel reads one channel the caller is a member of.
func (s *Service) channel(ctx context.Context, c Caller, id []byte) (Channel, error) {
	var ch Channel
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var member bool
		if err := tx.QueryRowContext(ctx, `SELECT `+isMember+` FROM channels c WHERE c.id = ?`, c.AccountID, c.DeviceID, id).Scan(&member); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return ErrNotMember
			}
			return err
		}
		if !member {
			return ErrNotMember
		}
		var err error
		ch, err = readChannel(ctx, tx, id)
		return err
	})
	if err != nil {
		return Channel{}, fmt.Errorf("delivery: read channel: %w", err)
	}
	return ch, nil
}

func readChannel(ctx context.Context, tx *sql.Tx, id []byte) (Channel, error) {
	ch := Channel{ID: id}
	var epoch, head, ttl int64
	if err := tx.QueryRowContext(ctx, `SELECT kind, group_id, epoch, head_seq, ttl_ms FROM channels WHERE id = ?`, id).
		Scan(&ch.Kind, &ch.GroupID, &epoch, &head, &ttl); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Channel{}, ErrNotFound
		}
		return Channel{}, err
	}
	ch.Epoch, ch.HeadSeq, ch.TTL = uint64(epoch), uint64(head), time.Duration(ttl)*time.Millisecond
	rows, err := tx.QueryContext(ctx, `SELECT account_id, device_id FROM channel_members WHERE channel_id = ? ORDER BY account_id, device_id`, id)
	if err != nil {
		return Channel{}, err
	}
	defer rows.Close()
	for rows.Next() {
		var m Member
		if err := rows.Scan(&m.AccountID, &m.DeviceID); err != nil {
			return Channel{}, err
		}
		ch.Members = append(ch.Members, m)
	}
	return ch, rows.Err()
}
