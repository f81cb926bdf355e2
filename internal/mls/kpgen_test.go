package mls

import (
	"errors"
	"testing"
	"time"
)

func TestGenerateKeyPackage(t *testing.T) { forEachSuite(t, testGenerateKeyPackage) }

func testGenerateKeyPackage(t *testing.T, id CipherSuiteID) {
	s, _ := Suite(id)
	sig, _, err := s.GenerateSignatureKey()
	mustNoErr(t, err, "sig key")
	now := time.Unix(1_800_000_000, 0)
	b, err := GenerateKeyPackage(id, BasicIdentity("alice", "dev1"), sig, KeyPackageOptions{Now: now, LastResort: true})
	mustNoErr(t, err, "GenerateKeyPackage")
	allow := KeyPackagePolicy{Now: now, AllowedSuites: []CipherSuiteID{id}}
	mustNoErr(t, ValidateKeyPackage(&b.KeyPackage, allow), "ValidateKeyPackage")
	if err := ValidateKeyPackage(&b.KeyPackage, KeyPackagePolicy{Now: now.Add(31 * 24 * time.Hour), AllowedSuites: allow.AllowedSuites}); !errors.Is(err, ErrInvalidKeyPackage) {
		t.Errorf("expired: %v", err)
	}
	if err := ValidateKeyPackage(&b.KeyPackage, KeyPackagePolicy{Now: now, AllowedSuites: []CipherSuiteID{3}}); !errors.Is(err, ErrUnsupportedCipherSuite) {
		t.Errorf("suite not allowed: %v", err)
	}
	raw, err := b.Marshal()
	mustNoErr(t, err, "Marshal")
	b2, err := UnmarshalKeyPackageBundle(raw)
	mustNoErr(t, err, "Unmarshal")
	raw2, _ := b2.Marshal()
	mustHex(t, raw2, raw, "bundle round trip")
	bad := b.KeyPackage
	bad.LeafNode.Capabilities.Credentials = nil
	if err := ValidateKeyPackage(&bad, allow); !errors.Is(err, ErrInvalidKeyPackage) {
		t.Errorf("capabilities: %v", err)
	}
	for i := range raw {
		_, _ = UnmarshalKeyPackageBundle(raw[:i])
	}
}
