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

// Resetting a lost identity key (issue 19; docs/protocol.md, "Resetting a
// lost identity key"). Only the registering device holds the account's
// identity key; when it is lost, a still-active device of the account may
// give the account a new identity key. The change is never silent: the new
// key is appended to the key log in the same transaction, so every lookup
// proves it and every contact's client sees a changed identity key.

var (
	// ErrIdentityResetTooSoon: the account's identity key was reset less
	// than IdentityResetInterval ago (RESOURCE_EXHAUSTED).
	ErrIdentityResetTooSoon = errors.New("auth: the account's identity key was reset recently")
	// ErrIdentityResetUnavailable: the server keeps no key log, so a reset
	// could not be shown to contacts (PERMISSION_DENIED).
	ErrIdentityResetUnavailable = errors.New("auth: identity reset needs the key log, which this server does not keep")
)

// IdentityResetInterval is the least time between two identity-key resets
// of one account. Fixed: a reset warns every contact, so more than one a
// day is either an attack with a stolen device key or a mistake, and a
// contact shown a stream of new keys learns to ignore the warning.
const IdentityResetInterval = 24 * time.Hour

// IdentityReset is what a reset did.
type IdentityReset struct {
	// UncertifiedDevices is every active device of the account, each now
	// without a certificate (the caller re-certifies itself).
	UncertifiedDevices []string
	// KeyPackagesDeleted counts the account's KeyPackages dropped: their
	// certificates were by the old key.
	KeyPackagesDeleted int64
}

// ResetIdentityKey replaces the actor's account identity key with key,
// re-authenticated by the actor's device key (purpose reset-identity,
// bound to the new key). In one transaction it appends the new key to the
// key log, drops every device certificate and KeyPackage of the account,
// and keeps the old key in the log (entries are never removed).
func (s *Service) ResetIdentityKey(ctx context.Context, a Actor, key []byte, r Reauth) (IdentityReset, error) {
	var out IdentityReset
	if err := checkKey(key); err != nil {
		return out, fmt.Errorf("%w (identity key)", err)
	}
	if _, err := identity.ParsePublicKey(key); err != nil {
		return out, fmt.Errorf("%w: identity key: %w", ErrInvalidKey, err)
	}
	refused := func(reason string) {
		s.event(ctx, "identity.reset_refused", slog.String("account_id", a.AccountID), slog.String("device_id", a.DeviceID),
			slog.String("reason", reason))
	}
	if s.keyLog == nil {
		refused("no_key_log")
		return out, ErrIdentityResetUnavailable
	}
	now := s.now()
	expires, err := s.checkReauth(ctx, a, PurposeResetIdentity, key, r, now)
	if err != nil {
		refused(reauthReason(err))
		return out, err
	}
	var accountName string
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if err := proveReauth(ctx, tx, a, PurposeResetIdentity, key, r, expires, now); err != nil {
			return err
		}
		acc, err := scanAccount(tx.QueryRowContext(ctx, "SELECT "+accountCols+" FROM accounts WHERE id = ?", a.AccountID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%w: account", ErrNotFound)
		case err != nil:
			return err
		case acc.Status != statusActive:
			return ErrAccountDisabled
		case len(acc.IdentityKey) == 0:
			return fmt.Errorf("%w: it was registered before identity keys, so there is nothing to reset", ErrNoIdentityKey)
		case bytes.Equal(acc.IdentityKey, key):
			return fmt.Errorf("%w: the new identity key is the current one", ErrInvalidKey)
		}
		accountName = acc.Name
		if err := identityResetAllowed(ctx, tx, acc.Name, now); err != nil {
			return err
		}
		var clash int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM devices WHERE signature_key = ?", key).Scan(&clash); err != nil {
			return err
		}
		if clash > 0 {
			return fmt.Errorf("%w: the identity key must differ from every device key", ErrInvalidKey)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET identity_key = ? WHERE id = ?", key, a.AccountID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE devices SET certificate = NULL WHERE account_id = ?", a.AccountID); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM keypackages WHERE account_id = ?", a.AccountID)
		if err != nil {
			return err
		}
		if out.KeyPackagesDeleted, err = res.RowsAffected(); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, "SELECT id FROM devices WHERE account_id = ? AND status = 'active' ORDER BY id", a.AccountID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			out.UncertifiedDevices = append(out.UncertifiedDevices, id)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		ik, err := identity.ParsePublicKey(key)
		if err != nil {
			return err
		}
		// The log entry is what makes the change impossible to hide: a
		// lookup proves the account's newest identity key against a head
		// every client holds.
		return s.keyLog.AppendTx(ctx, tx, keylog.IdentityKeyEntry(acc.Name, ik, now), "")
	})
	if err != nil {
		switch {
		case errors.Is(err, ErrReauthFailed):
			refused(reauthReason(err))
		case errors.Is(err, ErrIdentityResetTooSoon):
			refused("too_soon")
		}
		return IdentityReset{}, wrapStore("reset identity key", err)
	}
	s.event(ctx, "identity.reset", slog.String("account_id", a.AccountID), slog.String("account", accountName),
		slog.String("by", a.DeviceID), slog.String("fingerprint", identity.Fingerprint(key)),
		slog.Int("uncertified", len(out.UncertifiedDevices)), slog.Int64("keypackages_deleted", out.KeyPackagesDeleted))
	return out, nil
}

// identityResetAllowed refuses a reset within IdentityResetInterval of the
// account's previous one. The key log is the record: every identity key
// the account had is an entry of kind 1 there, the first one made at
// registration (which is not a reset and does not count).
func identityResetAllowed(ctx context.Context, tx *sql.Tx, account string, now time.Time) error {
	var n int
	var last int64
	if err := tx.QueryRowContext(ctx, "SELECT count(*), COALESCE(MAX(created_at), 0) FROM keylog_entries WHERE account_name = ? AND kind = ?",
		account, int(keylog.KindIdentityKey)).Scan(&n, &last); err != nil {
		return err
	}
	if n < 2 {
		return nil
	}
	if next := fromMS(last).Add(IdentityResetInterval); now.Before(next) {
		return fmt.Errorf("%w: at most one reset per %s; the next is allowed at %s", ErrIdentityResetTooSoon,
			IdentityResetInterval, next.UTC().Format(time.RFC3339))
	}
	return nil
}
