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

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Sizes of ids.
const (
	ChannelIDSize = 16
	GroupIDSize   = 32
)

// Channel is a channel with its members.
type Channel struct {
	ID        []byte
	Kind      int // KindGroup or KindDM
	GroupID   []byte
	Epoch     uint64
	HeadSeq   uint64
	TTL       time.Duration // 0: the server's retention
	CreatedBy string        // account id
	Members   []Member
	Invited   []Member // pending invitations (not members)
	// AckedSeq: the calling device's acknowledged position (ListChannels
	// only; 0 when it has acknowledged nothing there). A client compares
	// it with its own after a server restore (docs/protocol.md).
	AckedSeq uint64
}

// Member is an account (DeviceID "") or one device of it.
type Member struct {
	AccountID string
	DeviceID  string
	AddedBy   string // account id of who added (invited) it
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
		// The account's devices read one channel more: their long polls
		// (and the views of hubview.go) learn of it.
		s.hub.publish(accountKey(c.AccountID))
		s.audit.Event(ctx, "channel.create", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(out)), slog.String("channel_type", "group"))
	}
	ch, err := s.channel(ctx, c, out)
	return ch, created, err
}

// CreateDM creates (or returns) the DM channel between the caller's
// account and peerName's. The caller is a member; the peer gets an
// invitation it accepts (a peer that blocked the caller refuses it). ttl,
// when set and below the retention, bounds its messages' lifetime.
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
	actorName := s.accountName(ctx, c.AccountID)
	inboxes, err := s.activeDevices(ctx, peer.ID)
	if err != nil {
		return Channel{}, false, err
	}
	var created bool
	var evs []pendingEvent
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		created, evs = false, nil
		now := s.now()
		var member bool
		err := tx.QueryRowContext(ctx, `SELECT `+isMember+` FROM channels c WHERE c.id = ?`, c.AccountID, c.DeviceID, id).Scan(&member)
		switch {
		case err == nil && member:
			return nil
		case err == nil:
			// The peer opened it and invited the caller.
			return fmt.Errorf("%w: %s already opened this DM and invited you; accept the invitation (qpc invitations)", ErrChannelExists, peerName)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		var one int
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
			VALUES (?, ?, ?, 0, ?, ?, ?)`, id, KindDM, groupID, ttlMS, c.AccountID, now.UnixMilli()); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at)
			VALUES (?, ?, '', 0, ?, ?)`, id, c.AccountID, c.AccountID, now.UnixMilli()); err != nil {
			return err
		}
		inv, err := s.invite(ctx, tx, c, id, KindDM, 0, Member{AccountID: peer.ID}, now)
		if err != nil {
			return err
		}
		inv.InviterAccountName = actorName
		ev := &qpcv1.MembershipEvent{Type: qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITED, ChannelId: id,
			ActorAccountId: c.AccountID, ActorAccountName: actorName, SubjectAccountId: peer.ID, SubjectAccountName: peer.Name,
			Invitation: inv, TimeUnixMs: now.UnixMilli()}
		seq, err := s.writeEvent(ctx, tx, ev, inboxes, now.UnixMilli())
		if err != nil {
			return err
		}
		// Both accounts read one channel more (the caller's other devices too).
		evs = []pendingEvent{{channelID: id, seq: seq, typ: ev.Type, devices: inboxes, accounts: []string{peer.ID, c.AccountID}}}
		created = true
		return nil
	})
	if err != nil {
		return Channel{}, false, fmt.Errorf("delivery: create DM channel: %w", err)
	}
	if created {
		s.publishEvents(evs)
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
			ch, err := readChannel(ctx, tx, id, s.now().UnixMilli())
			if err != nil {
				return err
			}
			var acked int64
			err = tx.QueryRowContext(ctx, `SELECT acked_seq FROM cursors WHERE device_id = ? AND channel_id = ?`, c.DeviceID, id).Scan(&acked)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			ch.AckedSeq = uint64(acked)
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
		ch, err = readChannel(ctx, tx, id, s.now().UnixMilli())
		return err
	})
	if err != nil {
		return Channel{}, fmt.Errorf("delivery: read channel: %w", err)
	}
	return ch, nil
}

func readChannel(ctx context.Context, tx *sql.Tx, id []byte, now int64) (Channel, error) {
	ch := Channel{ID: id}
	var epoch, head, ttl int64
	if err := tx.QueryRowContext(ctx, `SELECT kind, group_id, epoch, head_seq, ttl_ms, created_by FROM channels WHERE id = ?`, id).
		Scan(&ch.Kind, &ch.GroupID, &epoch, &head, &ttl, &ch.CreatedBy); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Channel{}, ErrNotFound
		}
		return Channel{}, err
	}
	ch.Epoch, ch.HeadSeq, ch.TTL = uint64(epoch), uint64(head), time.Duration(ttl)*time.Millisecond
	var err error
	if ch.Members, err = readMembers(ctx, tx, `SELECT account_id, device_id, added_by FROM channel_members WHERE channel_id = ?
		ORDER BY account_id, device_id`, id); err != nil {
		return Channel{}, err
	}
	ch.Invited, err = readMembers(ctx, tx, `SELECT account_id, device_id, inviter_id FROM invitations WHERE channel_id = ? AND status = ? AND expires_at > ?
		ORDER BY account_id, device_id`, id, invPending, now)
	return ch, err
}

func readMembers(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]Member, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Member
	for rows.Next() {
		var m Member
		if err := rows.Scan(&m.AccountID, &m.DeviceID, &m.AddedBy); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}
