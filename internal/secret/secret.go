// Package secret holds key material in types that never print their bytes and
// can be wiped, so a key cannot leak through fmt, slog or JSON by accident.
package secret

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
)

// Redacted is what every secret prints as, in every format.
const Redacted = "[REDACTED]"

// ErrBadHex is returned when a hex-encoded secret is malformed or the wrong size.
var ErrBadHex = errors.New("secret: not valid hex of the expected length")

// Bytes is a variable-length secret (a key, a token, a passphrase).
// The zero value is empty. Copy it with Clone, never by slicing Reveal.
type Bytes struct {
	b []byte
}

// New takes ownership of b: the caller must not keep or reuse b.
func New(b []byte) Bytes { return Bytes{b: b} }

// FromHex decodes a hex secret that must be exactly size bytes long
// (size <= 0 accepts any length).
func FromHex(s string, size int) (Bytes, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return Bytes{}, fmt.Errorf("%w: %v", ErrBadHex, err)
	}
	if size > 0 && len(b) != size {
		Wipe(b)
		return Bytes{}, fmt.Errorf("%w: got %d bytes, want %d", ErrBadHex, len(b), size)
	}
	return Bytes{b: b}, nil
}

// Reveal returns the secret's bytes. Callers must not retain or log them.
func (s Bytes) Reveal() []byte { return s.b }

// Len is the secret's length in bytes.
func (s Bytes) Len() int { return len(s.b) }

// IsZero reports whether the secret is empty.
func (s Bytes) IsZero() bool { return len(s.b) == 0 }

// Clone returns an independent copy.
func (s Bytes) Clone() Bytes {
	if s.b == nil {
		return Bytes{}
	}
	return Bytes{b: append([]byte(nil), s.b...)}
}

// Equal compares two secrets in constant time (the length is not secret).
func (s Bytes) Equal(o Bytes) bool {
	return subtle.ConstantTimeCompare(s.b, o.b) == 1
}

// Hex returns the hex encoding, for writing a key file. Never log it.
func (s Bytes) Hex() string { return hex.EncodeToString(s.b) }

// Wipe overwrites the secret's bytes with zeros. The value is empty afterwards
// for this copy; other copies of the struct share the (now zeroed) bytes.
func (s *Bytes) Wipe() {
	Wipe(s.b)
	s.b = nil
}

// String implements fmt.Stringer without revealing anything.
func (s Bytes) String() string { return Redacted }

// GoString implements fmt.GoStringer for %#v.
func (s Bytes) GoString() string { return Redacted }

// Format makes every fmt verb (%x, %q, %v, ...) print the redaction marker.
func (s Bytes) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue implements slog.LogValuer.
func (s Bytes) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalText makes JSON, YAML and text encoders print the marker, never the bytes.
func (s Bytes) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// Wipe zeroes b in a way the compiler will not optimise away.
func Wipe(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}
