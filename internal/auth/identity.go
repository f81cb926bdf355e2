package auth

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
)

// Account identity keys, device certificates and device links (issue 19;
// docs/protocol.md, "Account identity and device certificates"). The
// server stores what clients sign and checks it, but clients never rely on
// that check: they verify certificates against the identity key they pinned.

var (
	// ErrInvalidCertificate: a device certificate that does not parse,
	// verify under the account's identity key or bind this device (INVALID_ARGUMENT).
	ErrInvalidCertificate = errors.New("auth: invalid device certificate")
	// ErrNoIdentityKey: the account was registered without an identity key,
	// so its devices cannot be certified (INVALID_ARGUMENT).
	ErrNoIdentityKey = errors.New("auth: the account has no identity key")
	// ErrTooManyLinkRequests: the account has as many pending link
	// requests as allowed (RESOURCE_EXHAUSTED).
	ErrTooManyLinkRequests = errors.New("auth: too many pending device link requests for this account; approve or wait for them to expire")
)

// LinkRequestTTL is how long a link request waits for approval.
const LinkRequestTTL = 10 * time.Minute

// maxLinkRequests bounds the pending link requests of one account; a new
// one beyond it is refused (never evicting: that would let anyone push a
// real request out).
const maxLinkRequests = 8

func checkIdentityKey(key, deviceKey []byte) error {
	if len(key) == 0 {
		return nil
	}
	if err := checkKey(key); err != nil {
		return fmt.Errorf("%w (identity key)", err)
	}
	if bytes.Equal(key, deviceKey) {
		return fmt.Errorf("%w: the identity key must differ from the device key", ErrInvalidKey)
	}
	return nil
}

// nullBytes stores an absent key as NULL.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// CertifyDevice stores the certificate of a device of the actor's account.
// The certificate must verify under the account's identity key and bind
// the account's name, the device's id and its registered key. Any active
// device of the account may store it: the identity key's signature, not
// the token, is what authorises it.
func (s *Service) CertifyDevice(ctx context.Context, a Actor, deviceID string, raw []byte) error {
	if !ValidID(deviceID) {
		return fmt.Errorf("%w: device id", ErrInvalidID)
	}
	cert, err := identity.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidCertificate, err)
	}
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		dev, err := scanDevice(tx.QueryRowContext(ctx, "SELECT "+deviceCols+
			" FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = ?", deviceID))
		if errors.Is(err, sql.ErrNoRows) || err == nil && (dev.AccountID != a.AccountID || !dev.Active()) {
			return fmt.Errorf("%w: no active device %s in your account", ErrNotFound, deviceID)
		}
		if err != nil {
			return err
		}
		if len(dev.IdentityKey) == 0 {
			return fmt.Errorf("%w: it was registered before identity keys; its devices stay uncertified", ErrNoIdentityKey)
		}
		ik, err := identity.ParsePublicKey(dev.IdentityKey)
		if err != nil {
			return err
		}
		if err := cert.Verify(identity.Expect{AccountName: dev.AccountName, DeviceID: dev.ID, DeviceKey: dev.SignatureKey, IdentityKey: &ik}); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidCertificate, err)
		}
		if _, err = tx.ExecContext(ctx, "UPDATE devices SET certificate = ? WHERE id = ?", raw, deviceID); err != nil {
			return err
		}
		if s.keyLog == nil {
			return nil
		}
		return s.keyLog.AppendTx(ctx, tx, keylog.CertificateEntry(dev.AccountName, raw, s.now()), deviceID)
	})
	if err != nil {
		s.event(ctx, "device.certify_refused", slog.String("account_id", a.AccountID), slog.String("device_id", a.DeviceID),
			slog.String("target_device_id", deviceID))
		return wrapStore("certify device", err)
	}
	s.event(ctx, "device.certify", slog.String("account_id", a.AccountID), slog.String("device_id", deviceID),
		slog.String("by", a.DeviceID))
	return nil
}

// LinkStatus answers a link request: the device id once the key was added.
type LinkStatus struct {
	AccountID string
	DeviceID  string // "" while pending
	Expires   time.Time
}

// RequestLink records (or refreshes) a new device's request to join the
// named account, or answers that the key was added. Anyone may ask (the
// new device has no account yet); an existing device decides.
func (s *Service) RequestLink(ctx context.Context, accountName string, key []byte, deviceName string) (LinkStatus, error) {
	if err := checkKey(key); err != nil {
		return LinkStatus{}, err
	}
	if err := checkDeviceName(deviceName); err != nil {
		return LinkStatus{}, err
	}
	if !ValidAccountName(accountName) {
		return LinkStatus{}, fmt.Errorf("%w: account %q", ErrNotFound, accountName)
	}
	now := s.now()
	var st LinkStatus
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		acc, err := scanAccount(tx.QueryRowContext(ctx, "SELECT "+accountCols+" FROM accounts WHERE name = ?", accountName))
		if errors.Is(err, sql.ErrNoRows) || err == nil && acc.Status != statusActive {
			return fmt.Errorf("%w: account %q", ErrNotFound, accountName)
		}
		if err != nil {
			return err
		}
		st.AccountID = acc.ID
		var devAccount, devStatus string
		err = tx.QueryRowContext(ctx, "SELECT id, account_id, status FROM devices WHERE signature_key = ?", key).Scan(&st.DeviceID, &devAccount, &devStatus)
		switch {
		case err == nil && devAccount == acc.ID && devStatus == statusActive:
			return nil // approved
		case err == nil:
			st.DeviceID = ""
			return ErrKeyInUse
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM link_requests WHERE expires_at <= ?", ms(now)); err != nil {
			return err
		}
		var pending int
		var mine int
		if err := tx.QueryRowContext(ctx, "SELECT count(*), COALESCE(SUM(CASE WHEN signature_key = ? THEN 1 ELSE 0 END), 0) FROM link_requests WHERE account_id = ?",
			key, acc.ID).Scan(&pending, &mine); err != nil {
			return err
		}
		if mine == 0 && pending >= maxLinkRequests {
			return ErrTooManyLinkRequests
		}
		st.Expires = now.Add(LinkRequestTTL)
		_, err = tx.ExecContext(ctx, `INSERT INTO link_requests (signature_key, account_id, device_name, created_at, expires_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (signature_key) DO UPDATE SET account_id = excluded.account_id, device_name = excluded.device_name, expires_at = excluded.expires_at`,
			key, acc.ID, deviceName, ms(now), ms(st.Expires))
		return err
	})
	if err != nil {
		return LinkStatus{}, wrapStore("link request", err)
	}
	if st.DeviceID == "" {
		s.event(ctx, "device.link_request", slog.String("account_id", st.AccountID))
	}
	return st, nil
}

// LinkRequest is a pending request to join an account.
type LinkRequest struct {
	SignatureKey []byte
	DeviceName   string
	Created      time.Time
}

// ListLinkRequests returns the unexpired link requests of an account.
func (s *Service) ListLinkRequests(ctx context.Context, accountID string) ([]LinkRequest, error) {
	var out []LinkRequest
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "SELECT signature_key, device_name, created_at FROM link_requests WHERE account_id = ? AND expires_at > ? ORDER BY created_at",
			accountID, ms(s.now()))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r LinkRequest
			var created int64
			if err := rows.Scan(&r.SignatureKey, &r.DeviceName, &created); err != nil {
				return err
			}
			r.Created = fromMS(created)
			out = append(out, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, wrapStore("list link requests", err)
	}
	return out, nil
}
