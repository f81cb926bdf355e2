// Package keydirtest builds MLS KeyPackages for tests of the directory and its RPCs.
//
// Unlike mls.GenerateKeyPackage it also builds the broken ones the tests
// need (a suite outside the allowlist or unknown, a bad signature, another
// device's identity, an expired lifetime).
package keydirtest

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// Spec describes a KeyPackage to build. Zero values are sensible defaults:
// suite 1, valid from an hour before Now to 90 days after it.
type Spec struct {
	Identity string             // BasicCredential identity, "<account_name>/<device_id>"
	Key      ed25519.PrivateKey // signs the KeyPackage and the leaf; its public key is the leaf key
	Suite    mls.CipherSuiteID  // default 1
	Now      time.Time          // default time.Now()
	NotAfter time.Time          // default Now + 90 days
	// BadSignature corrupts the KeyPackage signature.
	BadSignature bool
	// Bare returns a bare KeyPackage instead of an MLSMessage.
	Bare bool
}

// KeyPackage builds and signs a KeyPackage (as an MLSMessage unless Bare).
// A suite other than 1 or 3 is still signed with the Ed25519 key, so its
// signature is only meaningful to suites 1 and 3; the directory refuses
// other suites before it checks signatures.
func KeyPackage(s Spec) ([]byte, error) {
	if s.Suite == 0 {
		s.Suite = mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519
	}
	if s.Now.IsZero() {
		s.Now = time.Now()
	}
	if s.NotAfter.IsZero() {
		s.NotAfter = s.Now.Add(90 * 24 * time.Hour)
	}
	if len(s.Key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("keydirtest: Spec.Key is not an Ed25519 private key")
	}
	// Keys and signatures use suite 1's primitives (Ed25519, X25519); the
	// KeyPackage only claims s.Suite.
	base, err := mls.Suite(mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519)
	if err != nil {
		return nil, err
	}
	sk, pub, err := base.SignaturePrivateKeyFromBytes(s.Key.Seed())
	if err != nil {
		return nil, err
	}
	_, initPub, err := base.GenerateHPKEKey()
	if err != nil {
		return nil, err
	}
	_, encPub, err := base.GenerateHPKEKey()
	if err != nil {
		return nil, err
	}
	kp := &mls.KeyPackage{
		Version:     mls.ProtocolVersionMLS10,
		CipherSuite: s.Suite,
		InitKey:     initPub,
		LeafNode: mls.LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  pub,
			Credential:    mls.Credential{Type: mls.CredentialTypeBasic, Identity: []byte(s.Identity)},
			Capabilities: mls.Capabilities{
				Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
				CipherSuites: []mls.CipherSuiteID{s.Suite},
				Credentials:  []mls.CredentialType{mls.CredentialTypeBasic},
			},
			Source:   mls.LeafNodeSourceKeyPackage,
			Lifetime: mls.Lifetime{NotBefore: uint64(s.Now.Add(-time.Hour).Unix()), NotAfter: uint64(s.NotAfter.Unix())},
		},
	}
	ltbs, err := kp.LeafNode.TBS(nil, 0)
	if err != nil {
		return nil, err
	}
	if kp.LeafNode.Signature, err = base.SignWithLabel(sk, "LeafNodeTBS", ltbs); err != nil {
		return nil, err
	}
	tbs, err := kp.TBS()
	if err != nil {
		return nil, err
	}
	if kp.Signature, err = base.SignWithLabel(sk, "KeyPackageTBS", tbs); err != nil {
		return nil, err
	}
	if s.BadSignature {
		kp.Signature[0] ^= 1
	}
	if s.Bare {
		return kp.Marshal()
	}
	return (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}).Marshal()
}
