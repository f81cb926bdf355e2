package delivery

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Membership: who may join, leave and remove, and how every change is
// made visible.
//
// Joining is by consent. AddMembers (and CreateDM, for the peer) makes a
// pending invitation for another account; the invitee reads nothing of the
// channel, gets no inbox items from it and cannot be sent any until it
// accepts. A Welcome sent to a pending invitee is held with the invitation
// and moved to its devices' inboxes when it accepts. An account's own
// devices join at once (no one else's consent is at stake).
//
// Every server-side membership change (invite, join, decline, leave,
// remove, cancel) is written into the channel's log as a server event that
// every member reads in order with the messages; an account that loses
// access (or never had it, an invitee) gets the event in its devices'
// inboxes. Nobody can be cut off, or added, unnoticed.
//
// Removal is restricted: a member removes itself (or one of its devices);
// the channel's admin (its creator while a member, else the longest-standing
// member) removes anyone; an inviter may withdraw its pending invitation.

// Membership errors; the server maps them to wire statuses.
var (
	// ErrNotAllowed: the caller may not make this membership change
	// (PERMISSION_DENIED); the message says who may.
	ErrNotAllowed = errors.New("delivery: not allowed")
	// ErrRefused: the account does not accept this from the caller: it
	// blocked the caller (PERMISSION_DENIED).
	ErrRefused = errors.New("delivery: refused by the account")
	// ErrInvitationLimit: an invitation limit is reached (RESOURCE_EXHAUSTED);
	// the message names the limit.
	ErrInvitationLimit = errors.New("delivery: invitation limit reached")
)

// Invitation statuses as stored (invitations.status).
const (
	invPending   = 1
	invAccepted  = 2
	invDeclined  = 3
	invCancelled = 4
)

// Invitation limit defaults (Options).
const (
	DefaultInvitationTTL        = 7 * 24 * time.Hour
	DefaultInvitationsPerHour   = 30
	DefaultMaxPendingPerInvitee = 50
	DefaultMaxHeldWelcome       = 256 << 10
	// maxBlocks bounds one account's block list (rows are cheap, but not free).
	maxBlocks = 10000
)

// Invitation is a pending invitation as its invitee sees it.
type Invitation struct {
	ID           string
	ChannelID    []byte
	ChannelKind  int
	InviterID    string
	InviterName  string
	DeviceID     string // "": every device of the invitee
	Created      time.Time
	Expires      time.Time
	Members      int
	WelcomesHeld int
}

// Blocked is one entry of an account's block list.
type Blocked struct {
	AccountID   string
	AccountName string
	Since       time.Time
}

// EventSender is the sender_device of a server event in a channel's log;
// no device has an empty id.
const EventSender = ""

// IsEvent reports whether a fetched message is a server event (Body is an
// encoded qpcv1.MembershipEvent) rather than an MLS message.
func (m *Message) IsEvent() bool { return m.SenderDevice == EventSender }

func newInvitationID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// accountName returns an account's name for an event ("" when unknown).
func (s *Service) accountName(ctx context.Context, id string) string {
	a, err := s.dir.AccountByID(ctx, id)
	if err != nil {
		return ""
	}
	return a.Name
}

// pendingEvent is an event written in a transaction, published after it.
type pendingEvent struct {
	channelID []byte
	seq       uint64
	typ       qpcv1.MembershipEventType
	devices   []string // inboxes that got it
	accounts  []string // accounts whose channel list changed
}

// writeEvent appends a server event to the channel's log (at head+1; the
// caller's transaction locked or will retry on the channel row) and, for
// the given devices, into their inboxes. It returns the event's seq.
func (s *Service) writeEvent(ctx context.Context, tx *sql.Tx, ev *qpcv1.MembershipEvent, inboxes []string, nowMS int64) (uint64, error) {
	body, err := proto.Marshal(ev)
	if err != nil {
		return 0, err
	}
	id := ev.GetChannelId()
	var head, epoch, ttl int64
	if err := tx.QueryRowContext(ctx, `SELECT head_seq, epoch, ttl_ms FROM channels WHERE id = ?`, id).Scan(&head, &epoch, &ttl); err != nil {
		return 0, err
	}
	life := s.retention.Milliseconds()
	if ttl > 0 {
		life = min(life, ttl)
	}
	mid, err := newInvitationID()
	if err != nil {
		return 0, err
	}
	seq := head + 1
	// The head first: on PostgreSQL two events racing for one channel
	// then collide on the channel row, a serialization failure that the
	// store retries. Inserting the message first made the loser fail on
	// the (channel_id, seq) key instead, a unique violation that is not
	// retried (TestConcurrentAcceptsOfOneChannel).
	if _, err := tx.ExecContext(ctx, `UPDATE channels SET head_seq = ? WHERE id = ?`, seq, id); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO messages
		(channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body)
		VALUES (?, ?, ?, '', ?, ?, 0, ?, ?, ?)`, id, seq, "event-"+mid, EventSender, epoch, nowMS, nowMS+life, body); err != nil {
		return 0, err
	}
	for _, d := range inboxes {
		if err := s.insertInbox(ctx, tx, d, InboxMembership, id, ev.GetActorAccountId(), EventSender, nowMS, body); err != nil {
			return 0, err
		}
	}
	return uint64(seq), nil
}

// insertInbox stores one item in a device's inbox.
func (s *Service) insertInbox(ctx context.Context, tx *sql.Tx, device string, kind int, channelID []byte, senderAccount, senderDevice string, nowMS int64, body []byte) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO inbox_heads (device_id, head_seq) VALUES (?, 1)
		ON CONFLICT (device_id) DO UPDATE SET head_seq = inbox_heads.head_seq + 1`, device); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO inbox
		(device_id, seq, kind, channel_id, sender_account, sender_device, created_at, expires_at, body)
		VALUES (?, (SELECT head_seq FROM inbox_heads WHERE device_id = ?), ?, ?, ?, ?, ?, ?, ?)`,
		device, device, kind, channelID, senderAccount, senderDevice, nowMS, nowMS+s.retention.Milliseconds(), body)
	return err
}

// publishEvents wakes the readers of what a membership transaction wrote.
func (s *Service) publishEvents(evs []pendingEvent) {
	for _, e := range evs {
		s.hub.publishChannel(e.channelID, e.seq, nil)
		for _, d := range e.devices {
			s.hub.publish(deviceKey(d))
		}
		for _, a := range e.accounts {
			s.hub.publish(accountKey(a))
		}
		s.metrics.membership.WithLabelValues(eventLabel(e.typ)).Inc()
	}
}

func eventLabel(t qpcv1.MembershipEventType) string {
	switch t {
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITED:
		return "invited"
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_JOINED:
		return "joined"
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_DECLINED:
		return "declined"
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_LEFT:
		return "left"
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED:
		return "removed"
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITATION_CANCELLED:
		return "cancelled"
	}
	return "other"
}

// activeDevices lists an account's active device ids.
func (s *Service) activeDevices(ctx context.Context, accountID string) ([]string, error) {
	devs, err := s.dir.Devices(ctx, accountID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range devs {
		if d.Active {
			out = append(out, d.ID)
		}
	}
	return out, nil
}

func blocked(ctx context.Context, tx *sql.Tx, who, by string) (bool, error) {
	var n int
	err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM blocks WHERE account_id = ? AND blocked_id = ?`, by, who).Scan(&n)
	return n > 0, err
}

// invite makes a pending invitation of member m to channel id (kind) by
// the caller, after checking blocks and limits; head is the channel's head
// before this transaction's events. It returns the invitation, or nil when
// m is already a member or already invited.
func (s *Service) invite(ctx context.Context, tx *sql.Tx, c Caller, id []byte, kind int, head uint64, m Member, now time.Time) (*qpcv1.Invitation, error) {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM channel_members WHERE channel_id = ? AND account_id = ? AND device_id IN ('', ?)`,
		id, m.AccountID, m.DeviceID).Scan(&n); err != nil {
		return nil, err
	}
	if n > 0 {
		return nil, nil
	}
	nowMS := now.UnixMilli()
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM invitations WHERE channel_id = ? AND account_id = ? AND device_id IN ('', ?)
		AND status = ? AND expires_at > ?`, id, m.AccountID, m.DeviceID, invPending, nowMS).Scan(&n); err != nil {
		return nil, err
	}
	if n > 0 {
		return nil, nil
	}
	if b, err := blocked(ctx, tx, c.AccountID, m.AccountID); err != nil {
		return nil, err
	} else if b {
		s.metrics.invitationsRefused.WithLabelValues("blocked").Inc()
		return nil, fmt.Errorf("%w: the account does not accept invitations or DMs from you", ErrRefused)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM invitations WHERE inviter_id = ? AND created_at > ?`,
		c.AccountID, nowMS-time.Hour.Milliseconds()).Scan(&n); err != nil {
		return nil, err
	}
	if n >= s.invitesPerHour {
		s.metrics.invitationsRefused.WithLabelValues("per_inviter").Inc()
		return nil, fmt.Errorf("%w: you sent %d invitations in the last hour, the most allowed (invitations.max_per_hour); try again later",
			ErrInvitationLimit, n)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM invitations WHERE account_id = ? AND status = ? AND expires_at > ?`,
		m.AccountID, invPending, nowMS).Scan(&n); err != nil {
		return nil, err
	}
	if n >= s.maxPending {
		s.metrics.invitationsRefused.WithLabelValues("per_invitee").Inc()
		return nil, fmt.Errorf("%w: the account has %d unanswered invitations, the most allowed (invitations.max_pending); ask them to answer some first",
			ErrInvitationLimit, n)
	}
	invID, err := newInvitationID()
	if err != nil {
		return nil, err
	}
	exp := now.Add(s.inviteTTL).UnixMilli()
	if _, err := tx.ExecContext(ctx, `INSERT INTO invitations
		(id, channel_id, account_id, device_id, inviter_id, inviter_device, from_seq, status, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, invID, id, m.AccountID, m.DeviceID, c.AccountID, c.DeviceID, int64(head), invPending, nowMS, exp); err != nil {
		return nil, err
	}
	var members int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(DISTINCT account_id) FROM channel_members WHERE channel_id = ?`, id).Scan(&members); err != nil {
		return nil, err
	}
	return &qpcv1.Invitation{
		InvitationId: invID, ChannelId: id, ChannelType: channelType(kind), InviterAccountId: c.AccountID,
		CreatedUnixMs: nowMS, ExpiresUnixMs: exp, MemberCount: uint32(members), DeviceId: m.DeviceID,
	}, nil
}

func channelType(kind int) qpcv1.ChannelType {
	if kind == KindDM {
		return qpcv1.ChannelType_CHANNEL_TYPE_DM
	}
	return qpcv1.ChannelType_CHANNEL_TYPE_GROUP
}

// AddMembers invites accounts (or single devices) to a group channel; any
// member may invite. Another account becomes a pending invitee (see the
// top of this file); the caller's own devices become members at once.
// Accounts already members or already invited are left as they are.
func (s *Service) AddMembers(ctx context.Context, c Caller, id []byte, refs []MemberRef) (Channel, error) {
	members, err := s.resolve(ctx, refs)
	if err != nil {
		return Channel{}, err
	}
	actorName := s.accountName(ctx, c.AccountID)
	names := map[string]string{}
	for i, r := range refs {
		names[members[i].AccountID] = r.AccountName
	}
	var evs []pendingEvent
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		evs = nil
		now := s.now()
		kind, head, err := loadForMember(ctx, tx, c, id)
		if err != nil {
			return err
		}
		if kind == KindDM {
			return fmt.Errorf("%w: a DM's members are fixed", ErrInvalidRequest)
		}
		for _, m := range members {
			ev := &qpcv1.MembershipEvent{ChannelId: id, ActorAccountId: c.AccountID, ActorAccountName: actorName,
				SubjectAccountId: m.AccountID, SubjectAccountName: names[m.AccountID], SubjectDeviceId: m.DeviceID, TimeUnixMs: now.UnixMilli()}
			var inboxes []string
			if m.AccountID == c.AccountID {
				r, err := tx.ExecContext(ctx, `INSERT INTO channel_members
					(channel_id, account_id, device_id, from_seq, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?)
					ON CONFLICT DO NOTHING`, id, m.AccountID, m.DeviceID, int64(head), c.AccountID, now.UnixMilli())
				if err != nil {
					return err
				}
				if n, _ := r.RowsAffected(); n == 0 {
					continue
				}
				ev.Type = qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_JOINED
			} else {
				inv, err := s.invite(ctx, tx, c, id, kind, head, m, now)
				if err != nil {
					return err
				}
				if inv == nil {
					continue
				}
				inv.InviterAccountName = actorName
				ev.Type, ev.Invitation = qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITED, inv
				if inboxes, err = s.inviteeInboxes(ctx, m); err != nil {
					return err
				}
			}
			seq, err := s.writeEvent(ctx, tx, ev, inboxes, now.UnixMilli())
			if err != nil {
				return err
			}
			head = seq
			evs = append(evs, pendingEvent{channelID: id, seq: seq, typ: ev.Type, devices: inboxes, accounts: []string{m.AccountID}})
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "add_members", err)
		return Channel{}, fmt.Errorf("delivery: add members: %w", err)
	}
	s.publishEvents(evs)
	for _, e := range evs {
		s.audit.Event(ctx, "channel.member_"+eventLabel(e.typ), slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(id)), slog.String("member_account_id", e.accounts[0]))
	}
	return s.channel(ctx, c, id)
}

// inviteeInboxes are the devices an invitation notice goes to.
func (s *Service) inviteeInboxes(ctx context.Context, m Member) ([]string, error) {
	if m.DeviceID != "" {
		return []string{m.DeviceID}, nil
	}
	return s.activeDevices(ctx, m.AccountID)
}

// channelAdmin is the account that may remove anyone: the creator while it
// is a member, else the member added first ("" for an empty channel).
func channelAdmin(ctx context.Context, tx *sql.Tx, id []byte) (string, error) {
	var creator string
	var member bool
	if err := tx.QueryRowContext(ctx, `SELECT c.created_by, EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.account_id = c.created_by)
		FROM channels c WHERE c.id = ?`, id).Scan(&creator, &member); err != nil {
		return "", err
	}
	if member {
		return creator, nil
	}
	var first string
	err := tx.QueryRowContext(ctx, `SELECT account_id FROM channel_members WHERE channel_id = ? ORDER BY added_at, account_id LIMIT 1`, id).Scan(&first)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return first, err
}

// RemoveMembers removes accounts (DeviceID "": every membership of the
// account, and its pending invitations) or single devices from a group
// channel, and returns how many memberships and invitations it ended. A
// device of an account that is a member as a whole is removed by turning
// the account's membership into one per remaining active device. Who may
// remove whom: see the top of this file. A ref that matches nothing fails
// the whole call with ErrNotFound (nothing is removed).
func (s *Service) RemoveMembers(ctx context.Context, c Caller, id []byte, refs []MemberRef) (int, error) {
	type target struct {
		Member
		name    string
		devices []string // the account's active devices
	}
	targets := make([]target, 0, len(refs))
	for _, r := range refs {
		// Not s.account: a disabled account, or a revoked device, must
		// still be removable.
		a, err := s.dir.AccountByName(ctx, r.AccountName)
		if err != nil {
			return 0, err
		}
		t := target{Member: Member{AccountID: a.ID, DeviceID: r.DeviceID}, name: r.AccountName}
		if r.DeviceID != "" {
			d, err := s.dir.Device(ctx, r.DeviceID)
			if err != nil {
				return 0, err
			}
			if d.AccountID != a.ID {
				return 0, fmt.Errorf("%w: %q has no device %q", ErrUnknownAccount, r.AccountName, r.DeviceID)
			}
		}
		var err2 error
		if t.devices, err2 = s.activeDevices(ctx, a.ID); err2 != nil {
			return 0, err2
		}
		targets = append(targets, t)
	}
	actorName := s.accountName(ctx, c.AccountID)
	var removed int
	var evs []pendingEvent
	// Access is taken away: no woken poll answers from memory until the
	// removal is published (hubrecent.go).
	defer s.hub.raiseFence()()
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		removed, evs = 0, nil
		now := s.now()
		nowMS := now.UnixMilli()
		kind, _, err := loadForMember(ctx, tx, c, id)
		if err != nil {
			return err
		}
		if kind == KindDM {
			return fmt.Errorf("%w: a DM's members are fixed (block the account to refuse new DMs and invitations from it)", ErrInvalidRequest)
		}
		admin, err := channelAdmin(ctx, tx, id)
		if err != nil {
			return err
		}
		for _, t := range targets {
			self := t.AccountID == c.AccountID
			mayRemove := self || admin == c.AccountID
			// Anyone may withdraw its own pending invitations; the
			// invitee and the admin withdraw any.
			n, err := s.cancelInvitations(ctx, tx, id, t.Member, c.AccountID, mayRemove, nowMS)
			if err != nil {
				return err
			}
			ev := &qpcv1.MembershipEvent{ChannelId: id, ActorAccountId: c.AccountID, ActorAccountName: actorName,
				SubjectAccountId: t.AccountID, SubjectAccountName: t.name, SubjectDeviceId: t.DeviceID, TimeUnixMs: nowMS,
				Type: qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITATION_CANCELLED}
			var gone []string // devices that lose access
			if mayRemove {
				k, lost, err := removeMembership(ctx, tx, id, t.Member, t.devices)
				if err != nil {
					return err
				}
				if k > 0 {
					n, gone = n+k, lost
					ev.Type = qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED
					if self {
						ev.Type = qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_LEFT
					}
				}
			}
			if n == 0 {
				return s.whyNotRemoved(ctx, tx, id, t.Member, t.name, mayRemove, admin, nowMS)
			}
			removed += n
			// The event goes to the log (the remaining members) and to the
			// inboxes of the devices that lost access, but not to the
			// device that asked.
			var inboxes []string
			for _, d := range gone {
				if d != c.DeviceID {
					inboxes = append(inboxes, d)
				}
			}
			seq, err := s.writeEvent(ctx, tx, ev, inboxes, nowMS)
			if err != nil {
				return err
			}
			evs = append(evs, pendingEvent{channelID: id, seq: seq, typ: ev.Type, devices: inboxes, accounts: []string{t.AccountID}})
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "remove_members", err)
		return 0, fmt.Errorf("delivery: remove members: %w", err)
	}
	s.publishEvents(evs)
	for _, e := range evs {
		s.audit.Event(ctx, "channel.member_"+eventLabel(e.typ), slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("channel_id", hexID(id)), slog.String("member_account_id", e.accounts[0]))
	}
	return removed, nil
}

// whyNotRemoved explains a removal that changed nothing: the caller may
// not remove the member (ErrNotAllowed, naming who may), or there was
// nothing to remove (ErrNotFound).
func (s *Service) whyNotRemoved(ctx context.Context, tx *sql.Tx, id []byte, m Member, name string, mayRemove bool, admin string, nowMS int64) error {
	if !mayRemove {
		var member, invited int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM channel_members WHERE channel_id = ? AND account_id = ?`, id, m.AccountID).Scan(&member); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM invitations WHERE channel_id = ? AND account_id = ? AND status = ? AND expires_at > ?`,
			id, m.AccountID, invPending, nowMS).Scan(&invited); err != nil {
			return err
		}
		switch {
		case member > 0:
			return fmt.Errorf("%w: only %s itself or the channel's admin (%s) can remove %s; ask them, or leave the group",
				ErrNotAllowed, name, s.accountName(ctx, admin), name)
		case invited > 0:
			return fmt.Errorf("%w: %s was invited by another member; only that member, %s itself or the channel's admin (%s) can withdraw it",
				ErrNotAllowed, name, name, s.accountName(ctx, admin))
		}
	}
	what := name
	if m.DeviceID != "" {
		what += " device " + m.DeviceID
	}
	return fmt.Errorf("%w: %s is not a member of the channel (nor invited); nothing was removed", ErrNotFound, what)
}

// cancelInvitations withdraws pending invitations of m to the channel: any
// (anyone true: the invitee itself or the admin) or only those the caller
// made. It returns how many.
func (s *Service) cancelInvitations(ctx context.Context, tx *sql.Tx, id []byte, m Member, caller string, anyone bool, nowMS int64) (int, error) {
	q := `SELECT id FROM invitations WHERE channel_id = ? AND account_id = ? AND status = ? AND expires_at > ?`
	args := []any{id, m.AccountID, invPending, nowMS}
	if m.DeviceID != "" {
		q += ` AND device_id = ?`
		args = append(args, m.DeviceID)
	}
	if !anyone {
		q += ` AND inviter_id = ?`
		args = append(args, caller)
	}
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	var ids []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, inv := range ids {
		if err := s.settleInvitation(ctx, tx, inv, invCancelled, nowMS); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// settleInvitation records an answer to an invitation and deletes the
// Welcomes held for it. Unless it was accepted (AcceptInvitation moved them
// into inboxes, where they stay charged to their senders), the Welcomes
// leave their senders' inbox quotas.
func (s *Service) settleInvitation(ctx context.Context, tx *sql.Tx, id string, status int, nowMS int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE invitations SET status = ?, decided_at = ? WHERE id = ?`, status, nowMS, id); err != nil {
		return err
	}
	var freed map[string]Usage
	if status != invAccepted {
		var err error
		freed, err = senderUsage(ctx, tx, `SELECT sender_account, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM invitation_welcomes
			WHERE invitation_id = ? GROUP BY sender_account`, id)
		if err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM invitation_welcomes WHERE invitation_id = ?`, id); err != nil {
		return err
	}
	return s.release(ctx, tx, freed)
}

// removeMembership ends m's membership of the channel and returns the rows
// changed and the devices that lost access. Memberships are stored per
// account (device ”) or per device: removing the account removes both
// kinds; removing one device of an account that is a member as a whole
// replaces the account row by one row per other active device (keeping
// where they read from), so that device alone stops reading.
func removeMembership(ctx context.Context, tx *sql.Tx, id []byte, m Member, activeDevices []string) (int, []string, error) {
	type row struct {
		device  string
		fromSeq int64
		addedBy string
		addedAt int64
	}
	rows, err := tx.QueryContext(ctx, `SELECT device_id, from_seq, added_by, added_at FROM channel_members WHERE channel_id = ? AND account_id = ?`, id, m.AccountID)
	if err != nil {
		return 0, nil, err
	}
	var have []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.device, &r.fromSeq, &r.addedBy, &r.addedAt); err != nil {
			rows.Close()
			return 0, nil, err
		}
		have = append(have, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, nil, err
	}
	if m.DeviceID == "" {
		var lost []string
		for _, r := range have {
			lost = append(lost, r.device)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM channel_members WHERE channel_id = ? AND account_id = ?`, id, m.AccountID); err != nil {
			return 0, nil, err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM cursors WHERE channel_id = ? AND account_id = ?`, id, m.AccountID); err != nil {
			return 0, nil, err
		}
		return len(have), expandLost(lost, activeDevices), nil
	}
	var whole *row
	n := 0
	for i, r := range have {
		switch r.device {
		case m.DeviceID:
			n++
		case "":
			whole = &have[i]
		}
	}
	if n > 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM channel_members WHERE channel_id = ? AND account_id = ? AND device_id = ?`, id, m.AccountID, m.DeviceID); err != nil {
			return 0, nil, err
		}
	}
	if whole != nil {
		if _, err := tx.ExecContext(ctx, `DELETE FROM channel_members WHERE channel_id = ? AND account_id = ? AND device_id = ''`, id, m.AccountID); err != nil {
			return 0, nil, err
		}
		for _, d := range activeDevices {
			if d == m.DeviceID {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at)
				VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, id, m.AccountID, d, whole.fromSeq, whole.addedBy, whole.addedAt); err != nil {
				return 0, nil, err
			}
		}
		n++
	}
	if n == 0 {
		return 0, nil, nil
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM cursors WHERE channel_id = ? AND device_id = ?`, id, m.DeviceID); err != nil {
		return 0, nil, err
	}
	return n, []string{m.DeviceID}, nil
}

// expandLost turns removed membership rows (device ids, ” for the whole
// account) into the devices that lost access.
func expandLost(rows, active []string) []string {
	for _, d := range rows {
		if d == "" {
			return active
		}
	}
	return rows
}

// ListInvitations returns the caller's account's pending, unexpired
// invitations (those for another device of the account excluded), oldest
// first.
func (s *Service) ListInvitations(ctx context.Context, c Caller) ([]Invitation, error) {
	var out []Invitation
	nowMS := s.now().UnixMilli()
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT i.id, i.channel_id, c.kind, i.inviter_id, i.device_id, i.created_at, i.expires_at,
			(SELECT COUNT(DISTINCT m.account_id) FROM channel_members m WHERE m.channel_id = i.channel_id),
			(SELECT COUNT(*) FROM invitation_welcomes w WHERE w.invitation_id = i.id)
			FROM invitations i JOIN channels c ON c.id = i.channel_id
			WHERE i.account_id = ? AND i.device_id IN ('', ?) AND i.status = ? AND i.expires_at > ?
			ORDER BY i.created_at, i.id`, c.AccountID, c.DeviceID, invPending, nowMS)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var inv Invitation
			var created, expires int64
			if err := rows.Scan(&inv.ID, &inv.ChannelID, &inv.ChannelKind, &inv.InviterID, &inv.DeviceID, &created, &expires, &inv.Members, &inv.WelcomesHeld); err != nil {
				return err
			}
			inv.Created, inv.Expires = time.UnixMilli(created), time.UnixMilli(expires)
			out = append(out, inv)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: list invitations: %w", err)
	}
	for i := range out {
		out[i].InviterName = s.accountName(ctx, out[i].InviterID)
	}
	return out, nil
}

// loadInvitation reads a pending invitation of the caller's account.
func loadInvitation(ctx context.Context, tx *sql.Tx, c Caller, invID string, nowMS int64) (channelID []byte, device string, fromSeq int64, inviter string, err error) {
	var status int
	var expires int64
	var account string
	err = tx.QueryRowContext(ctx, `SELECT channel_id, account_id, device_id, from_seq, inviter_id, status, expires_at FROM invitations WHERE id = ?`, invID).
		Scan(&channelID, &account, &device, &fromSeq, &inviter, &status, &expires)
	switch {
	case errors.Is(err, sql.ErrNoRows) || (err == nil && (account != c.AccountID || (device != "" && device != c.DeviceID))):
		return nil, "", 0, "", fmt.Errorf("%w: no invitation %q for you (see qpc invitations)", ErrNotFound, invID)
	case err != nil:
		return nil, "", 0, "", err
	case status != invPending:
		return nil, "", 0, "", fmt.Errorf("%w: invitation %q was already answered or withdrawn", ErrNotFound, invID)
	case expires <= nowMS:
		return nil, "", 0, "", fmt.Errorf("%w: invitation %q expired; ask for a new one", ErrNotFound, invID)
	}
	return channelID, device, fromSeq, inviter, nil
}

// AcceptInvitation makes the caller's account (or the invited device) a
// member of the channel from where it was invited (so it reads the commit
// that added it and everything after), and moves the Welcomes held for the
// invitation into the devices' inboxes. It returns the channel and how many
// Welcomes were delivered.
func (s *Service) AcceptInvitation(ctx context.Context, c Caller, invID string) (Channel, int, error) {
	name := s.accountName(ctx, c.AccountID)
	var chID []byte
	var welcomes []string
	var evs []pendingEvent
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		welcomes, evs = nil, nil
		now := s.now()
		nowMS := now.UnixMilli()
		id, device, fromSeq, inviter, err := loadInvitation(ctx, tx, c, invID, nowMS)
		if err != nil {
			return err
		}
		chID = id
		if _, err := tx.ExecContext(ctx, `INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, id, c.AccountID, device, fromSeq, inviter, nowMS); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT device_id, sender_account, sender_device, created_at, body FROM invitation_welcomes WHERE invitation_id = ?`, invID)
		if err != nil {
			return err
		}
		type held struct {
			device, account, sender string
			at                      int64
			body                    []byte
		}
		var hs []held
		for rows.Next() {
			var h held
			if err := rows.Scan(&h.device, &h.account, &h.sender, &h.at, &h.body); err != nil {
				rows.Close()
				return err
			}
			hs = append(hs, h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, h := range hs {
			if err := s.insertInbox(ctx, tx, h.device, InboxWelcome, id, h.account, h.sender, nowMS, h.body); err != nil {
				return err
			}
			welcomes = append(welcomes, h.device)
		}
		if err := s.settleInvitation(ctx, tx, invID, invAccepted, nowMS); err != nil {
			return err
		}
		ev := &qpcv1.MembershipEvent{Type: qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_JOINED, ChannelId: id,
			ActorAccountId: c.AccountID, ActorAccountName: name, SubjectAccountId: c.AccountID, SubjectAccountName: name,
			SubjectDeviceId: device, TimeUnixMs: nowMS}
		seq, err := s.writeEvent(ctx, tx, ev, nil, nowMS)
		if err != nil {
			return err
		}
		evs = []pendingEvent{{channelID: id, seq: seq, typ: ev.Type, devices: welcomes, accounts: []string{c.AccountID}}}
		return nil
	})
	if err != nil {
		return Channel{}, 0, fmt.Errorf("delivery: accept invitation: %w", err)
	}
	s.publishEvents(evs)
	s.metrics.inboxItems.WithLabelValues("welcome").Add(float64(len(welcomes)))
	s.audit.Event(ctx, "channel.invitation_accept", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("channel_id", hexID(chID)), slog.Int("welcomes", len(welcomes)))
	ch, err := s.channel(ctx, c, chID)
	return ch, len(welcomes), err
}

// DeclineInvitation drops a pending invitation and the Welcomes held for
// it; the channel's members see a DECLINED event (so that a member's client
// can remove the invitee's leaf from the MLS group).
func (s *Service) DeclineInvitation(ctx context.Context, c Caller, invID string) error {
	name := s.accountName(ctx, c.AccountID)
	var evs []pendingEvent
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		evs = nil
		nowMS := s.now().UnixMilli()
		id, device, _, _, err := loadInvitation(ctx, tx, c, invID, nowMS)
		if err != nil {
			return err
		}
		ev, err := s.decline(ctx, tx, c.AccountID, name, invID, id, device, nowMS)
		if err != nil {
			return err
		}
		evs = []pendingEvent{ev}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delivery: decline invitation: %w", err)
	}
	s.publishEvents(evs)
	s.audit.Event(ctx, "channel.invitation_decline", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("channel_id", hexID(evs[0].channelID)))
	return nil
}

func (s *Service) decline(ctx context.Context, tx *sql.Tx, account, name, invID string, channelID []byte, device string, nowMS int64) (pendingEvent, error) {
	if err := s.settleInvitation(ctx, tx, invID, invDeclined, nowMS); err != nil {
		return pendingEvent{}, err
	}
	ev := &qpcv1.MembershipEvent{Type: qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_DECLINED, ChannelId: channelID,
		ActorAccountId: account, ActorAccountName: name, SubjectAccountId: account, SubjectAccountName: name,
		SubjectDeviceId: device, TimeUnixMs: nowMS}
	seq, err := s.writeEvent(ctx, tx, ev, nil, nowMS)
	if err != nil {
		return pendingEvent{}, err
	}
	return pendingEvent{channelID: channelID, seq: seq, typ: ev.Type, accounts: []string{account}}, nil
}

// Block adds an account to the caller's block list: its invitations and
// DMs to the caller are refused, its pending invitations declined, and it
// cannot put items into the caller's devices' inboxes. Channels the two
// already share are left as they are. It returns how many invitations it
// declined.
func (s *Service) Block(ctx context.Context, c Caller, accountName string) (int, error) {
	a, err := s.dir.AccountByName(ctx, accountName)
	if err != nil {
		return 0, err
	}
	if a.ID == c.AccountID {
		return 0, fmt.Errorf("%w: you cannot block your own account", ErrInvalidRequest)
	}
	name := s.accountName(ctx, c.AccountID)
	var evs []pendingEvent
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		evs = nil
		nowMS := s.now().UnixMilli()
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM blocks WHERE account_id = ?`, c.AccountID).Scan(&n); err != nil {
			return err
		}
		if n >= maxBlocks {
			return fmt.Errorf("%w: your block list holds %d accounts, the most allowed; unblock some first", ErrInvitationLimit, n)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO blocks (account_id, blocked_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
			c.AccountID, a.ID, nowMS); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT id, channel_id, device_id FROM invitations WHERE account_id = ? AND inviter_id = ? AND status = ?`,
			c.AccountID, a.ID, invPending)
		if err != nil {
			return err
		}
		type pend struct {
			id, device string
			ch         []byte
		}
		var ps []pend
		for rows.Next() {
			var p pend
			if err := rows.Scan(&p.id, &p.ch, &p.device); err != nil {
				rows.Close()
				return err
			}
			ps = append(ps, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, p := range ps {
			ev, err := s.decline(ctx, tx, c.AccountID, name, p.id, p.ch, p.device, nowMS)
			if err != nil {
				return err
			}
			evs = append(evs, ev)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delivery: block: %w", err)
	}
	s.publishEvents(evs)
	s.audit.Event(ctx, "account.block", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("blocked_account_id", a.ID), slog.Int("invitations_declined", len(evs)))
	return len(evs), nil
}

// Unblock removes an account from the caller's block list; NOT_FOUND when
// it was not on it.
func (s *Service) Unblock(ctx context.Context, c Caller, accountName string) error {
	a, err := s.dir.AccountByName(ctx, accountName)
	if err != nil {
		return err
	}
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, `DELETE FROM blocks WHERE account_id = ? AND blocked_id = ?`, c.AccountID, a.ID)
		if err != nil {
			return err
		}
		if n, _ := r.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: %s is not blocked", ErrNotFound, accountName)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delivery: unblock: %w", err)
	}
	s.audit.Event(ctx, "account.unblock", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("blocked_account_id", a.ID))
	return nil
}

// ListBlocked returns the caller's block list, oldest first.
func (s *Service) ListBlocked(ctx context.Context, c Caller) ([]Blocked, error) {
	var out []Blocked
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT blocked_id, created_at FROM blocks WHERE account_id = ? ORDER BY created_at, blocked_id`, c.AccountID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var b Blocked
			var at int64
			if err := rows.Scan(&b.AccountID, &at); err != nil {
				return err
			}
			b.Since = time.UnixMilli(at)
			out = append(out, b)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: list blocked: %w", err)
	}
	for i := range out {
		out[i].AccountName = s.accountName(ctx, out[i].AccountID)
	}
	return out, nil
}

// What SendToInbox does with an item for one device (inboxRecipient).
const (
	inboxDeliver = iota
	inboxHold    // a Welcome for a pending invitee, kept with its invitation
	inboxDrop    // a Welcome for an invitee that declined or was withdrawn
)

// inboxRecipient decides, inside SendToInbox's transaction, what happens
// to an item for device d of a channel: deliver (a member), hold (a Welcome
// for a pending invitee, until it answers), drop (a Welcome for an account
// whose invitation was answered or withdrawn and that is not a member: the
// adder's client sends it after its commit whatever happened meanwhile, and
// nothing is stored), or refuse (not a member, or the recipient blocked
// the sender).
//
// A held Welcome replaces an earlier one for the same invitation and device;
// the earlier one's size is added to replaced under its sender, whose quota
// it no longer uses.
func (s *Service) inboxRecipient(ctx context.Context, tx *sql.Tx, c Caller, channelID []byte, d Device, kind int, payload []byte, nowMS int64, replaced map[string]Usage) (int, error) {
	if b, err := blocked(ctx, tx, c.AccountID, d.AccountID); err != nil {
		return 0, err
	} else if b {
		return 0, fmt.Errorf("%w: the account does not accept items from you", ErrRefused)
	}
	var ok bool
	if err := tx.QueryRowContext(ctx, `SELECT `+isMember+` FROM channels c WHERE c.id = ?`, d.AccountID, d.ID, channelID).Scan(&ok); err != nil {
		return 0, err
	}
	if ok {
		return inboxDeliver, nil
	}
	var invID string
	var status int
	var expires int64
	err := tx.QueryRowContext(ctx, `SELECT id, status, expires_at FROM invitations WHERE channel_id = ? AND account_id = ? AND device_id IN ('', ?)
		ORDER BY created_at DESC, id LIMIT 1`, channelID, d.AccountID, d.ID).Scan(&invID, &status, &expires)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, fmt.Errorf("%w: recipient device %s is not a member of the channel; add it first", ErrNotMember, d.ID)
	case err != nil:
		return 0, err
	case kind != InboxWelcome:
		return 0, fmt.Errorf("%w: recipient device %s has not accepted an invitation to the channel; only a Welcome can wait for it", ErrNotMember, d.ID)
	case status != invPending || expires <= nowMS:
		return inboxDrop, nil
	case len(payload) > s.maxHeldWelcome:
		return 0, fmt.Errorf("%w: a Welcome held for an invitee is at most %d bytes (invitations.max_welcome_bytes), this one is %d",
			ErrTooLarge, s.maxHeldWelcome, len(payload))
	}
	var prevSender string
	var prevSize int64
	err = tx.QueryRowContext(ctx, `SELECT sender_account, LENGTH(body) FROM invitation_welcomes WHERE invitation_id = ? AND device_id = ?`,
		invID, d.ID).Scan(&prevSender, &prevSize)
	switch {
	case err == nil:
		u := replaced[prevSender]
		u.InboxBytes, u.InboxItems = u.InboxBytes+prevSize, u.InboxItems+1
		replaced[prevSender] = u
	case !errors.Is(err, sql.ErrNoRows):
		return 0, err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO invitation_welcomes (invitation_id, device_id, sender_account, sender_device, created_at, body)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (invitation_id, device_id) DO UPDATE SET sender_account = excluded.sender_account,
		sender_device = excluded.sender_device, created_at = excluded.created_at, body = excluded.body`,
		invID, d.ID, c.AccountID, c.DeviceID, nowMS, payload)
	return inboxHold, err
}

// sweepInvitations deletes invitations (and their held Welcomes) whose
// lifetime has passed, answered or not.
func (s *Service) sweepInvitations(ctx context.Context) (int64, error) {
	now := s.now().UnixMilli()
	var n int64
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		n = 0
		if ok, err := s.db.TryJobLock(ctx, tx, "delivery.sweep"); err != nil || !ok {
			return err
		}
		// Held Welcomes of expired invitations leave their senders' quotas.
		freed, err := senderUsage(ctx, tx, `SELECT sender_account, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM invitation_welcomes
			WHERE invitation_id IN (SELECT id FROM invitations WHERE expires_at <= ?) GROUP BY sender_account`, now)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM invitation_welcomes WHERE invitation_id IN
			(SELECT id FROM invitations WHERE expires_at <= ?)`, now); err != nil {
			return err
		}
		if err := s.release(ctx, tx, freed); err != nil {
			return err
		}
		r, err := tx.ExecContext(ctx, `DELETE FROM invitations WHERE expires_at <= ?`, now)
		if err != nil {
			return err
		}
		n, err = r.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delivery: sweep invitations: %w", err)
	}
	s.metrics.expired.WithLabelValues("invitation").Add(float64(n))
	return n, nil
}
