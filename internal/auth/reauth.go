package auth

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Re-authentication: a bearer token alone does not change an account's
// devices. AddDevice and RevokeDevice need a fresh signature by the calling
// device's key over a challenge bound to the change (its purpose and
// parameter), so a stolen access token cannot add the thief's device or
// revoke the owner's.

var (
	// ErrReauthRequired: the account change came without a re-authentication
	// (an old client) (PERMISSION_DENIED).
	ErrReauthRequired = errors.New("auth: re-authentication required: this change needs a ReauthChallenge signed with this device's key (update the client)")
	// ErrReauthFailed: the re-authentication did not check out
	// (PERMISSION_DENIED).
	ErrReauthFailed = errors.New("auth: re-authentication failed: unknown, used, expired or mismatched challenge, or bad signature; ask for a new challenge")
)

// Actor is the authenticated device asking for an account change.
type Actor struct {
	AccountID string
	DeviceID  string
}

// Reauth is a device's proof for one account change.
type Reauth struct {
	Challenge []byte
	Signature []byte
}

var reauthContext = []byte("qpc-reauth-v1\x00")

// ReauthBinding binds a re-authentication to the change's parameter: the
// new device's signature key (add-device) or the target device id's ASCII
// characters (revoke-device). It is SHA-256 of the parameter.
func ReauthBinding(param []byte) [32]byte { return reauthBinding(param) }

// ReauthMessage is what the calling device signs:
// "qpc-reauth-v1" || 0x00 || purpose name || 0x00 || account id (32 ASCII)
// || device id (32 ASCII) || binding (32) || challenge (32).
func ReauthMessage(p Purpose, accountID, deviceID string, binding [32]byte, challenge []byte) []byte {
	name := p.String()
	m := make([]byte, 0, len(reauthContext)+len(name)+1+len(accountID)+len(deviceID)+32+len(challenge))
	m = append(m, reauthContext...)
	m = append(m, name...)
	m = append(m, 0)
	m = append(m, accountID...)
	m = append(m, deviceID...)
	m = append(m, binding[:]...)
	return append(m, challenge...)
}

// checkReauthParam validates the parameter of a change.
func checkReauthParam(p Purpose, param []byte) error {
	switch p {
	case PurposeAddDevice, PurposeResetIdentity:
		return checkKey(param)
	case PurposeRevokeDevice:
		if !ValidID(string(param)) {
			return fmt.Errorf("%w: target device id", ErrInvalidID)
		}
		return nil
	}
	return fmt.Errorf("%w: re-authentication purpose %d", ErrInvalidID, byte(p))
}

func (a Actor) binding(p Purpose, param []byte) challengeBinding {
	return challengeBinding{purpose: p, deviceID: a.DeviceID, accountID: a.AccountID, binding: reauthBinding(param)}
}

// ReauthChallenge returns a challenge for one change by the actor: purpose
// add-device with the new device's key, or revoke-device with the target
// device id. Like login challenges it is stateless.
func (s *Service) ReauthChallenge(ctx context.Context, a Actor, p Purpose, param []byte) ([]byte, time.Time, error) {
	if err := checkReauthParam(p, param); err != nil {
		return nil, time.Time{}, err
	}
	if !ValidID(a.AccountID) || !ValidID(a.DeviceID) {
		return nil, time.Time{}, fmt.Errorf("%w: caller", ErrInvalidID)
	}
	return s.newChallenge(a.binding(p, param), s.now())
}

// checkReauth verifies the stateless part of a proof (tag, expiry, binding).
func (s *Service) checkReauth(ctx context.Context, a Actor, p Purpose, param []byte, r Reauth, now time.Time) (int64, error) {
	if len(r.Challenge) == 0 && len(r.Signature) == 0 {
		return 0, ErrReauthRequired
	}
	if len(r.Challenge) != ChallengeSize || len(r.Signature) != ed25519.SignatureSize {
		return 0, fmt.Errorf("%w (malformed)", ErrReauthFailed)
	}
	exp, ok := s.checkChallenge(ctx, r.Challenge, a.binding(p, param), now)
	if !ok {
		return 0, ErrReauthFailed
	}
	return exp, nil
}

// proveReauth, inside the change's transaction, checks that the actor is an
// active device of its active account, that its key signed the proof, and
// uses the challenge up.
func proveReauth(ctx context.Context, tx *sql.Tx, a Actor, p Purpose, param []byte, r Reauth, expires int64, now time.Time) error {
	dev, err := scanDevice(tx.QueryRowContext(ctx, "SELECT "+deviceCols+
		" FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = ?", a.DeviceID))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrReauthFailed
	case err != nil:
		return err
	case dev.AccountID != a.AccountID || dev.Status != statusActive:
		return ErrReauthFailed
	case dev.AccountStatus != statusActive:
		return ErrAccountDisabled
	}
	if !ed25519.Verify(dev.SignatureKey, ReauthMessage(p, a.AccountID, a.DeviceID, reauthBinding(param), r.Challenge), r.Signature) {
		return ErrReauthFailed
	}
	fresh, err := consumeChallenge(ctx, tx, r.Challenge, expires, now)
	if err != nil {
		return err
	}
	if !fresh {
		return fmt.Errorf("%w (challenge already used)", ErrReauthFailed)
	}
	return nil
}

// Device event kinds.
const (
	DeviceAdded   = "device_added"
	DeviceRevoked = "device_revoked"
)

// DeviceEvent tells an account's other devices that one of its devices was
// added or revoked.
type DeviceEvent struct {
	Kind         string // DeviceAdded or DeviceRevoked
	AccountID    string
	DeviceID     string // the device added or revoked
	DeviceName   string
	SignatureKey []byte
	By           string // the device that made the change; "" for the operator
	At           time.Time
	// Notify is the account's other active devices (not the actor, not the
	// device added or revoked).
	Notify []string
}

// EventSink stores device events where the account's devices read them
// (the delivery service's device inboxes).
type EventSink interface {
	// RecordDeviceEvent stores ev inside tx, the transaction that makes the
	// change, so a change is never made without its notice.
	RecordDeviceEvent(ctx context.Context, tx *sql.Tx, ev DeviceEvent) error
	// DeviceEventCommitted runs after the transaction committed (wake-ups).
	DeviceEventCommitted(ev DeviceEvent)
}

// recordDeviceEvent fills ev.Notify from the account's active devices and
// hands it to the sink, inside tx.
func (s *Service) recordDeviceEvent(ctx context.Context, tx *sql.Tx, ev *DeviceEvent) error {
	if s.events == nil {
		return nil
	}
	rows, err := tx.QueryContext(ctx, "SELECT id FROM devices WHERE account_id = ? AND status = 'active' ORDER BY id", ev.AccountID)
	if err != nil {
		return err
	}
	defer rows.Close()
	ev.Notify = ev.Notify[:0]
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		if id != ev.DeviceID && id != ev.By {
			ev.Notify = append(ev.Notify, id)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(ev.Notify) == 0 {
		return nil
	}
	return s.events.RecordDeviceEvent(ctx, tx, *ev)
}

func (s *Service) deviceEventCommitted(ev DeviceEvent) {
	if s.events != nil && len(ev.Notify) > 0 {
		s.events.DeviceEventCommitted(ev)
	}
}
