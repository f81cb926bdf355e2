package identity

import (
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Safety numbers: what two people compare to know that each holds the
// other's real identity key (docs/protocol.md, "Safety numbers").
//
//	input  = "qpc-safety-number-v1" || 0x00
//	         || for each of the two accounts, sorted by name (bytewise):
//	              len(name) (1 byte) || name || identity key (32 bytes)
//	digest = SHA-512(input)
//	number = for i in 0..11: BE40(digest[5i:5i+5]) mod 100000, as 5 digits
//
// The sort makes the number the same on both sides. The keys are random
// Ed25519 keys, so no stretching is needed: finding another key pair with
// the same 60 digits (about 2^199 possibilities) is a preimage search.

const safetyContext = "qpc-safety-number-v1\x00"

// SafetyDigits is the length of a safety number.
const SafetyDigits = 60

// Party is one side of a safety number.
type Party struct {
	Name string
	Key  PublicKey
}

// SafetyNumber returns the 60-digit number for two accounts, the same
// whichever is a and which b.
func SafetyNumber(a, b Party) (string, error) {
	if a.Name == b.Name {
		return "", errors.New("identity: a safety number needs two different accounts")
	}
	if a.Name == "" || b.Name == "" || len(a.Name) > 255 || len(b.Name) > 255 {
		return "", errors.New("identity: account name empty or too long")
	}
	if a.Key.IsZero() || b.Key.IsZero() {
		return "", errors.New("identity: an account has no identity key")
	}
	if b.Name < a.Name {
		a, b = b, a
	}
	h := sha512.New()
	h.Write([]byte(safetyContext))
	for _, p := range []Party{a, b} {
		h.Write([]byte{byte(len(p.Name))})
		h.Write([]byte(p.Name))
		h.Write(p.Key[:])
	}
	d := h.Sum(nil)
	var sb strings.Builder
	for i := range SafetyDigits / 5 {
		var buf [8]byte
		copy(buf[3:], d[5*i:5*i+5])
		fmt.Fprintf(&sb, "%05d", binary.BigEndian.Uint64(buf[:])%100000)
	}
	return sb.String(), nil
}

// FormatSafetyNumber groups the digits in fives, three lines of four
// groups when lines is true, else one line.
func FormatSafetyNumber(n string, lines bool) string {
	var sb strings.Builder
	for i := 0; i < len(n); i += 5 {
		if i > 0 {
			if lines && i%20 == 0 {
				sb.WriteByte('\n')
			} else {
				sb.WriteByte(' ')
			}
		}
		sb.WriteString(n[i:min(i+5, len(n))])
	}
	return sb.String()
}

// NormaliseSafetyNumber strips spaces, dashes and newlines from a typed
// number; "" when what is left is not 60 digits.
func NormaliseSafetyNumber(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == '\n' || r == '\t' {
			return -1
		}
		return r
	}, s)
	if len(s) != SafetyDigits || strings.Trim(s, "0123456789") != "" {
		return ""
	}
	return s
}

// SameSafetyNumber compares a typed number with the computed one in
// constant time.
func SameSafetyNumber(typed, computed string) bool {
	t := NormaliseSafetyNumber(typed)
	return t != "" && subtle.ConstantTimeCompare([]byte(t), []byte(computed)) == 1
}
