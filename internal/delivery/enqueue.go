package delivery

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// Framing is the cleartext part of a PublicMessage or PrivateMessage the
// server reads.
type Framing struct {
	GroupID     []byte
	Epoch       uint64
	ContentType mls.ContentType
}

// ParseFraming decodes an MLSMessage and returns its cleartext framing.
// Only PublicMessage and PrivateMessage belong on a channel; anything else
// (Welcome, GroupInfo, KeyPackage, garbage) wraps ErrInvalidMessage.
func ParseFraming(raw []byte) (Framing, error) {
	var m mls.MLSMessage
	// Aliased: the framing is all that is kept, so the ciphertext is not copied.
	if err := m.UnmarshalAliased(raw); err != nil {
		return Framing{}, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	switch {
	case m.WireFormat == mls.WireFormatPublicMessage && m.PublicMessage != nil:
		c := &m.PublicMessage.Content
		return Framing{GroupID: c.GroupID, Epoch: c.Epoch, ContentType: c.ContentType}, nil
	case m.WireFormat == mls.WireFormatPrivateMessage && m.PrivateMessage != nil:
		p := m.PrivateMessage
		return Framing{GroupID: p.GroupID, Epoch: p.Epoch, ContentType: p.ContentType}, nil
	default:
		return Framing{}, fmt.Errorf("%w: wire format %d does not belong on a channel (Welcomes go to inboxes, GroupInfo with a commit)", ErrInvalidMessage, m.WireFormat)
	}
}

// parseGroupInfo checks that raw is an MLSMessage(GroupInfo) (or a bare
// GroupInfo) for groupID at epoch.
func parseGroupInfo(raw, groupID []byte, epoch uint64) error {
	var gi *mls.GroupInfo
	var m mls.MLSMessage
	if err := m.Unmarshal(raw); err == nil {
		if m.WireFormat != mls.WireFormatGroupInfo || m.GroupInfo == nil {
			return fmt.Errorf("%w: group_info is an MLSMessage of wire format %d", ErrInvalidMessage, m.WireFormat)
		}
		gi = m.GroupInfo
	} else {
		gi = new(mls.GroupInfo)
		if err := gi.Unmarshal(raw); err != nil {
			return fmt.Errorf("%w: group_info: %w", ErrInvalidMessage, err)
		}
	}
	if !bytes.Equal(gi.GroupContext.GroupID, groupID) {
		return fmt.Errorf("%w: group_info is for another group", ErrInvalidMessage)
	}
	if gi.GroupContext.Epoch != epoch {
		return fmt.Errorf("%w: group_info is for epoch %d, the commit starts epoch %d", ErrInvalidMessage, gi.GroupContext.Epoch, epoch)
	}
	return nil
}

// The enqueue path's statements, prepared once on the writer connection
// (store.DB.WriteStmt).
const (
	// One read: the channel, the caller's membership and an earlier
	// message with this id.
	enqueueSelect = `SELECT c.kind, c.group_id, c.epoch, c.head_seq, c.ttl_ms, ` + isMember + `,
			d.seq, d.epoch, d.sender_device
		FROM channels c LEFT JOIN messages d ON d.channel_id = c.id AND d.message_id = ?
		WHERE c.id = ?`
	enqueueInsert = `INSERT INTO messages
		(channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	enqueueUpdate = `UPDATE channels SET head_seq = ?, epoch = ? WHERE id = ?`
)

// Enqueued is the outcome of Enqueue.
type Enqueued struct {
	Seq       uint64
	Epoch     uint64 // the channel's epoch after the message
	Duplicate bool   // the message id was stored before; nothing was stored now
	Time      time.Time
}

// Enqueue appends an MLS message to a channel's log. The same message id
// from the same device returns the original sequence number. A commit is
// accepted only for the channel's current epoch and advances it; other
// messages are accepted for the current epoch and EpochsBehind earlier
// ones. groupInfo, with a commit, replaces the channel's GroupInfo.
func (s *Service) Enqueue(ctx context.Context, c Caller, id []byte, messageID string, msg, groupInfo []byte) (Enqueued, error) {
	res, kind, err := s.enqueue(ctx, c, id, messageID, msg, groupInfo)
	result := "ok"
	switch {
	case err == nil && res.Duplicate:
		result = "duplicate"
	case err == nil:
	case errors.Is(err, ErrStaleEpoch):
		result = "stale_epoch"
	case errors.Is(err, ErrNotMember), errors.Is(err, ErrNotFound):
		result = "denied"
		s.denied(ctx, c, "enqueue", err)
	case errors.Is(err, ErrInvalidMessage), errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrTooLarge), errors.Is(err, ErrMessageIDConflict),
		errors.Is(err, ErrMessageIDExpired):
		result = "invalid"
	default:
		result = "error"
	}
	label := kindLabel(kind)
	if kind == 0 {
		label = "unknown"
	}
	s.metrics.enqueued.WithLabelValues(label, result).Inc()
	if err != nil {
		return Enqueued{}, fmt.Errorf("delivery: enqueue: %w", err)
	}
	if !res.Duplicate {
		s.metrics.enqueuedBytes.WithLabelValues(label).Add(float64(len(msg)))
		s.hub.publishChannel(id, res.Seq)
	}
	s.audit.Event(ctx, "delivery.enqueue", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("channel_id", hexID(id)), slog.Uint64("seq", res.Seq), slog.Uint64("epoch", res.Epoch),
		slog.Int("size", len(msg)), slog.Int("group_info_size", len(groupInfo)), slog.Bool("duplicate", res.Duplicate))
	return res, nil
}

func (s *Service) enqueue(ctx context.Context, c Caller, id []byte, messageID string, msg, groupInfo []byte) (Enqueued, int, error) {
	if len(id) != ChannelIDSize {
		return Enqueued{}, 0, fmt.Errorf("%w: channel id is %d bytes", ErrInvalidRequest, len(id))
	}
	if messageID == "" || len(messageID) > 64 {
		return Enqueued{}, 0, fmt.Errorf("%w: message id must be 1..64 bytes", ErrInvalidRequest)
	}
	if len(msg)+len(groupInfo) > s.maxPayload {
		return Enqueued{}, 0, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(msg)+len(groupInfo), s.maxPayload)
	}
	f, err := ParseFraming(msg)
	if err != nil {
		return Enqueued{}, 0, err
	}
	isCommit := f.ContentType == mls.ContentTypeCommit
	if len(groupInfo) > 0 && !isCommit {
		return Enqueued{}, 0, fmt.Errorf("%w: group_info only comes with a commit", ErrInvalidRequest)
	}
	if isCommit && len(groupInfo) > 0 {
		if err := parseGroupInfo(groupInfo, f.GroupID, f.Epoch+1); err != nil {
			return Enqueued{}, 0, err
		}
	}
	now := s.now()
	nowMS := now.UnixMilli()
	idMS, timedID := messageIDTime(messageID)
	var res Enqueued
	var kind int
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res, kind = Enqueued{Time: now}, 0
		var (
			groupID            []byte
			epoch, head, ttlMS int64
			member             bool
			dupSeq, dupEpoch   sql.NullInt64
			dupDevice          sql.NullString
		)
		sel, err := s.db.WriteStmt(ctx, tx, enqueueSelect)
		if err != nil {
			return err
		}
		err = sel.QueryRowContext(ctx, c.AccountID, c.DeviceID, messageID, id).Scan(&kind, &groupID, &epoch, &head, &ttlMS, &member, &dupSeq, &dupEpoch, &dupDevice)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotMember
		case err != nil:
			return err
		case !member:
			return ErrNotMember
		}
		if dupSeq.Valid {
			if dupDevice.String != c.DeviceID {
				return ErrMessageIDConflict
			}
			res.Seq, res.Epoch, res.Duplicate = uint64(dupSeq.Int64), uint64(epoch), true
			return nil
		}
		if !bytes.Equal(f.GroupID, groupID) {
			return fmt.Errorf("%w: the message is for another group than the channel's", ErrInvalidMessage)
		}
		cur := uint64(epoch)
		newEpoch := cur
		switch {
		case isCommit && f.Epoch != cur:
			return fmt.Errorf("%w: commit for epoch %d, the channel is at epoch %d", ErrStaleEpoch, f.Epoch, cur)
		case isCommit:
			newEpoch = cur + 1
		case f.Epoch > cur || f.Epoch+s.behind < cur:
			return fmt.Errorf("%w: message for epoch %d, the channel accepts %d..%d", ErrStaleEpoch, f.Epoch, cur-min(cur, s.behind), cur)
		}
		seq := head + 1
		life := s.retention.Milliseconds()
		if ttlMS > 0 {
			life = min(life, ttlMS)
		}
		if timedID && idMS < nowMS-life+min(idClockSkew.Milliseconds(), life/2) {
			return fmt.Errorf("%w: the id was made %s, the channel keeps messages for %s; send the message under a new id",
				ErrMessageIDExpired, time.UnixMilli(idMS).UTC().Format(time.RFC3339), time.Duration(life)*time.Millisecond)
		}
		ins, err := s.db.WriteStmt(ctx, tx, enqueueInsert)
		if err != nil {
			return err
		}
		if _, err := ins.ExecContext(ctx, id, seq, messageID, c.AccountID, c.DeviceID, int64(f.Epoch), int(f.ContentType), nowMS, nowMS+life, msg); err != nil {
			return err
		}
		up, err := s.db.WriteStmt(ctx, tx, enqueueUpdate)
		if err != nil {
			return err
		}
		if _, err := up.ExecContext(ctx, seq, int64(newEpoch), id); err != nil {
			return err
		}
		if isCommit && len(groupInfo) > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO channel_group_info (channel_id, epoch, group_info) VALUES (?, ?, ?)
				ON CONFLICT (channel_id) DO UPDATE SET epoch = excluded.epoch, group_info = excluded.group_info`,
				id, int64(newEpoch), groupInfo); err != nil {
				return err
			}
		}
		res.Seq, res.Epoch = uint64(seq), newEpoch
		return nil
	})
	return res, kind, err
}

// idClockSkew bounds how far ahead of the server a sender's clock may run
// and its replayed ids still be caught after their original expired. The
// margin is at most half the channel's message lifetime, so on a DM with a
// short TTL a sender's clock may lag by the other half and its fresh ids
// are still accepted; with the default week, a lag of six days and 23 hours.
const idClockSkew = time.Hour

// messageIDTime returns the creation time (Unix ms) a UUIDv7 message id
// carries. Idempotency is checked against the stored messages, which the
// retention sweep deletes; the id's own time closes the gap after that: a
// v7 id older than the channel's message lifetime is refused. Ids of other
// forms are deduplicated only while their original is stored.
func messageIDTime(id string) (int64, bool) {
	u, err := uuid.Parse(id)
	if err != nil || u.Version() != 7 {
		return 0, false
	}
	sec, nsec := u.Time().UnixTime()
	return sec*1000 + nsec/1e6, true
}

// InboxRecipient names one device of an account.
type InboxRecipient struct {
	AccountName string
	DeviceID    string
}

// SendToInbox stores a payload in each recipient device's inbox. The caller
// must be a member of channelID, and each recipient account (or device) a
// member too: Welcomes are sent after the commit that adds the recipient
// was accepted and the recipient was added to the channel.
func (s *Service) SendToInbox(ctx context.Context, c Caller, channelID []byte, kind int, payload []byte, to []InboxRecipient) (int, error) {
	if kind != InboxWelcome && kind != InboxOther {
		return 0, fmt.Errorf("%w: inbox kind %d", ErrInvalidRequest, kind)
	}
	if len(payload) == 0 {
		return 0, fmt.Errorf("%w: empty payload", ErrInvalidRequest)
	}
	if len(payload)*max(len(to), 1) > s.maxPayload*4 || len(payload) > s.maxPayload {
		return 0, fmt.Errorf("%w: %d bytes to %d devices", ErrTooLarge, len(payload), len(to))
	}
	if kind == InboxWelcome {
		var m mls.MLSMessage
		if err := m.Unmarshal(payload); err != nil || m.WireFormat != mls.WireFormatWelcome {
			return 0, fmt.Errorf("%w: a WELCOME payload must be an MLSMessage(Welcome)", ErrInvalidMessage)
		}
	}
	devs := make([]Device, 0, len(to))
	seen := map[string]bool{}
	for _, r := range to {
		a, err := s.account(ctx, r.AccountName)
		if err != nil {
			return 0, err
		}
		d, err := s.dir.Device(ctx, r.DeviceID)
		if err != nil {
			return 0, err
		}
		if d.AccountID != a.ID || !d.Active {
			return 0, fmt.Errorf("%w: %q has no active device %q", ErrUnknownAccount, r.AccountName, r.DeviceID)
		}
		if !seen[d.ID] {
			seen[d.ID] = true
			devs = append(devs, d)
		}
	}
	now := s.now().UnixMilli()
	exp := now + s.retention.Milliseconds()
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, _, err := loadForMember(ctx, tx, c, channelID); err != nil {
			return err
		}
		for _, d := range devs {
			var ok bool
			if err := tx.QueryRowContext(ctx, `SELECT `+isMember+` FROM channels c WHERE c.id = ?`, d.AccountID, d.ID, channelID).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: recipient device %s is not a member of the channel; add it first", ErrNotMember, d.ID)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO inbox_heads (device_id, head_seq) VALUES (?, 1)
				ON CONFLICT (device_id) DO UPDATE SET head_seq = head_seq + 1`, d.ID); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO inbox
				(device_id, seq, kind, channel_id, sender_account, sender_device, created_at, expires_at, body)
				VALUES (?, (SELECT head_seq FROM inbox_heads WHERE device_id = ?), ?, ?, ?, ?, ?, ?, ?)`,
				d.ID, d.ID, kind, channelID, c.AccountID, c.DeviceID, now, exp, payload); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.denied(ctx, c, "send_to_inbox", err)
		return 0, fmt.Errorf("delivery: send to inbox: %w", err)
	}
	kl := "other"
	if kind == InboxWelcome {
		kl = "welcome"
	}
	for _, d := range devs {
		s.hub.publish(deviceKey(d.ID))
	}
	s.metrics.inboxItems.WithLabelValues(kl).Add(float64(len(devs)))
	s.metrics.enqueuedBytes.WithLabelValues("inbox").Add(float64(len(payload) * len(devs)))
	s.audit.Event(ctx, "delivery.inbox_send", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
		slog.String("channel_id", hexID(channelID)), slog.String("kind", kl), slog.Int("recipients", len(devs)), slog.Int("size", len(payload)))
	return len(devs), nil
}

func hexID(b []byte) string { return hex.EncodeToString(b) }

// denied counts and audits authorisation failures by operation.
func (s *Service) denied(ctx context.Context, c Caller, op string, err error) {
	if errors.Is(err, ErrNotMember) {
		s.metrics.denied.WithLabelValues(op).Inc()
		s.audit.Event(ctx, "delivery.denied", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("operation", op))
	}
}
