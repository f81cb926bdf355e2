package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// Access token format (docs/protocol.md, "Accounts and auth"):
//
//	"qpcat1." base64url(claims) "." base64url(signature)
//
// claims is a fixed 81-byte layout, big-endian:
//
//	version   1  (= 1)
//	key id    8  token_keys.id (hex in the database)
//	account  16  account id
//	device   16  device id
//	token id 16  random
//	issued    8  Unix ms
//	expires   8  Unix ms
//	gen       8  the device's token generation when issued
//
// signature is Ed25519 by the key named in the claims over
// "qpc-access-v1" || 0x00 || claims.
const (
	tokenPrefix   = "qpcat1."
	claimsVersion = 1
	claimsLen     = 1 + 8 + 16 + 16 + 16 + 8 + 8 + 8
	keyIDLen      = 8
	// MaxTokenLen bounds what Verify will look at.
	MaxTokenLen = 512
)

var accessContext = []byte("qpc-access-v1\x00")

var b64 = base64.RawURLEncoding.Strict()

// Claims are what an access token says.
type Claims struct {
	KeyID     string
	AccountID string
	DeviceID  string
	TokenID   string
	IssuedAt  time.Time
	ExpiresAt time.Time
	Gen       uint64
}

func (c *Claims) marshal() ([]byte, error) {
	kid, err := hex.DecodeString(c.KeyID)
	if err != nil || len(kid) != keyIDLen {
		return nil, fmt.Errorf("auth: bad key id %q", c.KeyID)
	}
	b := make([]byte, 0, claimsLen)
	b = append(b, claimsVersion)
	b = append(b, kid...)
	for _, id := range []string{c.AccountID, c.DeviceID, c.TokenID} {
		raw, err := hex.DecodeString(id)
		if err != nil || len(raw) != 16 {
			return nil, fmt.Errorf("auth: bad id %q in claims", id)
		}
		b = append(b, raw...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(ms(c.IssuedAt)))
	b = binary.BigEndian.AppendUint64(b, uint64(ms(c.ExpiresAt)))
	b = binary.BigEndian.AppendUint64(b, c.Gen)
	return b, nil
}

func parseClaims(b []byte) (Claims, bool) {
	if len(b) != claimsLen || b[0] != claimsVersion {
		return Claims{}, false
	}
	c := Claims{KeyID: hex.EncodeToString(b[1:9])}
	c.AccountID = hex.EncodeToString(b[9:25])
	c.DeviceID = hex.EncodeToString(b[25:41])
	c.TokenID = hex.EncodeToString(b[41:57])
	iat := int64(binary.BigEndian.Uint64(b[57:65]))
	exp := int64(binary.BigEndian.Uint64(b[65:73]))
	if iat < 0 || exp < 0 {
		return Claims{}, false
	}
	c.IssuedAt, c.ExpiresAt = time.UnixMilli(iat), time.UnixMilli(exp)
	c.Gen = binary.BigEndian.Uint64(b[73:81])
	return c, true
}

// splitToken decodes the token's two parts; ok is false if it is malformed.
func splitToken(tok string) (claims, sig []byte, ok bool) {
	if len(tok) > MaxTokenLen || !strings.HasPrefix(tok, tokenPrefix) {
		return nil, nil, false
	}
	c, s, found := strings.Cut(tok[len(tokenPrefix):], ".")
	if !found {
		return nil, nil, false
	}
	claims, err := b64.DecodeString(c)
	if err != nil || len(claims) != claimsLen {
		return nil, nil, false
	}
	sig, err = b64.DecodeString(s)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, nil, false
	}
	return claims, sig, true
}

// signingKey is one row of token_keys. priv is empty for retired keys.
type signingKey struct {
	id        string
	pub       ed25519.PublicKey
	priv      secret.Bytes
	challenge secret.Bytes // MAC key of challenges (challenge.go); empty once cleared
	createdAt time.Time
	retiredAt time.Time // zero while active
}

func (k *signingKey) wipe() {
	k.priv.Wipe()
	k.challenge.Wipe()
}

func (k *signingKey) sign(claims []byte) string {
	msg := append(append([]byte(nil), accessContext...), claims...)
	sig := ed25519.Sign(ed25519.PrivateKey(k.priv.Reveal()), msg)
	return tokenPrefix + b64.EncodeToString(claims) + "." + b64.EncodeToString(sig)
}

func (k *signingKey) verify(claims, sig []byte) bool {
	msg := append(append([]byte(nil), accessContext...), claims...)
	return ed25519.Verify(k.pub, msg, sig)
}

func (r *keyring) wipe() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.byID {
		k.wipe()
	}
	r.byID, r.active = nil, nil
}

func (r *keyring) get(id string) *signingKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.byID[id]
}

func (r *keyring) current() *signingKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.active
}

// signActive signs claims built for the active key while holding the read
// lock, so a concurrent reload cannot wipe the key mid-signature.
func (r *keyring) signActive(build func(keyID string) ([]byte, error)) (string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.active == nil || r.active.priv.Len() != ed25519.PrivateKeySize {
		return "", errors.New("auth: no active token key")
	}
	claims, err := build(r.active.id)
	if err != nil {
		return "", err
	}
	return r.active.sign(claims), nil
}

// loadKeys replaces the in-memory keys with token_keys.
func (s *Service) loadKeys(ctx context.Context) error {
	byID := map[string]*signingKey{}
	var active *signingKey
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "SELECT id, private_key, public_key, created_at, retired_at, active, challenge_key FROM token_keys")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				id               string
				priv, pub, chal  []byte
				created, retired int64
				isActive         bool
			)
			if err := rows.Scan(&id, &priv, &pub, &created, &retired, &isActive, &chal); err != nil {
				return err
			}
			if len(pub) != ed25519.PublicKeySize {
				return fmt.Errorf("auth: token key %s has a %d-byte public key", id, len(pub))
			}
			k := &signingKey{id: id, pub: ed25519.PublicKey(pub), createdAt: fromMS(created), retiredAt: fromMS(retired)}
			if len(chal) == challengeKeySize {
				k.challenge = secret.New(chal)
			} else {
				secret.Wipe(chal)
			}
			if isActive {
				if len(priv) != ed25519.PrivateKeySize {
					secret.Wipe(priv)
					return fmt.Errorf("auth: active token key %s has no usable private key", id)
				}
				k.priv = secret.New(priv)
				active = k
			} else {
				secret.Wipe(priv)
			}
			byID[id] = k
		}
		return rows.Err()
	})
	if err != nil {
		for _, k := range byID {
			k.wipe()
		}
		return fmt.Errorf("auth: load token keys: %w", err)
	}
	s.keys.mu.Lock()
	for _, k := range s.keys.byID {
		k.wipe()
	}
	s.keys.byID, s.keys.active, s.keys.lastReload = byID, active, s.now()
	s.keys.mu.Unlock()
	return nil
}

func (s *Service) ensureSigningKey(ctx context.Context) error {
	if err := s.loadKeys(ctx); err != nil {
		return err
	}
	k := s.keys.current()
	if k == nil {
		_, err := s.RotateSigningKey(ctx)
		return err
	}
	if k.challenge.Len() == challengeKeySize {
		return nil
	}
	// A key made before challenge keys existed (migration 0005) gets one.
	// Of several nodes starting at once the first write wins; all of them
	// then load the same key.
	ck := make([]byte, challengeKeySize)
	if _, err := rand.Read(ck); err != nil {
		return fmt.Errorf("auth: random: %w", err)
	}
	defer secret.Wipe(ck)
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE token_keys SET challenge_key = ? WHERE id = ? AND challenge_key IS NULL", ck, k.id)
		return err
	})
	if err != nil {
		return fmt.Errorf("auth: add challenge key: %w", err)
	}
	if err := s.loadKeys(ctx); err != nil {
		return err
	}
	s.db.Broadcast(topicKeys, k.id)
	return nil
}

// RotateSigningKey makes a new token-signing key the active one. The old
// key's private half is erased at once; its public half keeps verifying the
// tokens it signed until they expire (at most the access-token TTL). The
// new key comes with a new challenge key; the old key's challenge key keeps
// verifying the challenges it made (they expire within the challenge TTL)
// until the next rotation clears it.
func (s *Service) RotateSigningKey(ctx context.Context) (keyID string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("auth: generate token key: %w", err)
	}
	defer secret.Wipe(priv)
	ck := make([]byte, challengeKeySize)
	if _, err := rand.Read(ck); err != nil {
		return "", fmt.Errorf("auth: random: %w", err)
	}
	defer secret.Wipe(ck)
	id, err := newID(keyIDLen)
	if err != nil {
		return "", err
	}
	now := ms(s.now())
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE token_keys SET challenge_key = NULL WHERE active = 0"); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx,
			"UPDATE token_keys SET active = 0, retired_at = ?, private_key = NULL WHERE active = 1", now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx,
			"INSERT INTO token_keys (id, private_key, public_key, created_at, active, challenge_key) VALUES (?, ?, ?, ?, 1, ?)",
			id, []byte(priv), []byte(pub), now, ck)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("auth: rotate token key: %w", err)
	}
	if err := s.loadKeys(ctx); err != nil {
		return "", err
	}
	s.db.Broadcast(topicKeys, id)
	s.event(ctx, "token_key.rotate", slog.String("key_id", id))
	return id, nil
}

// issueAccess signs an access token for a device.
func (s *Service) issueAccess(accountID, deviceID string, gen uint64, now time.Time) (string, Claims, error) {
	tid, err := newID(16)
	if err != nil {
		return "", Claims{}, err
	}
	c := Claims{AccountID: accountID, DeviceID: deviceID, TokenID: tid,
		IssuedAt: now, ExpiresAt: now.Add(s.accessTTL), Gen: gen}
	tok, err := s.keys.signActive(func(keyID string) ([]byte, error) {
		c.KeyID = keyID
		return c.marshal()
	})
	if err != nil {
		return "", Claims{}, err
	}
	return tok, c, nil
}

// VerifySignature checks a token's form, key, signature and expiry, without
// looking at the device's state (Authenticate does that too).
func (s *Service) VerifySignature(ctx context.Context, tok string) (Claims, error) {
	if tok == "" {
		return Claims{}, ErrTokenMissing
	}
	raw, sig, ok := splitToken(tok)
	if !ok {
		return Claims{}, ErrTokenMalformed
	}
	c, ok := parseClaims(raw)
	if !ok {
		return Claims{}, ErrTokenMalformed
	}
	k := s.keys.get(c.KeyID)
	if k == nil && s.reloadAllowed() {
		if err := s.loadKeys(ctx); err != nil {
			return Claims{}, err
		}
		k = s.keys.get(c.KeyID)
	}
	if k == nil {
		return Claims{}, fmt.Errorf("%w: unknown key id", ErrTokenForged)
	}
	if !k.verify(raw, sig) {
		return Claims{}, ErrTokenForged
	}
	// A retired key signs nothing after its retirement.
	if !k.retiredAt.IsZero() && c.IssuedAt.After(k.retiredAt) {
		return Claims{}, fmt.Errorf("%w: issued after its key was retired", ErrTokenForged)
	}
	if !s.now().Before(c.ExpiresAt) {
		return Claims{}, ErrTokenExpired
	}
	return c, nil
}

func (s *Service) reloadAllowed() bool {
	s.keys.mu.RLock()
	last := s.keys.lastReload
	s.keys.mu.RUnlock()
	return s.now().Sub(last) >= keyReloadEvery || s.now().Before(last)
}

// Identity is an authenticated caller.
type Identity struct {
	AccountID   string
	AccountName string
	DeviceID    string
	TokenID     string
	ExpiresAt   time.Time
}

// Authenticate verifies an access token and checks, on every call, that its
// device is active, its account enabled and the token not revoked since.
func (s *Service) Authenticate(ctx context.Context, tok string) (Identity, error) {
	key, c, cached := s.verified.get(tok)
	if cached {
		if !s.now().Before(c.ExpiresAt) {
			return Identity{}, ErrTokenExpired
		}
	} else {
		var err error
		if c, err = s.VerifySignature(ctx, tok); err != nil {
			return Identity{}, err
		}
		s.verified.put(key, c)
	}
	st, err := s.deviceState(ctx, c.DeviceID)
	switch {
	case err != nil:
		return Identity{}, err
	case st.accountID != c.AccountID:
		return Identity{}, fmt.Errorf("%w: account does not own the device", ErrTokenForged)
	case !st.deviceActive:
		return Identity{}, fmt.Errorf("%w: device revoked", ErrTokenRevoked)
	case !st.accountActive:
		return Identity{}, ErrAccountDisabled
	case st.gen != c.Gen:
		return Identity{}, fmt.Errorf("%w: issued before the device's tokens were revoked", ErrTokenRevoked)
	}
	s.touch(ctx, c.DeviceID, s.now())
	return Identity{AccountID: st.accountID, AccountName: st.accountName, DeviceID: c.DeviceID, TokenID: c.TokenID, ExpiresAt: c.ExpiresAt}, nil
}

// deviceState reads a device's account, status and token generation, from
// the cache when it is fresh.
func (s *Service) deviceState(ctx context.Context, deviceID string) (deviceState, error) {
	now := s.now()
	st, epoch, ok := s.devices.lookup(deviceID, now)
	if ok {
		return st, nil
	}
	var devStatus, accStatus string
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT d.account_id, a.name, d.status, a.status, d.token_gen
			FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = ?`, deviceID).
			Scan(&st.accountID, &st.accountName, &devStatus, &accStatus, &st.gen)
	})
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return deviceState{}, fmt.Errorf("%w: unknown device", ErrTokenForged)
	case err != nil:
		return deviceState{}, fmt.Errorf("auth: authenticate: %w", err)
	}
	st.deviceActive = devStatus == statusActive
	st.accountActive = accStatus == statusActive
	st.fetched = now
	s.devices.store(deviceID, st, epoch)
	return st, nil
}

// CheckDevice returns ErrWrongDevice unless id is the identity's device.
// Handlers call it when a request names a device.
func (id Identity) CheckDevice(deviceID string) error {
	if deviceID != id.DeviceID {
		return ErrWrongDevice
	}
	return nil
}

// ActiveKeyID is the id of the key this node signs new access tokens with.
func (s *Service) ActiveKeyID() string {
	if k := s.keys.current(); k != nil {
		return k.id
	}
	return ""
}
