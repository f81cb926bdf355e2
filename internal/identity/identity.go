// Package identity holds account identity keys, the device certificates
// they sign, and the safety numbers people compare to verify each other
// (docs/protocol.md, "Account identity and device certificates"). It does
// no I/O: the client and the server both use it.
package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// ExtensionType is the MLS LeafNode extension that carries a device's
// certificate: 0xF0C1, in the private-use range of RFC 9420 §17.3.
const ExtensionType uint16 = 0xF0C1

// KeySize is the size of identity and device public keys (Ed25519).
const KeySize = ed25519.PublicKeySize

var (
	// ErrMalformed: the bytes are not a device certificate.
	ErrMalformed = errors.New("identity: malformed device certificate")
	// ErrBadSignature: the certificate was not signed by the identity key it names.
	ErrBadSignature = errors.New("identity: device certificate signature does not verify")
	// ErrMismatch: the certificate is valid but for another account, device,
	// key or identity key than expected.
	ErrMismatch = errors.New("identity: device certificate does not match")
)

// PublicKey is an account identity public key (Ed25519).
type PublicKey [KeySize]byte

// ParsePublicKey copies a 32-byte key.
func ParsePublicKey(b []byte) (PublicKey, error) {
	var k PublicKey
	if len(b) != KeySize {
		return k, fmt.Errorf("identity: key of %d bytes, want %d", len(b), KeySize)
	}
	copy(k[:], b)
	return k, nil
}

// Equal compares in constant time.
func (k PublicKey) Equal(o PublicKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// IsZero reports an unset key.
func (k PublicKey) IsZero() bool { return k == PublicKey{} }

// Bytes returns a copy of the key.
func (k PublicKey) Bytes() []byte { return append([]byte(nil), k[:]...) }

// String is the key's fingerprint, never mistaken for the key itself.
func (k PublicKey) String() string { return "identity:" + Fingerprint(k[:]) }

// PrivateKey is an account identity private key: an Ed25519 seed that
// prints as [REDACTED] and is wiped with Wipe.
type PrivateKey struct{ seed secret.Bytes }

// Generate makes a new identity key.
func Generate() (PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("identity: generate key: %w", err)
	}
	p := PrivateKey{seed: secret.New(append([]byte(nil), priv.Seed()...))}
	secret.Wipe(priv)
	return p, nil
}

// PrivateKeyFromSeed wraps a stored 32-byte seed (the bytes are taken over).
func PrivateKeyFromSeed(seed []byte) (PrivateKey, error) {
	if len(seed) != ed25519.SeedSize {
		return PrivateKey{}, fmt.Errorf("identity: stored key is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return PrivateKey{seed: secret.New(seed)}, nil
}

// Seed reveals the seed, for storing it in the encrypted database.
func (p PrivateKey) Seed() []byte { return p.seed.Reveal() }

// IsZero reports an unset key.
func (p PrivateKey) IsZero() bool { return p.seed.IsZero() }

// Wipe zeroes the seed.
func (p *PrivateKey) Wipe() { p.seed.Wipe() }

// Public returns the public key.
func (p PrivateKey) Public() PublicKey {
	priv := ed25519.NewKeyFromSeed(p.seed.Reveal())
	defer secret.Wipe(priv)
	var k PublicKey
	copy(k[:], priv[32:])
	return k
}

func (p PrivateKey) sign(msg []byte) []byte {
	priv := ed25519.NewKeyFromSeed(p.seed.Reveal())
	defer secret.Wipe(priv)
	return ed25519.Sign(priv, msg)
}

// String never prints the seed.
func (p PrivateKey) String() string { return secret.Redacted }

// Certificate binds a device (account name, device id, the device's
// Ed25519 signature key, which is also its MLS signature key) to the
// account's identity key. Only the identity key signs certificates.
type Certificate struct {
	AccountName string
	DeviceID    string    // 32 lower-case hex characters
	DeviceKey   PublicKey // the device's signature key
	IdentityKey PublicKey // the account identity key that signed
	Issued      time.Time // millisecond precision
	Signature   []byte    // Ed25519 by IdentityKey over signedMessage
}

const certVersion = 1

// certContext prefixes the signed bytes, so no other qpc signature can be
// taken for a certificate.
const certContext = "qpc-device-cert-v1\x00"

func (c *Certificate) tbs(b *cryptobyte.Builder) {
	b.AddUint8(certVersion)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(c.AccountName)) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(c.DeviceID)) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.DeviceKey[:]) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.IdentityKey[:]) })
	b.AddUint64(uint64(c.Issued.UnixMilli()))
}

func (c *Certificate) signedMessage() ([]byte, error) {
	b := cryptobyte.NewBuilder([]byte(certContext))
	c.tbs(b)
	return b.Bytes()
}

// Issue signs a certificate for a device with the identity key.
func Issue(id PrivateKey, accountName, deviceID string, deviceKey []byte, now time.Time) (*Certificate, error) {
	dk, err := ParsePublicKey(deviceKey)
	if err != nil {
		return nil, err
	}
	c := &Certificate{AccountName: accountName, DeviceID: deviceID, DeviceKey: dk, IdentityKey: id.Public(),
		Issued: time.UnixMilli(now.UnixMilli())}
	if err := c.checkFields(); err != nil {
		return nil, err
	}
	msg, err := c.signedMessage()
	if err != nil {
		return nil, fmt.Errorf("identity: encode certificate: %w", err)
	}
	c.Signature = id.sign(msg)
	return c, nil
}

func (c *Certificate) checkFields() error {
	if c.AccountName == "" || len(c.AccountName) > 32 || strings.Contains(c.AccountName, "/") {
		return fmt.Errorf("%w: account name %q", ErrMalformed, c.AccountName)
	}
	if len(c.DeviceID) != 32 || strings.Trim(c.DeviceID, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: device id %q", ErrMalformed, c.DeviceID)
	}
	if c.DeviceKey.IsZero() || c.IdentityKey.IsZero() {
		return fmt.Errorf("%w: zero key", ErrMalformed)
	}
	if c.DeviceKey.Equal(c.IdentityKey) {
		return fmt.Errorf("%w: the device key is the identity key", ErrMalformed)
	}
	return nil
}

// Marshal encodes the certificate (the bytes that travel in the LeafNode
// extension and are stored by the server).
func (c *Certificate) Marshal() ([]byte, error) {
	b := cryptobyte.NewBuilder(nil)
	c.tbs(b)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.Signature) })
	return b.Bytes()
}

// Parse decodes a certificate; it does not verify it (Verify does).
// Trailing bytes, wrong lengths and unknown versions are refused.
func Parse(raw []byte) (*Certificate, error) {
	s := cryptobyte.String(raw)
	var (
		ver                    uint8
		name, dev, dk, ik, sig cryptobyte.String
		issued                 uint64
	)
	if !s.ReadUint8(&ver) {
		return nil, ErrMalformed
	}
	if ver != certVersion {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, ver)
	}
	if !s.ReadUint8LengthPrefixed(&name) || !s.ReadUint8LengthPrefixed(&dev) || !s.ReadUint8LengthPrefixed(&dk) ||
		!s.ReadUint8LengthPrefixed(&ik) || !s.ReadUint64(&issued) || !s.ReadUint8LengthPrefixed(&sig) || !s.Empty() {
		return nil, ErrMalformed
	}
	if len(dk) != KeySize || len(ik) != KeySize || len(sig) != ed25519.SignatureSize || issued > 1<<62 {
		return nil, fmt.Errorf("%w: field sizes", ErrMalformed)
	}
	c := &Certificate{AccountName: string(name), DeviceID: string(dev), Issued: time.UnixMilli(int64(issued)),
		Signature: append([]byte(nil), sig...)}
	copy(c.DeviceKey[:], dk)
	copy(c.IdentityKey[:], ik)
	if err := c.checkFields(); err != nil {
		return nil, err
	}
	return c, nil
}

// VerifySignature checks that the identity key the certificate names signed it.
func (c *Certificate) VerifySignature() error {
	if err := c.checkFields(); err != nil {
		return err
	}
	msg, err := c.signedMessage()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if !ed25519.Verify(ed25519.PublicKey(c.IdentityKey[:]), msg, c.Signature) {
		return ErrBadSignature
	}
	return nil
}

// Expect is what a certificate must bind to be accepted for a device.
type Expect struct {
	AccountName string
	DeviceID    string
	DeviceKey   []byte
	// IdentityKey, when set, is the key the certificate must be signed by
	// (the one pinned or stored for the account).
	IdentityKey *PublicKey
}

// Verify checks the signature and that the certificate binds exactly
// what is expected. Every failure wraps ErrMalformed, ErrBadSignature or
// ErrMismatch.
func (c *Certificate) Verify(want Expect) error {
	if err := c.VerifySignature(); err != nil {
		return err
	}
	if c.AccountName != want.AccountName {
		return fmt.Errorf("%w: certificate is for account %q, not %q", ErrMismatch, c.AccountName, want.AccountName)
	}
	if c.DeviceID != want.DeviceID {
		return fmt.Errorf("%w: certificate is for device %s, not %s", ErrMismatch, c.DeviceID, want.DeviceID)
	}
	if subtle.ConstantTimeCompare(c.DeviceKey[:], want.DeviceKey) != 1 {
		return fmt.Errorf("%w: certificate is for another device key", ErrMismatch)
	}
	if want.IdentityKey != nil && !c.IdentityKey.Equal(*want.IdentityKey) {
		return fmt.Errorf("%w: certificate is signed by identity key %s, not the account's %s", ErrMismatch,
			Fingerprint(c.IdentityKey[:]), Fingerprint(want.IdentityKey[:]))
	}
	return nil
}

// fingerprintEncoding is RFC 4648 base32 without padding, lower case.
var fingerprintEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Fingerprint is a short, typeable name of a public key: the first 10
// bytes of its SHA-256 in lower-case base32, in four groups of four
// ("abcd-efgh-ijkl-mnop"). `qpc device link` shows a device key's
// fingerprint as the code `qpc device approve` takes.
func Fingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	s := strings.ToLower(fingerprintEncoding.EncodeToString(sum[:10]))
	return s[0:4] + "-" + s[4:8] + "-" + s[8:12] + "-" + s[12:16]
}

// NormaliseCode turns a typed fingerprint (any case, spaces or dashes)
// into Fingerprint's form, or "" when it cannot be one.
func NormaliseCode(code string) string {
	s := strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == ' ':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return r
	}, code)
	if len(s) != 16 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		return ""
	}
	return s[0:4] + "-" + s[4:8] + "-" + s[8:12] + "-" + s[12:16]
}
