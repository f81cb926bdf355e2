package delivery

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
)

// InboxAccountEvent is the inbox kind of notices the server writes about a
// device's own account (a device added or revoked). Only the server writes
// it: SendToInbox refuses the kind.
const InboxAccountEvent = 3

// accountEventChannel fills the inbox row's channel id: an account event
// belongs to no channel.
var accountEventChannel = make([]byte, 16)

// RecordAccountEventTx puts body into the inbox of each of devices inside
// tx, the caller's transaction (the one that makes the change the event
// tells about), so the change and its notice commit together. The items
// live for the retention period like any inbox item. Call WakeDevices after
// the transaction commits.
func (s *Service) RecordAccountEventTx(ctx context.Context, tx *sql.Tx, accountID, byDevice string, devices []string, body []byte) error {
	if len(body) == 0 || len(body) > s.maxPayload {
		return fmt.Errorf("%w: account event of %d bytes", ErrInvalidRequest, len(body))
	}
	now := s.now().UnixMilli()
	exp := now + s.retention.Milliseconds()
	for _, d := range devices {
		if _, err := tx.ExecContext(ctx, `INSERT INTO inbox_heads (device_id, head_seq) VALUES (?, 1)
			ON CONFLICT (device_id) DO UPDATE SET head_seq = inbox_heads.head_seq + 1`, d); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO inbox
			(device_id, seq, kind, channel_id, sender_account, sender_device, created_at, expires_at, body)
			VALUES (?, (SELECT head_seq FROM inbox_heads WHERE device_id = ?), ?, ?, ?, ?, ?, ?, ?)`,
			d, d, InboxAccountEvent, accountEventChannel, accountID, byDevice, now, exp, body); err != nil {
			return err
		}
	}
	return nil
}

// WakeDevices wakes the long polls of devices (on every node) after
// RecordAccountEventTx's transaction committed.
func (s *Service) WakeDevices(ctx context.Context, accountID string, devices []string) {
	for _, d := range devices {
		s.hub.publish(deviceKey(d))
	}
	s.metrics.inboxItems.WithLabelValues("account_event").Add(float64(len(devices)))
	s.audit.Event(ctx, "delivery.account_event", slog.String("account_id", accountID), slog.Int("recipients", len(devices)))
}
