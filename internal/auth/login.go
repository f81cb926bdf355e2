package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// NonceSize is the length of a login nonce (a challenge, challenge.go);
// RefreshTokenSize of a refresh token.
const (
	NonceSize        = ChallengeSize
	RefreshTokenSize = 32
)

var loginContext = []byte("qpc-login-v1\x00")

// LoginMessage is what a device signs to log in:
// "qpc-login-v1" || 0x00 || device_id (32 ASCII bytes) || nonce.
func LoginMessage(deviceID string, nonce []byte) []byte {
	m := make([]byte, 0, len(loginContext)+len(deviceID)+len(nonce))
	m = append(m, loginContext...)
	m = append(m, deviceID...)
	return append(m, nonce...)
}

// Tokens is what Login and Refresh return. RefreshToken is a secret.
type Tokens struct {
	AccountID      string
	DeviceID       string
	AccessToken    string
	AccessExpires  time.Time
	RefreshToken   secret.Bytes
	RefreshExpires time.Time
}

// Challenge returns a login challenge for a device (challenge.go): 32
// bytes that carry their own expiry under a server MAC. Nothing is stored,
// so any number of challenges can be handed out without invalidating one,
// and the answer is the same whether or not the device exists.
func (s *Service) Challenge(ctx context.Context, deviceID string) (nonce []byte, expires time.Time, err error) {
	return s.newChallenge(challengeBinding{purpose: PurposeLogin, deviceID: deviceID}, s.now())
}

// Login checks the device's signature over its challenge and issues tokens.
// A challenge is used up by the login it lets in (and by nothing else: a
// wrong signature does not burn it). Every failure before the signature is
// proven is ErrLoginFailed, so the answer does not tell why.
func (s *Service) Login(ctx context.Context, deviceID string, nonce, sig []byte) (Tokens, error) {
	fail := func(reason string) (Tokens, error) {
		s.event(ctx, "auth.login_failed", slog.String("device_id", deviceID), slog.String("reason", reason))
		return Tokens{}, fmt.Errorf("%w (%s)", ErrLoginFailed, reasonText[reason])
	}
	if !ValidID(deviceID) || len(nonce) != NonceSize || len(sig) != ed25519.SignatureSize {
		return fail("malformed")
	}
	now := s.now()
	expires, ok := s.checkChallenge(ctx, nonce, challengeBinding{purpose: PurposeLogin, deviceID: deviceID}, now)
	if !ok {
		return fail("nonce")
	}
	refresh := make([]byte, RefreshTokenSize)
	if _, err := rand.Read(refresh); err != nil {
		return Tokens{}, fmt.Errorf("auth: random: %w", err)
	}
	rt := secret.New(refresh)
	family, err := newID(16)
	if err != nil {
		return Tokens{}, err
	}
	var (
		reason string // non-empty: refused
		dev    Device
		gen    uint64
	)
	// READ COMMITTED on PostgreSQL (WriteTxLocked): every login prunes
	// expired challenges and inserts its own, so under SERIALIZABLE
	// concurrent logins of different devices conflicted with each other
	// until their retries ran out (INTERNAL). Nothing here needs more: the
	// challenge's single use is the unique key's insert-if-absent, and a
	// revocation racing this login is caught when the token is verified
	// (token_gen).
	err = s.db.WriteTxLocked(ctx, func(tx *sql.Tx) error {
		reason = ""
		var err error
		dev, err = scanDevice(tx.QueryRowContext(ctx, "SELECT "+deviceCols+
			" FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = ?", deviceID))
		if errors.Is(err, sql.ErrNoRows) {
			reason = "nonce"
			return nil
		}
		if err != nil {
			return err
		}
		if !ed25519.Verify(dev.SignatureKey, LoginMessage(deviceID, nonce), sig) {
			reason = "signature"
			return nil
		}
		fresh, err := consumeChallenge(ctx, tx, nonce, expires, now)
		if err != nil {
			return err
		}
		if !fresh {
			reason = "nonce"
			return nil
		}
		switch {
		case dev.Status != statusActive:
			reason = "device_revoked"
			return nil
		case dev.AccountStatus != statusActive:
			reason = "account_disabled"
			return nil
		}
		if err := tx.QueryRowContext(ctx, "SELECT token_gen FROM devices WHERE id = ?", deviceID).Scan(&gen); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE devices SET last_seen_at = ? WHERE id = ?", ms(now), deviceID); err != nil {
			return err
		}
		return insertRefresh(ctx, tx, rt.Reveal(), deviceID, family, now, now.Add(s.refreshTTL))
	})
	if err != nil {
		rt.Wipe()
		return Tokens{}, fmt.Errorf("auth: login: %w", err)
	}
	switch reason {
	case "":
	case "device_revoked":
		rt.Wipe()
		s.event(ctx, "auth.login_failed", slog.String("device_id", deviceID), slog.String("reason", reason))
		return Tokens{}, ErrDeviceRevoked
	case "account_disabled":
		rt.Wipe()
		s.event(ctx, "auth.login_failed", slog.String("device_id", deviceID), slog.String("reason", reason))
		return Tokens{}, ErrAccountDisabled
	default:
		rt.Wipe()
		return fail(reason)
	}
	tok, claims, err := s.issueAccess(dev.AccountID, deviceID, gen, now)
	if err != nil {
		rt.Wipe()
		return Tokens{}, err
	}
	s.event(ctx, "auth.login", slog.String("account_id", dev.AccountID), slog.String("device_id", deviceID),
		slog.String("family_id", family), slog.String("token_id", claims.TokenID))
	return Tokens{AccountID: dev.AccountID, DeviceID: deviceID, AccessToken: tok, AccessExpires: claims.ExpiresAt,
		RefreshToken: rt, RefreshExpires: fromMS(ms(now.Add(s.refreshTTL)))}, nil
}

var reasonText = map[string]string{
	"malformed": "malformed request",
	// The nonce and signature failures read the same to the client.
	"nonce":     "unknown, used or expired nonce, or bad signature; ask for a new challenge",
	"signature": "unknown, used or expired nonce, or bad signature; ask for a new challenge",
}

// insertRefresh stores a new refresh token and drops the device's expired
// ones (used tokens are kept until they expire, to recognise their reuse).
func insertRefresh(ctx context.Context, tx *sql.Tx, token []byte, deviceID, family string, now, expires time.Time) error {
	if _, err := tx.ExecContext(ctx, "DELETE FROM refresh_tokens WHERE device_id = ? AND expires_at <= ?", deviceID, ms(now)); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO refresh_tokens (token_hash, device_id, family_id, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?)`, hash(token), deviceID, family, ms(now), ms(expires))
	return err
}

// Refresh trades a refresh token of deviceID for new tokens; the presented
// token is used up. Presenting a token that was already used revokes every
// refresh token of the device and every access token issued to it so far.
func (s *Service) Refresh(ctx context.Context, deviceID string, token secret.Bytes) (Tokens, error) {
	if !ValidID(deviceID) || token.Len() != RefreshTokenSize {
		return Tokens{}, ErrRefreshInvalid
	}
	now := s.now()
	h := hash(token.Reveal())
	next := make([]byte, RefreshTokenSize)
	if _, err := rand.Read(next); err != nil {
		return Tokens{}, fmt.Errorf("auth: random: %w", err)
	}
	nt := secret.New(next)
	var (
		outcome error // refusal to return after the transaction commits
		reused  bool
		family  string
		account string
		gen     uint64
	)
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		outcome, reused = nil, false
		var (
			stored    []byte
			owner     string
			expires   int64
			usedAt    int64
			revoked   bool
			devStatus string
			accStatus string
		)
		err := tx.QueryRowContext(ctx, `SELECT r.token_hash, r.device_id, r.family_id, r.expires_at, r.used_at, r.revoked,
				d.status, a.status, d.account_id, d.token_gen
			FROM refresh_tokens r JOIN devices d ON d.id = r.device_id JOIN accounts a ON a.id = d.account_id
			WHERE r.token_hash = ?`, h).
			Scan(&stored, &owner, &family, &expires, &usedAt, &revoked, &devStatus, &accStatus, &account, &gen)
		if errors.Is(err, sql.ErrNoRows) {
			outcome = ErrRefreshInvalid
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case subtle.ConstantTimeCompare(stored, h) != 1:
			outcome = ErrRefreshInvalid
			return nil
		case usedAt != 0:
			// Replay: whoever holds the family now is not to be trusted.
			reused = true
			outcome = ErrRefreshReused
			if _, err := tx.ExecContext(ctx, "UPDATE devices SET token_gen = token_gen + 1 WHERE id = ?", owner); err != nil {
				return err
			}
			return revokeDeviceTokens(ctx, tx, owner)
		case owner != deviceID:
			outcome = fmt.Errorf("%w: refresh token", ErrWrongDevice)
			return nil
		case revoked:
			outcome = fmt.Errorf("%w: refresh token", ErrTokenRevoked)
			return nil
		case devStatus != statusActive:
			outcome = ErrDeviceRevoked
			return nil
		case accStatus != statusActive:
			outcome = ErrAccountDisabled
			return nil
		case expires <= ms(now):
			outcome = ErrRefreshExpired
			return nil
		}
		if _, err := tx.ExecContext(ctx, "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", ms(now), h); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE devices SET last_seen_at = ? WHERE id = ?", ms(now), deviceID); err != nil {
			return err
		}
		return insertRefresh(ctx, tx, nt.Reveal(), deviceID, family, now, now.Add(s.refreshTTL))
	})
	if reused {
		s.devicesChanged() // the device's token generation moved
	}
	if err != nil {
		nt.Wipe()
		return Tokens{}, fmt.Errorf("auth: refresh: %w", err)
	}
	if outcome != nil {
		nt.Wipe()
		if reused {
			s.event(ctx, "token.refresh_reuse", slog.String("device_id", deviceID), slog.String("family_id", family))
		} else {
			s.event(ctx, "token.refresh_failed", slog.String("device_id", deviceID), slog.String("reason", outcome.Error()))
		}
		return Tokens{}, outcome
	}
	tok, claims, err := s.issueAccess(account, deviceID, gen, now)
	if err != nil {
		nt.Wipe()
		return Tokens{}, err
	}
	s.event(ctx, "token.refresh", slog.String("account_id", account), slog.String("device_id", deviceID),
		slog.String("family_id", family), slog.String("token_id", claims.TokenID))
	return Tokens{AccountID: account, DeviceID: deviceID, AccessToken: tok, AccessExpires: claims.ExpiresAt,
		RefreshToken: nt, RefreshExpires: fromMS(ms(now.Add(s.refreshTTL)))}, nil
}
