package mls

import (
	"errors"
	"testing"
	"time"
)

func TestVerifyKeyPackage(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	runVectors(t, "welcome.json", func(c *welcomeCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *welcomeCase) {
			kp := decodeMLS(t, tc.KeyPackage, WireFormatKeyPackage).KeyPackage
			mustNoErr(t, s.VerifyKeyPackage(kp, now), "VerifyKeyPackage(vector)")

			bad := *kp
			bad.Signature = append([]byte(nil), kp.Signature...)
			bad.Signature[len(bad.Signature)/2] ^= 1
			if err := s.VerifyKeyPackage(&bad, now); !errors.Is(err, ErrInvalidSignature) {
				t.Errorf("tampered signature: err = %v", err)
			}
			bad = *kp
			bad.InitKey = kp.LeafNode.EncryptionKey
			if err := s.VerifyKeyPackage(&bad, now); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("init key = encryption key: err = %v", err)
			}
			if err := s.VerifyKeyPackage(kp, time.Unix(int64(kp.LeafNode.Lifetime.NotBefore)-1, 0)); kp.LeafNode.Lifetime.NotBefore > 0 && !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("before lifetime: err = %v", err)
			}

			// Build and sign a fresh KeyPackage, then verify it.
			sigPriv, sigPub, err := s.GenerateSignatureKey()
			mustNoErr(t, err, "signature key")
			_, encPub, err := s.GenerateHPKEKey()
			mustNoErr(t, err, "encryption key")
			_, initPub, err := s.GenerateHPKEKey()
			mustNoErr(t, err, "init key")
			own := &KeyPackage{
				Version: ProtocolVersionMLS10, CipherSuite: s.ID(), InitKey: initPub,
				LeafNode: LeafNode{
					EncryptionKey: encPub, SignatureKey: sigPub,
					Credential:   Credential{Type: CredentialTypeBasic, Identity: []byte("alice")},
					Capabilities: Capabilities{Versions: []ProtocolVersion{ProtocolVersionMLS10}, CipherSuites: []CipherSuiteID{s.ID()}},
					Source:       LeafNodeSourceKeyPackage,
					Lifetime:     Lifetime{NotBefore: uint64(now.Unix()) - 60, NotAfter: uint64(now.Unix()) + 86400},
				},
			}
			mustNoErr(t, s.SignLeafNode(&own.LeafNode, nil, 0, sigPriv), "SignLeafNode")
			mustNoErr(t, s.SignKeyPackage(own, sigPriv), "SignKeyPackage")
			b, err := own.Marshal()
			mustNoErr(t, err, "Marshal")
			var back KeyPackage
			mustNoErr(t, back.Unmarshal(b), "Unmarshal")
			mustNoErr(t, s.VerifyKeyPackage(&back, now), "VerifyKeyPackage(own)")
			if err := s.VerifyKeyPackage(&back, now.Add(48*time.Hour)); !errors.Is(err, ErrInvalidKeyPackage) {
				t.Errorf("expired: err = %v", err)
			}
		})
}
