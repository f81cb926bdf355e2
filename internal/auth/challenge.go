package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Challenges (docs/protocol.md, "Challenges") are stateless: the 32 bytes
// handed out carry their own expiry under a server MAC bound to what they
// may be answered for, so handing one out stores nothing and no flood of
// requests can push out another device's pending challenge. Single use is
// kept by recording a challenge when it is answered (used_challenges), in
// the transaction that acts on it.
//
// Layout, 32 bytes:
//
//	0       version (1)
//	1       key hint: first byte of the id of the token key whose
//	        challenge_key made the tag
//	2..8    expiry, Unix ms, 48-bit big-endian
//	8..16   random
//	16..32  tag: HMAC-SHA256(challenge_key, mac input)[:16]
//
// mac input:
//
//	"qpc-challenge-v1" || 0x00 || purpose (1 byte) || device id (16 bytes)
//	|| account id (16 bytes; zeros for login) || binding (32 bytes; zeros
//	for login) || challenge[0:16]
const (
	ChallengeSize      = 32
	challengeVersion   = 1
	challengeTagOffset = 16
	challengeKeySize   = 32
)

var challengeMACContext = []byte("qpc-challenge-v1\x00")

// Purpose is what a challenge may be answered for.
type Purpose byte

// Purposes. Their names go into the signed re-authentication message.
const (
	PurposeLogin        Purpose = 1
	PurposeAddDevice    Purpose = 2
	PurposeRevokeDevice Purpose = 3
	// PurposeResetIdentity: the account's identity key is replaced
	// (ResetIdentityKey); the binding is SHA-256 of the new key.
	PurposeResetIdentity Purpose = 4
)

func (p Purpose) String() string {
	switch p {
	case PurposeLogin:
		return "login"
	case PurposeAddDevice:
		return "add-device"
	case PurposeRevokeDevice:
		return "revoke-device"
	case PurposeResetIdentity:
		return "reset-identity"
	}
	return fmt.Sprintf("purpose(%d)", byte(p))
}

// challengeFields is a decoded challenge (not yet authenticated).
type challengeFields struct {
	hint    byte
	expires int64 // Unix ms
	tag     []byte
	head    []byte // bytes 0..16, covered by the tag
}

// parseChallenge splits a challenge into its fields; ok is false for
// anything that is not a well-formed version-1 challenge.
func parseChallenge(c []byte) (challengeFields, bool) {
	if len(c) != ChallengeSize || c[0] != challengeVersion {
		return challengeFields{}, false
	}
	var exp [8]byte
	copy(exp[2:], c[2:8])
	return challengeFields{
		hint:    c[1],
		expires: int64(binary.BigEndian.Uint64(exp[:])),
		tag:     c[challengeTagOffset:],
		head:    c[:challengeTagOffset],
	}, true
}

// challengeBinding is what a challenge is for beyond its purpose and device.
type challengeBinding struct {
	purpose   Purpose
	deviceID  string   // the device that must answer
	accountID string   // "" for login
	binding   [32]byte // zeros for login
}

func (b challengeBinding) macInput(head []byte) ([]byte, bool) {
	dev, err := hex.DecodeString(b.deviceID)
	if err != nil || len(dev) != 16 {
		return nil, false
	}
	acc := make([]byte, 16)
	if b.accountID != "" {
		if acc, err = hex.DecodeString(b.accountID); err != nil || len(acc) != 16 {
			return nil, false
		}
	}
	m := make([]byte, 0, len(challengeMACContext)+1+16+16+32+len(head))
	m = append(m, challengeMACContext...)
	m = append(m, byte(b.purpose))
	m = append(m, dev...)
	m = append(m, acc...)
	m = append(m, b.binding[:]...)
	return append(m, head...), true
}

func challengeTag(key, input []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(input)
	return h.Sum(nil)[:ChallengeSize-challengeTagOffset]
}

// Binding of a re-authentication to its parameter: SHA-256 of the new
// device's signature key (add-device) or of the target device id's 32
// ASCII characters (revoke-device).
func reauthBinding(param []byte) [32]byte { return sha256.Sum256(param) }

// newChallenge makes a challenge for b that expires ttl from now, with the
// active token key's challenge key. An invalid device id still gets a
// challenge (that can never be answered), so the answer tells nothing.
func (s *Service) newChallenge(b challengeBinding, now time.Time) ([]byte, time.Time, error) {
	expires := fromMS(ms(now.Add(s.challengeTTL)))
	c := make([]byte, ChallengeSize)
	c[0] = challengeVersion
	var exp [8]byte
	binary.BigEndian.PutUint64(exp[:], uint64(ms(expires)))
	copy(c[2:8], exp[2:])
	if _, err := rand.Read(c[8:challengeTagOffset]); err != nil {
		return nil, time.Time{}, fmt.Errorf("auth: random: %w", err)
	}
	if _, ok := b.macInput(c[:challengeTagOffset]); !ok {
		// Not a device id: fill the rest with random bytes; it never verifies.
		if _, err := rand.Read(c[1:2]); err != nil {
			return nil, time.Time{}, fmt.Errorf("auth: random: %w", err)
		}
		if _, err := rand.Read(c[challengeTagOffset:]); err != nil {
			return nil, time.Time{}, fmt.Errorf("auth: random: %w", err)
		}
		return c, expires, nil
	}
	err := s.keys.withChallengeKey(func(hint byte, key []byte) {
		c[1] = hint
		input, _ := b.macInput(c[:challengeTagOffset]) // checked above
		copy(c[challengeTagOffset:], challengeTag(key, input))
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	return c, expires, nil
}

// checkChallenge verifies a challenge's tag and expiry for b. It does not
// check single use (consumeChallenge does, in the transaction that acts).
func (s *Service) checkChallenge(ctx context.Context, c []byte, b challengeBinding, now time.Time) (expires int64, ok bool) {
	f, ok := parseChallenge(c)
	if !ok {
		return 0, false
	}
	input, ok := b.macInput(f.head)
	if !ok {
		return 0, false
	}
	match := func() bool {
		found := false
		s.keys.eachChallengeKey(f.hint, func(key []byte) {
			if subtle.ConstantTimeCompare(challengeTag(key, input), f.tag) == 1 {
				found = true
			}
		})
		return found
	}
	good := match()
	if !good && !s.keys.hasChallengeHint(f.hint) && s.reloadAllowed() {
		// Made by another node with a key this node has not loaded yet.
		if err := s.loadKeys(ctx); err == nil {
			good = match()
		}
	}
	if !good || f.expires <= ms(now) {
		return 0, false
	}
	return f.expires, true
}

// consumeChallenge records c as answered inside tx; false if it already was.
// Expired records are dropped first: an expired challenge fails its check
// before it gets here, so its record is no longer needed.
func consumeChallenge(ctx context.Context, tx *sql.Tx, c []byte, expires int64, now time.Time) (bool, error) {
	if _, err := tx.ExecContext(ctx, "DELETE FROM used_challenges WHERE expires_at <= ?", ms(now)); err != nil {
		return false, err
	}
	res, err := tx.ExecContext(ctx, "INSERT INTO used_challenges (challenge_hash, expires_at) VALUES (?, ?) ON CONFLICT (challenge_hash) DO NOTHING",
		hash(c), expires)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// keyHint is the first byte of a token key id (16 hex characters).
func keyHint(id string) byte {
	b, err := hex.DecodeString(id[:2])
	if err != nil || len(b) != 1 {
		return 0
	}
	return b[0]
}

// withChallengeKey runs fn with the active key's challenge key and hint,
// under the read lock so a reload cannot wipe the key meanwhile.
func (r *keyring) withChallengeKey(fn func(hint byte, key []byte)) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.active == nil || r.active.challenge.Len() != challengeKeySize {
		return errors.New("auth: no active challenge key")
	}
	fn(keyHint(r.active.id), r.active.challenge.Reveal())
	return nil
}

// eachChallengeKey runs fn with every loaded challenge key whose hint matches.
func (r *keyring) eachChallengeKey(hint byte, fn func(key []byte)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id, k := range r.byID {
		if k.challenge.Len() == challengeKeySize && keyHint(id) == hint {
			fn(k.challenge.Reveal())
		}
	}
}

func (r *keyring) hasChallengeHint(hint byte) bool {
	found := false
	r.eachChallengeKey(hint, func([]byte) { found = true })
	return found
}
