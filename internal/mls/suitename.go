package mls

import (
	"fmt"
	"strconv"
	"strings"
)

// suiteNames are the registered names (RFC 9420 §17.1) and, for the
// private-use X-Wing suites, the names ts-mls gives them.
var suiteNames = map[CipherSuiteID]string{
	MLS128DHKEMX25519AES128GCMSHA256Ed25519:        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
	MLS128DHKEMP256AES128GCMSHA256P256:             "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
	MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519: "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
	MLS256DHKEMX448AES256GCMSHA512Ed448:            "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448",
	MLS256DHKEMP521AES256GCMSHA512P521:             "MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
	MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448:     "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448",
	MLS256DHKEMP384AES256GCMSHA384P384:             "MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
	MLS256XWingAES256GCMSHA512Ed25519:              "MLS_256_XWING_AES256GCM_SHA512_Ed25519",
	MLS256XWingChaCha20Poly1305SHA512Ed25519:       "MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519",
}

// String is the suite's name, or "suite 0x...." for one this package does
// not implement.
func (id CipherSuiteID) String() string {
	if n, ok := suiteNames[id]; ok {
		return n
	}
	return fmt.Sprintf("suite %#04x", uint16(id))
}

// ParseCipherSuite reads an implemented suite by name (case-insensitive,
// as String prints it), by decimal number ("1") or by hex ("0xF00D").
// Anything else wraps ErrUnsupportedCipherSuite.
func ParseCipherSuite(s string) (CipherSuiteID, error) {
	s = strings.TrimSpace(s)
	for id, n := range suiteNames {
		if strings.EqualFold(n, s) {
			return id, nil
		}
	}
	n, err := strconv.ParseUint(s, 0, 16)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a suite name or number", ErrUnsupportedCipherSuite, s)
	}
	id := CipherSuiteID(n)
	if _, err := Suite(id); err != nil {
		return 0, err
	}
	return id, nil
}
