package mls

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"runtime"
)

// redacted is what every secret-bearing type prints instead of its bytes.
const redacted = "[REDACTED]"

// secretBuf owns the bytes of a Secret. It is separate from Secret so that
// copies of a Secret share the bytes (Wipe on one wipes all), and so that
// fmt, printing a struct with an unexported Secret field, shows a pointer
// rather than the bytes.
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
	if len(b) == 0 {
		return Secret{p: &secretBuf{b: b}}
	}
	c := wipedBytes(len(b))
	copy(c, b)
	return Secret{p: &secretBuf{b: c}}
}

// adoptSecret takes over b: its bytes move into a Secret and b is zeroed;
// the caller must not keep b.
func adoptSecret(b []byte) Secret {
	s := NewSecret(b)
	clear(b)
	return s
}

// wipedBytes returns n bytes that are zeroed when the garbage collector
// finds them unreachable. The wipe is a finalizer on the bytes' own array,
// so it cannot run while anyone still holds a slice of them. Bytes hands
// out aliases, and the cleanup this replaced, tied to a separate owner
// object, could zero a key while a caller was still reading it once the
// owning Secret itself was no longer used (a Welcome for suite 5 failed to
// open about once in 200 runs that way). A finalizer needs an object of
// its own; secrets are keys and hashes, so a few array sizes cover them.
func wipedBytes(n int) []byte {
	switch {
	case n <= 32:
		p := new([32]byte)
		runtime.SetFinalizer(p, func(p *[32]byte) { clear(p[:]) })
		return p[:n:n]
	case n <= 64:
		p := new([64]byte)
		runtime.SetFinalizer(p, func(p *[64]byte) { clear(p[:]) })
		return p[:n:n]
	case n <= 128:
		p := new([128]byte)
		runtime.SetFinalizer(p, func(p *[128]byte) { clear(p[:]) })
		return p[:n:n]
	case n <= 1024:
		p := new([1024]byte)
		runtime.SetFinalizer(p, func(p *[1024]byte) { clear(p[:]) })
		return p[:n:n]
	}
	// Larger than any key or hash this package holds: wiped by Wipe only.
	return make([]byte, n)
}

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
