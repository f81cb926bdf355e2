package keydir

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
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

// validate checks one KeyPackage for upload by dev at now: first every
// group-independent RFC 9420 check (mls.ValidateKeyPackage: version, suite
// in the allowlist, leaf source, lifetime, capabilities, key sizes, init key
// != encryption key, both signatures), then the directory's own policy:
// a BasicCredential naming this account and device, and the device's
// registered signature key as the leaf key.
func (d *Directory) validate(raw []byte, dev Device, now time.Time) (checked, error) {
	kp, err := decodeKeyPackage(raw)
	if err != nil {
		return checked{}, err
	}
	err = mls.ValidateKeyPackage(kp, mls.KeyPackagePolicy{AllowedSuites: d.allowed(), Now: now})
	switch {
	case errors.Is(err, mls.ErrUnsupportedCipherSuite):
		return checked{}, fmt.Errorf("%w: %w", ErrUnsupportedSuite, err)
	case err != nil:
		return checked{}, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	suite, err := mls.Suite(kp.CipherSuite)
	if err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrUnsupportedSuite, err)
	}
	leaf := &kp.LeafNode
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
	if err := checkCertificate(leaf, dev); err != nil {
		return checked{}, err
	}
	ref, err := kp.Ref(suite)
	if err != nil {
		return checked{}, fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	return checked{raw: raw, ref: ref, suite: kp.CipherSuite, notAfter: time.Unix(int64(min(leaf.Lifetime.NotAfter, 1<<62)), 0)}, nil
}

// checkCertificate requires, for an account with an identity key, the
// device certificate LeafNode extension (identity.ExtensionType) signed by
// that key and binding this account, device and leaf key. Clients check
// the same themselves; this only keeps uncertified KeyPackages out of the
// directory.
func checkCertificate(leaf *mls.LeafNode, dev Device) error {
	if len(dev.IdentityKey) == 0 {
		return nil
	}
	ik, err := identity.ParsePublicKey(dev.IdentityKey)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUncertified, err)
	}
	var raw []byte
	for _, x := range leaf.Extensions {
		if uint16(x.Type) == identity.ExtensionType {
			raw = x.Data
		}
	}
	if raw == nil {
		return fmt.Errorf("%w: the KeyPackage carries no device certificate; certify the device (qpc device approve) first", ErrUncertified)
	}
	cert, err := identity.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUncertified, err)
	}
	if err := cert.Verify(identity.Expect{AccountName: dev.AccountName, DeviceID: dev.ID, DeviceKey: leaf.SignatureKey, IdentityKey: &ik}); err != nil {
		return fmt.Errorf("%w: %w", ErrUncertified, err)
	}
	return nil
}

func (d *Directory) allowed() []mls.CipherSuiteID {
	out := make([]mls.CipherSuiteID, 0, len(d.suites))
	for s := range d.suites {
		out = append(out, s)
	}
	return out
}
