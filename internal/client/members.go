package client

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Membership by consent (docs/client.md, "Invitations and blocks"): adding
// someone to a group or opening a DM with them makes an invitation they
// accept or decline; until then they read nothing. The server announces
// every membership change as an event in the channel's log; recv, watch
// and history show them beside the messages.

// Event is a membership change the server announced.
type Event struct {
	Type          string `json:"type"` // invited, joined, declined, left, removed, invitation_cancelled
	Actor         string `json:"actor"`
	Subject       string `json:"subject"`
	SubjectDevice string `json:"subject_device,omitempty"`
	Invitation    string `json:"invitation_id,omitempty"`
}

func eventType(t qpcv1.MembershipEventType) string {
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
		return "invitation_cancelled"
	}
	return "unknown"
}

func parseEvent(s string) *Event {
	if s == "" {
		return nil
	}
	var e Event
	if json.Unmarshal([]byte(s), &e) != nil {
		return nil
	}
	return &e
}

func eventOf(ev *qpcv1.MembershipEvent) Event {
	return Event{Type: eventType(ev.GetType()), Actor: ev.GetActorAccountName(), Subject: ev.GetSubjectAccountName(),
		SubjectDevice: ev.GetSubjectDeviceId(), Invitation: ev.GetInvitation().GetInvitationId()}
}

// Text is the event in words.
func (e Event) Text() string {
	subject := e.Subject
	if e.SubjectDevice != "" {
		subject += " (device " + e.SubjectDevice + ")"
	}
	switch e.Type {
	case "invited":
		return fmt.Sprintf("%s invited %s", e.Actor, subject)
	case "joined":
		return fmt.Sprintf("%s joined", subject)
	case "declined":
		return fmt.Sprintf("%s declined the invitation", subject)
	case "left":
		return fmt.Sprintf("%s left", subject)
	case "removed":
		return fmt.Sprintf("%s removed %s", e.Actor, subject)
	case "invitation_cancelled":
		return fmt.Sprintf("%s withdrew the invitation of %s", e.Actor, subject)
	}
	return fmt.Sprintf("membership change by %s about %s", e.Actor, subject)
}

// Invitation is a pending invitation to this account.
type Invitation struct {
	ID          string `json:"id"`
	ChannelID   string `json:"channel_id"`
	Kind        string `json:"kind"` // group or dm
	Inviter     string `json:"inviter"`
	Members     int    `json:"members"`
	CreatedMs   int64  `json:"created_unix_ms"`
	ExpiresMs   int64  `json:"expires_unix_ms"`
	WelcomeHeld bool   `json:"welcome_held"`
}

func invitationOf(in *qpcv1.Invitation) Invitation {
	kind := kindGroup
	if in.GetChannelType() == qpcv1.ChannelType_CHANNEL_TYPE_DM {
		kind = kindDM
	}
	return Invitation{ID: in.GetInvitationId(), ChannelID: hex.EncodeToString(in.GetChannelId()), Kind: kind,
		Inviter: in.GetInviterAccountName(), Members: int(in.GetMemberCount()), CreatedMs: in.GetCreatedUnixMs(),
		ExpiresMs: in.GetExpiresUnixMs(), WelcomeHeld: in.GetWelcomesHeld() > 0}
}

// Invitations lists this account's pending invitations (the server's list).
func (c *Client) Invitations(ctx context.Context) ([]Invitation, error) {
	var resp qpcv1.ListInvitationsResponse
	if err := c.call(ctx, "ListInvitations", &qpcv1.ListInvitationsRequest{}, &resp); err != nil {
		return nil, fmt.Errorf("client: list invitations: %w", err)
	}
	out := make([]Invitation, 0, len(resp.GetInvitations()))
	for _, in := range resp.GetInvitations() {
		out = append(out, invitationOf(in))
	}
	return out, nil
}

// NewInvitations returns the invitations announced since the last call
// (recv and watch print them) and marks them shown.
func (c *Client) NewInvitations(ctx context.Context) ([]Invitation, error) {
	var out []Invitation
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT id, channel_id, channel_type, inviter, created_ms, expires_ms FROM invitations WHERE shown = 0 ORDER BY created_ms, id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var in Invitation
			var ch []byte
			if err := rows.Scan(&in.ID, &ch, &in.Kind, &in.Inviter, &in.CreatedMs, &in.ExpiresMs); err != nil {
				rows.Close()
				return err
			}
			in.ChannelID = hex.EncodeToString(ch)
			out = append(out, in)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE invitations SET shown = 1 WHERE shown = 0`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: read invitations: %w", err)
	}
	return out, nil
}

// AcceptInvitation accepts an invitation: the account becomes a member,
// the Welcomes held for it arrive, and the group is joined. It returns the
// group's local name ("" when the Welcome has not arrived yet: the adder
// has not sent it; the next recv joins).
func (c *Client) AcceptInvitation(ctx context.Context, id string) (string, error) {
	var resp qpcv1.AcceptInvitationResponse
	if err := c.call(ctx, "AcceptInvitation", &qpcv1.AcceptInvitationRequest{InvitationId: id}, &resp); err != nil {
		return "", fmt.Errorf("client: accept invitation: %w", explainInvitation(err))
	}
	if err := c.forgetInvitation(ctx, id); err != nil {
		return "", err
	}
	if _, err := c.Sync(ctx, 0); err != nil {
		return "", err
	}
	var name string
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, _, err := loadGroupRow(ctx, tx, "channel_id = ?", resp.GetChannel().GetChannelId())
		if r != nil && r.status == statusActive {
			name = r.name
		}
		return err
	})
	return name, err
}

// DeclineInvitation declines an invitation; the group sees it and drops
// this account's leaves from the MLS group.
func (c *Client) DeclineInvitation(ctx context.Context, id string) error {
	if err := c.call(ctx, "DeclineInvitation", &qpcv1.DeclineInvitationRequest{InvitationId: id}, &qpcv1.DeclineInvitationResponse{}); err != nil {
		return fmt.Errorf("client: decline invitation: %w", explainInvitation(err))
	}
	return c.forgetInvitation(ctx, id)
}

func explainInvitation(err error) error {
	var se *wire.StatusError
	// Servers since the invitations release name the command themselves.
	if errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND && !strings.Contains(se.Message, "qpc invitations") {
		return fmt.Errorf("%w (see qpc invitations for the pending ones)", err)
	}
	return err
}

func (c *Client) forgetInvitation(ctx context.Context, id string) error {
	return c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM invitations WHERE id = ?`, id)
		return err
	})
}

// Block refuses invitations, DMs and inbox items from an account (its
// pending invitations are declined) and returns how many it declined.
// Channels already shared are left as they are.
func (c *Client) Block(ctx context.Context, account string) (int, error) {
	var resp qpcv1.BlockAccountResponse
	if err := c.call(ctx, "BlockAccount", &qpcv1.BlockAccountRequest{AccountName: account}, &resp); err != nil {
		return 0, fmt.Errorf("client: block %s: %w", account, explainLookup(err, account))
	}
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM invitations WHERE inviter = ?`, account)
		return err
	})
	return int(resp.GetInvitationsDeclined()), err
}

// Unblock lifts a block.
func (c *Client) Unblock(ctx context.Context, account string) error {
	if err := c.call(ctx, "UnblockAccount", &qpcv1.UnblockAccountRequest{AccountName: account}, &qpcv1.UnblockAccountResponse{}); err != nil {
		return fmt.Errorf("client: unblock %s: %w", account, explainLookup(err, account))
	}
	return nil
}

// BlockedAccount is one entry of the block list.
type BlockedAccount struct {
	Account string `json:"account"`
	SinceMs int64  `json:"since_unix_ms"`
}

// Blocked lists the accounts this account blocks.
func (c *Client) Blocked(ctx context.Context) ([]BlockedAccount, error) {
	var resp qpcv1.ListBlockedResponse
	if err := c.call(ctx, "ListBlocked", &qpcv1.ListBlockedRequest{}, &resp); err != nil {
		return nil, fmt.Errorf("client: list blocked: %w", err)
	}
	out := make([]BlockedAccount, 0, len(resp.GetBlocked()))
	for _, b := range resp.GetBlocked() {
		out = append(out, BlockedAccount{Account: b.GetAccountName(), SinceMs: b.GetSinceUnixMs()})
	}
	return out, nil
}

// storeEvent writes an announced event into the history of its channel
// (which has a group row).
func storeEvent(ctx context.Context, tx *sql.Tx, channelID []byte, messageID string, seq int64, ev *qpcv1.MembershipEvent, serverMs int64) error {
	e := eventOf(ev)
	js, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO messages (channel_id, message_id, seq, sender, display, text, sent_ms, server_ms, event)
		VALUES (?, ?, ?, '', 'qpcd', ?, ?, ?, ?) ON CONFLICT DO NOTHING`, channelID, messageID, seq, e.Text(), ev.GetTimeUnixMs(), serverMs, string(js))
	return err
}

// processEvent applies a membership event read from a channel's log
// (inside processOne's transaction): it joins the history, and a decline
// makes the member with the lowest other leaf drop the invitee's leaves
// (drop returns that account).
func (c *Client) processEvent(ctx context.Context, tx *sql.Tx, me *Identity, r *groupRow, state []byte, in inboundMsg) (drop string, err error) {
	var ev qpcv1.MembershipEvent
	if err := proto.Unmarshal(in.raw, &ev); err != nil {
		c.log.Info("client: server event not understood", "group", r.name, "seq", in.seq, "err", err)
		return "", nil
	}
	if err := storeEvent(ctx, tx, r.channelID, in.messageID, in.seq, &ev, in.serverMs); err != nil {
		return "", err
	}
	subjectIsMe := ev.GetSubjectAccountName() == me.AccountName && (ev.GetSubjectDeviceId() == "" || ev.GetSubjectDeviceId() == me.DeviceID)
	switch ev.GetType() {
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_LEFT, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED:
		if subjectIsMe {
			_, err := tx.ExecContext(ctx, `UPDATE groups SET status = ?, state = NULL, updated_ms = ? WHERE channel_id = ? AND status = ?`,
				statusRemoved, c.now().UnixMilli(), r.channelID, statusActive)
			return "", err
		}
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_DECLINED:
		if r.status != statusActive || state == nil || subjectIsMe {
			return "", nil
		}
		g, err := mls.ImportGroup(mlsConfig, state)
		if err != nil {
			return "", fmt.Errorf("client: group state of %s: %w", r.name, err)
		}
		account := ev.GetSubjectAccountName()
		lowest, theirs := ^uint32(0), false
		for _, m := range g.Members() {
			if strings.HasPrefix(string(m.Identity), account+"/") {
				theirs = true
			} else if m.Leaf < lowest {
				lowest = m.Leaf
			}
		}
		if theirs && lowest == g.OwnLeaf() {
			return account, nil
		}
	}
	return "", nil
}

// processInboxEvent applies a membership event from the inbox (an
// invitation, or this account's removal from a channel it can no longer
// read).
func (c *Client) processInboxEvent(ctx context.Context, tx *sql.Tx, me *Identity, it inboxItem) error {
	var ev qpcv1.MembershipEvent
	if err := proto.Unmarshal(it.payload, &ev); err != nil {
		c.log.Info("client: membership notice not understood", "err", err)
		return nil
	}
	switch ev.GetType() {
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITED:
		in := ev.GetInvitation()
		if in == nil || in.GetInvitationId() == "" {
			return nil
		}
		kind := kindGroup
		if in.GetChannelType() == qpcv1.ChannelType_CHANNEL_TYPE_DM {
			kind = kindDM
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO invitations (id, channel_id, channel_type, inviter, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, in.GetInvitationId(), in.GetChannelId(), kind, in.GetInviterAccountName(), in.GetCreatedUnixMs(), in.GetExpiresUnixMs())
		return err
	case qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_LEFT, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED:
		if ev.GetSubjectDeviceId() != "" && ev.GetSubjectDeviceId() != me.DeviceID {
			return nil
		}
		r, _, err := loadGroupRow(ctx, tx, "channel_id = ?", ev.GetChannelId())
		if err != nil || r == nil {
			return err
		}
		if err := storeEvent(ctx, tx, r.channelID, fmt.Sprintf("inbox-%d", it.seq), 0, &ev, ev.GetTimeUnixMs()); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE groups SET status = ?, state = NULL, updated_ms = ? WHERE channel_id = ? AND status = ?`,
			statusRemoved, c.now().UnixMilli(), r.channelID, statusActive)
		return err
	}
	return nil
}

// olderServer reports whether err says the server does not know the
// method: a qpcd older than invitations (it joins members at once, so it
// has no invitations to list).
func olderServer(err error) bool {
	var se *wire.StatusError
	return errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND && strings.Contains(se.Message, "unknown method")
}

// pendingDMInvitation finds a pending invitation from peer to a DM ("" on
// a server older than invitations).
func (c *Client) pendingDMInvitation(ctx context.Context, peer string) (string, error) {
	invs, err := c.Invitations(ctx)
	if olderServer(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, in := range invs {
		if in.Kind == kindDM && in.Inviter == peer {
			return in.ID, nil
		}
	}
	return "", nil
}
