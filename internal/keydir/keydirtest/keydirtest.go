// Package keydirtest builds MLS KeyPackages for tests of the directory and its RPCs.
//
// It starts from mls.GenerateKeyPackage and, where a test needs a broken
// one, changes it and signs it again: a suite outside the allowlist or
// unknown, a bad signature, another device's identity, an expired lifetime.
package keydirtest

import (
	"crypto/ed25519"
	"errors"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// Spec describes a KeyPackage to build. Zero values are sensible defaults:
// suite 1, valid from an hour before Now to 90 days after it.
type Spec struct {
	Identity string             // BasicCredential identity, "<account_name>/<device_id>"
	Key      ed25519.PrivateKey // signs the KeyPackage and the leaf; its public key is the leaf key
	Suite    mls.CipherSuiteID  // default 1; another value is claimed, keys and signatures stay suite 1's
	// Generate builds a genuine KeyPackage of this suite instead of suite
	// 1 (one signing with Ed25519: 1, 3 or an X-Wing suite).
	Generate mls.CipherSuiteID
	Now      time.Time // default time.Now()
	NotAfter time.Time // default Now + 90 days; may lie in the past
	// BadSignature corrupts the KeyPackage signature.
	BadSignature bool
	// Bare returns a bare KeyPackage instead of an MLSMessage.
	Bare bool
}

// KeyPackage builds and signs a KeyPackage (as an MLSMessage unless Bare).
func KeyPackage(s Spec) ([]byte, error) {
	if len(s.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("keydirtest: Spec.Key is not an Ed25519 private key")
	}
	if s.Now.IsZero() {
		s.Now = time.Now()
	}
	if s.NotAfter.IsZero() {
		s.NotAfter = s.Now.Add(90 * 24 * time.Hour)
	}
	id := mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519
	if s.Generate != 0 {
		id = s.Generate
	}
	base, err := mls.Suite(id)
	if err != nil {
		return nil, err
	}
	sk, _, err := base.SignaturePrivateKeyFromBytes(s.Key.Seed())
	if err != nil {
		return nil, err
	}
	b, err := mls.GenerateKeyPackage(base.ID(), []byte(s.Identity), sk, mls.KeyPackageOptions{Now: s.Now})
	if err != nil {
		return nil, err
	}
	defer b.Wipe()
	kp := b.KeyPackage
	// The lifetime (which may be in the past) and the claimed suite are the
	// test's: set them and sign again.
	kp.LeafNode.Lifetime.NotAfter = uint64(max(s.NotAfter.Unix(), 0))
	if err := base.SignLeafNode(&kp.LeafNode, nil, 0, sk); err != nil {
		return nil, err
	}
	if s.Suite != 0 {
		kp.CipherSuite = s.Suite
	}
	if err := base.SignKeyPackage(&kp, sk); err != nil {
		return nil, err
	}
	if s.BadSignature {
		kp.Signature[0] ^= 1
	}
	if s.Bare {
		return kp.Marshal()
	}
	return (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: &kp}).Marshal()
}
