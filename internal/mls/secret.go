package mls

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"runtime"
)

// redacted is what every secret-bearing type prints instead of its bytes.
const redacted = "[REDACTED]"

// secretBuf owns the bytes of a Secret. It is separate from Secret so that a
// GC cleanup can wipe the bytes once the last Secret sharing it is dropped,
// and so that fmt, printing a struct with an unexported Secret field, shows a
// pointer rather than the bytes.
type secretBuf struct {
	b []byte
}

// Secret holds key material: epoch secrets, ratchet secrets, AEAD keys and
// nonces, private keys. It never prints its bytes (fmt verbs, %#v, slog) and
// its bytes are zeroed by Wipe, or by the garbage collector once the Secret
// is unreachable. The zero Secret is empty.
//
// Copies of a Secret share the same bytes: Wipe on one wipes all. Use Clone
// for an independent copy.
type Secret struct {
	p *secretBuf
}

// NewSecret returns a Secret holding a copy of b.
func NewSecret(b []byte) Secret {
	c := make([]byte, len(b))
	copy(c, b)
	return adoptSecret(c)
}

// adoptSecret wraps b without copying; the caller must not keep b.
func adoptSecret(b []byte) Secret {
	p := &secretBuf{b: b}
	if len(b) > 0 {
		runtime.AddCleanup(p, wipeBytes, b)
	}
	return Secret{p: p}
}

func wipeBytes(b []byte) { clear(b) }

// Bytes returns the secret's bytes. The slice aliases the Secret: do not
// keep or modify it, and expect it zeroed after Wipe.
func (s Secret) Bytes() []byte {
	if s.p == nil {
		return nil
	}
	return s.p.b
}

// Len is the length of the secret in bytes.
func (s Secret) Len() int { return len(s.Bytes()) }

// IsZero reports whether the secret is empty or all zero bytes.
func (s Secret) IsZero() bool {
	var acc byte
	for _, c := range s.Bytes() {
		acc |= c
	}
	return acc == 0
}

// Equal compares two secrets in constant time (for equal lengths).
func (s Secret) Equal(o Secret) bool {
	return subtle.ConstantTimeCompare(s.Bytes(), o.Bytes()) == 1
}

// Clone returns an independent copy.
func (s Secret) Clone() Secret { return NewSecret(s.Bytes()) }

// Wipe zeroes the bytes (shared by every copy of this Secret).
func (s Secret) Wipe() {
	if s.p != nil {
		clear(s.p.b)
	}
}

// String implements fmt.Stringer without revealing the bytes.
func (s Secret) String() string { return "mls.Secret" + redacted }

// GoString implements fmt.GoStringer without revealing the bytes.
func (s Secret) GoString() string { return s.String() }

// Format implements fmt.Formatter so that every verb (%x, %v, %#v...) prints
// the redaction marker.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// constantTimeEqual compares MACs and tags.
func constantTimeEqual(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
