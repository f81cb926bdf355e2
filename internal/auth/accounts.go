package auth

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/safetext"
)

// Account and device statuses as stored.
const (
	statusActive   = "active"
	statusDisabled = "disabled"
	statusRevoked  = "revoked"
)

// Status values exposed to callers.
const (
	StatusActive   = statusActive
	StatusDisabled = statusDisabled
	StatusRevoked  = statusRevoked
)

// MaxDeviceNameLen bounds a device's display name.
const MaxDeviceNameLen = 64

// Account is one account.
type Account struct {
	ID        string
	Name      string
	Status    string // "active" or "disabled"
	CreatedAt time.Time
	// IdentityKey is the account's Ed25519 identity public key; nil for
	// accounts registered without one.
	IdentityKey []byte
}

// Device is one device of an account.
type Device struct {
	ID           string
	AccountID    string
	AccountName  string
	Name         string
	SignatureKey ed25519.PublicKey
	Status       string // "active" or "revoked"
	// AccountStatus is the owning account's status.
	AccountStatus string
	CreatedAt     time.Time
	LastSeen      time.Time // last login or refresh; zero if never
	// IdentityKey is the owning account's identity key (nil if none);
	// Certificate the device's certificate (nil until CertifyDevice).
	IdentityKey []byte
	Certificate []byte
}

// Active reports whether the device may act: it and its account are active.
func (d Device) Active() bool { return d.Status == statusActive && d.AccountStatus == statusActive }

// Credential is the MLS BasicCredential identity of the device:
// "<account_name>/<device_id>".
func (d Device) Credential() string { return CredentialIdentity(d.AccountName, d.ID) }

// CredentialIdentity is the MLS BasicCredential identity used across qpc.
func CredentialIdentity(accountName, deviceID string) string {
	return accountName + "/" + deviceID
}

// RegisterParams is what Register needs.
type RegisterParams struct {
	AccountName  string
	SignatureKey []byte // Ed25519 public key of the first device
	DeviceName   string
	InviteCode   string // required under the invite policy
	// IdentityKey is the account's Ed25519 identity public key (optional:
	// clients before identity keys send none).
	IdentityKey []byte
}

func checkDeviceName(n string) error {
	if len(n) > MaxDeviceNameLen || !utf8.ValidString(n) {
		return fmt.Errorf("%w: device name must be valid UTF-8 of at most %d bytes", ErrInvalidName, MaxDeviceNameLen)
	}
	// Names are shown to other people: nothing that can restyle or
	// rearrange their terminal.
	if err := safetext.Check("device name", n); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidName, err)
	}
	return nil
}

// Register creates an account and its first device under the configured
// policy; with "invite" it consumes one invite in the same transaction.
func (s *Service) Register(ctx context.Context, p RegisterParams) (accountID, deviceID string, err error) {
	if s.registration == config.RegistrationClosed {
		s.event(ctx, "account.register_refused", slog.String("reason", "closed"))
		return "", "", ErrRegistrationClosed
	}
	if !ValidAccountName(p.AccountName) {
		return "", "", fmt.Errorf("%w: 1-%d characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", ErrInvalidName, MaxNameLen)
	}
	if err := checkDeviceName(p.DeviceName); err != nil {
		return "", "", err
	}
	if err := checkKey(p.SignatureKey); err != nil {
		return "", "", err
	}
	if err := checkIdentityKey(p.IdentityKey, p.SignatureKey); err != nil {
		return "", "", err
	}
	invite := s.registration == config.RegistrationInvite
	if invite && p.InviteCode == "" {
		s.event(ctx, "account.register_refused", slog.String("reason", "invite_missing"), slog.String("account_name", p.AccountName))
		return "", "", ErrInviteRequired
	}
	if accountID, err = newID(16); err != nil {
		return "", "", err
	}
	if deviceID, err = newID(16); err != nil {
		return "", "", err
	}
	now := ms(s.now())
	var inviteID string
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if err := nameFree(ctx, tx, p.AccountName); err != nil {
			return err
		}
		if err := keyFree(ctx, tx, p.SignatureKey); err != nil {
			return err
		}
		if invite {
			// The writer holds the only write transaction: select-then-update is atomic.
			err := tx.QueryRowContext(ctx, `SELECT id FROM invites
				WHERE code_hash = ? AND used_by IS NULL AND revoked = 0 AND expires_at > ?`,
				hash([]byte(normalizeInvite(p.InviteCode))), now).Scan(&inviteID)
			if errors.Is(err, sql.ErrNoRows) {
				return ErrInviteInvalid
			}
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "UPDATE invites SET used_by = ?, used_at = ? WHERE id = ?", accountID, now, inviteID); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO accounts (id, name, status, created_at, identity_key) VALUES (?, ?, 'active', ?, ?)",
			accountID, p.AccountName, now, nullBytes(p.IdentityKey)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO devices (id, account_id, name, signature_key, created_at) VALUES (?, ?, ?, ?, ?)",
			deviceID, accountID, p.DeviceName, p.SignatureKey, now); err != nil {
			return err
		}
		if len(p.IdentityKey) == 0 || s.keyLog == nil {
			return nil
		}
		ik, err := identity.ParsePublicKey(p.IdentityKey)
		if err != nil {
			return err
		}
		return s.keyLog.AppendTx(ctx, tx, keylog.IdentityKeyEntry(p.AccountName, ik, fromMS(now)), "")
	})
	if err != nil {
		if errors.Is(err, ErrInviteInvalid) {
			s.event(ctx, "account.register_refused", slog.String("reason", "invite_invalid"), slog.String("account_name", p.AccountName))
		}
		return "", "", wrapStore("register", err)
	}
	if inviteID != "" {
		s.event(ctx, "invite.use", slog.String("invite_id", inviteID), slog.String("account_id", accountID))
	}
	s.event(ctx, "account.register", slog.String("account_id", accountID), slog.String("account_name", p.AccountName),
		slog.String("device_id", deviceID))
	return accountID, deviceID, nil
}

// wrapStore leaves the package's own errors as they are and prefixes others.
func wrapStore(op string, err error) error {
	if err == nil || strings.HasPrefix(err.Error(), "auth: ") {
		return err
	}
	return fmt.Errorf("auth: %s: %w", op, err)
}

func nameFree(ctx context.Context, tx *sql.Tx, name string) error {
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM accounts WHERE name = ?", name).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%w: %q", ErrNameTaken, name)
	}
	return nil
}

func keyFree(ctx context.Context, tx *sql.Tx, key []byte) error {
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM devices WHERE signature_key = ?", key).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return ErrKeyInUse
	}
	return nil
}

// AddDevice adds a device with the given key to the actor's account. The
// actor proves possession of its own device key with r, a signed
// add-device challenge for this key (reauth.go); the account's other
// devices are told in the same transaction.
func (s *Service) AddDevice(ctx context.Context, a Actor, key []byte, name string, r Reauth) (deviceID string, err error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	if err := checkDeviceName(name); err != nil {
		return "", err
	}
	now := s.now()
	expires, err := s.checkReauth(ctx, a, PurposeAddDevice, key, r, now)
	if err != nil {
		s.event(ctx, "device.add_refused", slog.String("account_id", a.AccountID), slog.String("device_id", a.DeviceID),
			slog.String("reason", reauthReason(err)))
		return "", err
	}
	if deviceID, err = newID(16); err != nil {
		return "", err
	}
	ev := DeviceEvent{Kind: DeviceAdded, AccountID: a.AccountID, DeviceID: deviceID, DeviceName: name,
		SignatureKey: key, By: a.DeviceID, At: now}
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if err := proveReauth(ctx, tx, a, PurposeAddDevice, key, r, expires, now); err != nil {
			return err
		}
		var status string
		var active int
		err := tx.QueryRowContext(ctx, `SELECT status, (SELECT count(*) FROM devices WHERE account_id = a.id AND status = 'active')
			FROM accounts a WHERE id = ?`, a.AccountID).Scan(&status, &active)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%w: account", ErrNotFound)
		case err != nil:
			return err
		case status != statusActive:
			return ErrAccountDisabled
		case active >= s.maxDevices:
			return fmt.Errorf("%w: %d active devices; revoke one first", ErrTooManyDevices, active)
		}
		if err := keyFree(ctx, tx, key); err != nil {
			return err
		}
		if _, err = tx.ExecContext(ctx, "INSERT INTO devices (id, account_id, name, signature_key, created_at) VALUES (?, ?, ?, ?, ?)",
			deviceID, a.AccountID, name, key, ms(now)); err != nil {
			return err
		}
		// A link request for this key is answered by the device now existing.
		if _, err := tx.ExecContext(ctx, "DELETE FROM link_requests WHERE signature_key = ?", key); err != nil {
			return err
		}
		return s.recordDeviceEvent(ctx, tx, &ev)
	})
	if err != nil {
		if errors.Is(err, ErrReauthFailed) {
			s.event(ctx, "device.add_refused", slog.String("account_id", a.AccountID), slog.String("device_id", a.DeviceID),
				slog.String("reason", reauthReason(err)))
		}
		return "", wrapStore("add device", err)
	}
	s.deviceEventCommitted(ev)
	s.event(ctx, "device.add", slog.String("account_id", a.AccountID), slog.String("device_id", deviceID),
		slog.String("by", a.DeviceID), slog.Int("notified", len(ev.Notify)))
	return deviceID, nil
}

// reauthReason is the audit label of a refused re-authentication.
func reauthReason(err error) string {
	if errors.Is(err, ErrReauthRequired) {
		return "reauth_missing"
	}
	return "reauth_failed"
}

const deviceCols = `d.id, d.account_id, a.name, d.name, d.signature_key, d.status, a.status, d.created_at, d.last_seen_at, a.identity_key, d.certificate`

func scanDevice(sc interface{ Scan(...any) error }) (Device, error) {
	var d Device
	var key []byte
	var created, seen int64
	if err := sc.Scan(&d.ID, &d.AccountID, &d.AccountName, &d.Name, &key, &d.Status, &d.AccountStatus, &created, &seen, &d.IdentityKey, &d.Certificate); err != nil {
		return Device{}, err
	}
	d.SignatureKey = ed25519.PublicKey(key)
	d.CreatedAt, d.LastSeen = fromMS(created), fromMS(seen)
	return d, nil
}

// Device looks up a device by id: its account, the account's name, its
// signature key and status. The KeyPackage directory checks MLS
// credentials ("<account_name>/<device_id>" + key) against it.
func (s *Service) Device(ctx context.Context, deviceID string) (Device, error) {
	if !ValidID(deviceID) {
		return Device{}, fmt.Errorf("%w: device id", ErrInvalidID)
	}
	var d Device
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = scanDevice(tx.QueryRowContext(ctx, "SELECT "+deviceCols+
			" FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = ?", deviceID))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("%w: device %s", ErrNotFound, deviceID)
	}
	if err != nil {
		return Device{}, fmt.Errorf("auth: device: %w", err)
	}
	return d, nil
}

// ListDevices lists an account's devices, active and revoked, oldest first.
func (s *Service) ListDevices(ctx context.Context, accountID string) ([]Device, error) {
	var out []Device
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM accounts WHERE id = ?", accountID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%w: account", ErrNotFound)
		}
		var err error
		out, err = queryDevices(ctx, tx, "d.account_id = ?", accountID)
		return err
	})
	if err != nil {
		return nil, wrapStore("list devices", err)
	}
	return out, nil
}

// RevokeDevice revokes a device of the actor's account (possibly the
// actor's own). The actor proves possession of its device key with r, a
// signed revoke-device challenge for this device id (reauth.go). A device
// of another account is ErrNotFound.
func (s *Service) RevokeDevice(ctx context.Context, a Actor, deviceID string, r Reauth) error {
	if !ValidID(deviceID) {
		return fmt.Errorf("%w: device id", ErrInvalidID)
	}
	expires, err := s.checkReauth(ctx, a, PurposeRevokeDevice, []byte(deviceID), r, s.now())
	if err != nil {
		s.event(ctx, "device.revoke_refused", slog.String("account_id", a.AccountID), slog.String("device_id", a.DeviceID),
			slog.String("target", deviceID), slog.String("reason", reauthReason(err)))
		return err
	}
	return s.revokeDevice(ctx, a.AccountID, deviceID, a.DeviceID, func(tx *sql.Tx, now time.Time) error {
		return proveReauth(ctx, tx, a, PurposeRevokeDevice, []byte(deviceID), r, expires, now)
	})
}

// AdminRevokeDevice revokes any device (admin API).
func (s *Service) AdminRevokeDevice(ctx context.Context, deviceID string) error {
	if !ValidID(deviceID) {
		return fmt.Errorf("%w: device id", ErrInvalidID)
	}
	return s.revokeDevice(ctx, "", deviceID, "", nil)
}

// revokeDevice revokes deviceID (of accountID unless it is "", the admin)
// after prove (nil: none) passed in the same transaction. by is the acting
// device, "" for the operator.
func (s *Service) revokeDevice(ctx context.Context, accountID, deviceID, by string, prove func(*sql.Tx, time.Time) error) error {
	now := s.now()
	var ev DeviceEvent
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		ev = DeviceEvent{}
		if prove != nil {
			if err := prove(tx, now); err != nil {
				return err
			}
		}
		dev, err := scanDevice(tx.QueryRowContext(ctx, "SELECT "+deviceCols+
			" FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = ?", deviceID))
		if errors.Is(err, sql.ErrNoRows) || err == nil && accountID != "" && dev.AccountID != accountID {
			return fmt.Errorf("%w: device %s", ErrNotFound, deviceID)
		}
		if err != nil {
			return err
		}
		ev = DeviceEvent{Kind: DeviceRevoked, AccountID: dev.AccountID, DeviceID: deviceID, DeviceName: dev.Name,
			SignatureKey: dev.SignatureKey, By: by, At: now}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET status = 'revoked', token_gen = token_gen + 1,
			revoked_at = CASE WHEN revoked_at = 0 THEN ? ELSE revoked_at END WHERE id = ?`, ms(now), deviceID); err != nil {
			return err
		}
		if err := revokeDeviceTokens(ctx, tx, deviceID); err != nil {
			return err
		}
		if dev.Status != statusActive {
			return nil // already revoked: nothing new to tell
		}
		return s.recordDeviceEvent(ctx, tx, &ev)
	})
	s.devicesChanged()
	if err != nil {
		if errors.Is(err, ErrReauthFailed) {
			s.event(ctx, "device.revoke_refused", slog.String("account_id", accountID), slog.String("device_id", by),
				slog.String("target", deviceID), slog.String("reason", reauthReason(err)))
		}
		return wrapStore("revoke device", err)
	}
	s.deviceEventCommitted(ev)
	who := by
	if who == "" {
		who = "admin"
	}
	s.event(ctx, "device.revoke", slog.String("account_id", ev.AccountID), slog.String("device_id", deviceID), slog.String("by", who),
		slog.Int("notified", len(ev.Notify)))
	return nil
}

// revokeDeviceTokens kills the device's refresh tokens. (Access tokens die
// through the token_gen bump done by the caller; its challenges stay
// unanswerable because Login checks the device's status.)
func revokeDeviceTokens(ctx context.Context, tx *sql.Tx, deviceID string) error {
	_, err := tx.ExecContext(ctx, "UPDATE refresh_tokens SET revoked = 1 WHERE device_id = ?", deviceID)
	return err
}

// LookupAccount finds an account by name with its active devices.
func (s *Service) LookupAccount(ctx context.Context, name string) (Account, []Device, error) {
	if !ValidAccountName(name) {
		return Account{}, nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	var acc Account
	var devs []Device
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		acc, err = scanAccount(tx.QueryRowContext(ctx, "SELECT "+accountCols+" FROM accounts WHERE name = ?", name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: account %q", ErrNotFound, name)
		}
		if err != nil || acc.Status != statusActive {
			return err
		}
		devs, err = queryDevices(ctx, tx, "d.account_id = ? AND d.status = 'active'", acc.ID)
		return err
	})
	if err != nil {
		return Account{}, nil, wrapStore("lookup account", err)
	}
	return acc, devs, nil
}

const accountCols = "id, name, status, created_at, identity_key"

func scanAccount(sc interface{ Scan(...any) error }) (Account, error) {
	var a Account
	var created int64
	if err := sc.Scan(&a.ID, &a.Name, &a.Status, &created, &a.IdentityKey); err != nil {
		return Account{}, err
	}
	a.CreatedAt = fromMS(created)
	return a, nil
}

// GetAccount returns one account by id.
func (s *Service) GetAccount(ctx context.Context, accountID string) (Account, error) {
	var a Account
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		a, err = scanAccount(tx.QueryRowContext(ctx, "SELECT "+accountCols+" FROM accounts WHERE id = ?", accountID))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return Account{}, fmt.Errorf("%w: account %s", ErrNotFound, accountID)
	}
	if err != nil {
		return Account{}, fmt.Errorf("auth: get account: %w", err)
	}
	return a, nil
}

// ListAccounts lists accounts by name, at most limit (<= 0: all) after the
// name after (for paging; "" starts at the beginning).
func (s *Service) ListAccounts(ctx context.Context, after string, limit int) ([]Account, error) {
	if limit <= 0 {
		limit = math.MaxInt32 // "all": a negative LIMIT is SQLite's, not PostgreSQL's
	}
	var out []Account
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "SELECT "+accountCols+" FROM accounts WHERE name > ? ORDER BY name LIMIT ?", after, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			a, err := scanAccount(rows)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("auth: list accounts: %w", err)
	}
	return out, nil
}

// DisableAccount stops an account: its tokens stop working on their next
// call, its refresh tokens are revoked and its devices cannot log in.
func (s *Service) DisableAccount(ctx context.Context, accountID string) error {
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE accounts SET status = 'disabled' WHERE id = ?", accountID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: account %s", ErrNotFound, accountID)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE devices SET token_gen = token_gen + 1 WHERE account_id = ?", accountID); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "UPDATE refresh_tokens SET revoked = 1 WHERE device_id IN (SELECT id FROM devices WHERE account_id = ?)", accountID)
		return err
	})
	s.devicesChanged()
	if err != nil {
		return wrapStore("disable account", err)
	}
	s.event(ctx, "account.disable", slog.String("account_id", accountID))
	return nil
}

// EnableAccount re-enables a disabled account; its active devices log in again.
func (s *Service) EnableAccount(ctx context.Context, accountID string) error {
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE accounts SET status = 'active' WHERE id = ?", accountID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: account %s", ErrNotFound, accountID)
		}
		return nil
	})
	s.devicesChanged()
	if err != nil {
		return wrapStore("enable account", err)
	}
	s.event(ctx, "account.enable", slog.String("account_id", accountID))
	return nil
}

// queryDevices lists the devices matching where (a condition on d, the
// devices table, and a, the accounts table), oldest first.
func queryDevices(ctx context.Context, tx *sql.Tx, where string, args ...any) ([]Device, error) {
	rows, err := tx.QueryContext(ctx, "SELECT "+deviceCols+
		" FROM devices d JOIN accounts a ON a.id = d.account_id WHERE "+where+" ORDER BY d.created_at, d.id", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}
