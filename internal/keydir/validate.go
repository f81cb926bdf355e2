package keydir

import (
	"crypto/subtle"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// checked is a KeyPackage that passed validation.
type checked struct {
	raw        []byte // as uploaded
	ref        []byte // KeyPackageRef
	suite      mls.CipherSuiteID
	notAfter   time.Time
	lastResort bool
}

// Identity is the BasicCredential identity a device's KeyPackages carry.
func Identity(accountName, deviceID string) string { return accountName + "/" + deviceID }

// decodeKeyPackage accepts an MLSMessage carrying a KeyPackage or a bare
// KeyPackage.
func decodeKeyPackage(raw []byte) (*mls.KeyPackage, error) {
	var msg mls.MLSMessage
	if err := msg.Unmarshal(raw); err == nil {
		if msg.WireFormat != mls.WireFormatKeyPackage || msg.KeyPackage == nil {
			return nil, fmt.Errorf("%w: MLSMessage of wire format %d, want mls_key_package (5)", ErrInvalidKeyPackage, msg.WireFormat)
		}
		return msg.KeyPackage, nil
	}
	var kp mls.KeyPackage
	if err := kp.Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	return &kp, nil
}

// validate checks one KeyPackage for upload by dev at now.
//
// INTERIM: internal/mls part 2 will provide KeyPackage validation
// (signature, suite, lifetime, capabilities, leaf node source); until it
// lands this function does the checks itself with the part-1 primitives.
// Switch to the mls function when it exists; keep the binding checks
// (credential identity and signature key against the registered device),
// which are the directory's own policy.
func (d *Directory) validate(raw []byte, dev Device, now time.Time) (checked, error) {
	kp, err := decodeKeyPackage(raw)
	if err != nil {
		return checked{}, err
	}
	if kp.Version != mls.ProtocolVersionMLS10 {
		return checked{}, fmt.Errorf("%w: protocol version %d", ErrInvalidKeyPackage, kp.Version)
	}
	if !d.suites[kp.CipherSuite] {
		return checked{}, fmt.Errorf("%w: suite %d (allowed: %v)", ErrUnsupportedSuite, kp.CipherSuite, d.allowed())
	}
	suite, err := mls.Suite(kp.CipherSuite)
	if err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrUnsupportedSuite, err)
	}
	leaf := &kp.LeafNode
	if leaf.Source != mls.LeafNodeSourceKeyPackage {
		return checked{}, fmt.Errorf("%w: leaf node source %d, want key_package", ErrInvalidKeyPackage, leaf.Source)
	}
	if len(kp.InitKey) == 0 || subtle.ConstantTimeCompare(kp.InitKey, leaf.EncryptionKey) == 1 {
		return checked{}, fmt.Errorf("%w: init key missing or equal to the leaf encryption key", ErrInvalidKeyPackage)
	}
	tbs, err := kp.TBS()
	if err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	if err := suite.VerifyWithLabel(leaf.SignatureKey, "KeyPackageTBS", tbs, kp.Signature); err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	ltbs, err := leaf.TBS(nil, 0)
	if err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	if err := suite.VerifyWithLabel(leaf.SignatureKey, "LeafNodeTBS", ltbs, leaf.Signature); err != nil {
		return checked{}, fmt.Errorf("%w: leaf node: %w", ErrInvalidKeyPackage, err)
	}
	if !hasCredentialType(leaf.Capabilities.Credentials, leaf.Credential.Type) {
		return checked{}, fmt.Errorf("%w: capabilities do not list the leaf's credential type", ErrInvalidKeyPackage)
	}
	lt := leaf.Lifetime
	if lt.NotAfter > 1<<62 || lt.NotBefore > lt.NotAfter {
		return checked{}, fmt.Errorf("%w: lifetime %d..%d", ErrInvalidKeyPackage, lt.NotBefore, lt.NotAfter)
	}
	nowS := uint64(max(now.Unix(), 0))
	if nowS < lt.NotBefore || nowS >= lt.NotAfter {
		return checked{}, fmt.Errorf("%w: outside its lifetime (%d..%d, now %d)", ErrInvalidKeyPackage, lt.NotBefore, lt.NotAfter, nowS)
	}
	// Binding: the credential names this account and device, and the leaf's
	// key is the device's registered key.
	if leaf.Credential.Type != mls.CredentialTypeBasic {
		return checked{}, fmt.Errorf("%w: credential type %d, want basic", ErrNotOwner, leaf.Credential.Type)
	}
	want := Identity(dev.AccountName, dev.ID)
	if subtle.ConstantTimeCompare(leaf.Credential.Identity, []byte(want)) != 1 {
		return checked{}, fmt.Errorf("%w: credential identity is not %q", ErrNotOwner, want)
	}
	if len(dev.SignatureKey) == 0 || subtle.ConstantTimeCompare(leaf.SignatureKey, dev.SignatureKey) != 1 {
		return checked{}, fmt.Errorf("%w: leaf signature key is not the device's registered key", ErrNotOwner)
	}
	ref, err := kp.Ref(suite)
	if err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	return checked{raw: raw, ref: ref, suite: kp.CipherSuite, notAfter: time.Unix(int64(lt.NotAfter), 0)}, nil
}

func hasCredentialType(l []mls.CredentialType, t mls.CredentialType) bool {
	for _, v := range l {
		if v == t {
			return true
		}
	}
	return false
}

func (d *Directory) allowed() []mls.CipherSuiteID {
	out := make([]mls.CipherSuiteID, 0, len(d.suites))
	for s := range d.suites {
		out = append(out, s)
	}
	return out
}
