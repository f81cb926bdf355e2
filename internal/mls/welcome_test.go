package mls

import (
	"errors"
	"testing"
)

type welcomeCase struct {
	CipherSuite CipherSuiteID `json:"cipher_suite"`
	InitPriv    hexBytes      `json:"init_priv"`
	SignerPub   hexBytes      `json:"signer_pub"`
	KeyPackage  hexBytes      `json:"key_package"`
	Welcome     hexBytes      `json:"welcome"`
}

func TestWelcomeVectors(t *testing.T) {
	runVectors(t, "welcome.json", func(c *welcomeCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *welcomeCase) {
			kp := decodeMLS(t, tc.KeyPackage, WireFormatKeyPackage).KeyPackage
			w := decodeMLS(t, tc.Welcome, WireFormatWelcome).Welcome
			initPriv, initPub, err := s.HPKEPrivateKeyFromBytes(tc.InitPriv)
			mustNoErr(t, err, "init_priv")
			mustHex(t, initPub, kp.InitKey, "init key of init_priv")
			ref, err := kp.Ref(s)
			mustNoErr(t, err, "KeyPackageRef")

			gs, err := s.DecryptGroupSecrets(w, ref, initPriv)
			mustNoErr(t, err, "DecryptGroupSecrets")
			gi, err := s.DecryptGroupInfo(w, gs.JoinerSecret, Secret{})
			mustNoErr(t, err, "DecryptGroupInfo")
			mustNoErr(t, s.VerifyGroupInfo(gi, SignaturePublicKey(tc.SignerPub)), "GroupInfo signature")
			es, err := s.VerifyWelcomeConfirmation(gi, gs.JoinerSecret, Secret{})
			mustNoErr(t, err, "confirmation tag")
			es.Wipe()

			// Negative checks: wrong KeyPackage, tampered tag and signature.
			if _, err := s.DecryptGroupSecrets(w, append([]byte{1}, ref...), initPriv); !errors.Is(err, ErrNotFound) {
				t.Errorf("unknown KeyPackageRef: err = %v", err)
			}
			bad := *gi
			bad.ConfirmationTag = append([]byte(nil), gi.ConfirmationTag...)
			bad.ConfirmationTag[0] ^= 1
			if _, err := s.VerifyWelcomeConfirmation(&bad, gs.JoinerSecret, Secret{}); !errors.Is(err, ErrBadConfirmationTag) {
				t.Errorf("tampered confirmation tag: err = %v", err)
			}
			if err := s.VerifyGroupInfo(&bad, SignaturePublicKey(tc.SignerPub)); !errors.Is(err, ErrInvalidSignature) {
				t.Errorf("GroupInfo with changed tag: err = %v, want ErrInvalidSignature", err)
			}

			// Re-encrypt the same contents into a fresh Welcome and open it.
			ws, err := s.WelcomeSecret(gs.JoinerSecret, Secret{})
			mustNoErr(t, err, "WelcomeSecret")
			egi, err := s.EncryptGroupInfo(gi, ws)
			mustNoErr(t, err, "EncryptGroupInfo")
			egs, err := s.EncryptGroupSecrets(kp, gs, egi)
			mustNoErr(t, err, "EncryptGroupSecrets")
			w2 := &Welcome{CipherSuite: s.ID(), Secrets: []EncryptedGroupSecrets{egs}, EncryptedGroupInfo: egi}
			gs2, err := s.DecryptGroupSecrets(w2, ref, initPriv)
			mustNoErr(t, err, "DecryptGroupSecrets(own)")
			if !gs2.JoinerSecret.Equal(gs.JoinerSecret) {
				t.Error("joiner secret differs after re-encryption")
			}
			gi2, err := s.DecryptGroupInfo(w2, gs2.JoinerSecret, Secret{})
			mustNoErr(t, err, "DecryptGroupInfo(own)")
			mustNoErr(t, s.VerifyGroupInfo(gi2, SignaturePublicKey(tc.SignerPub)), "GroupInfo signature (own)")
		})
}

// TestWelcomeSealer checks the batched HPKE sealer against circl's
// receiver (DecryptWithLabel) for every suite.
func TestWelcomeSealer(t *testing.T) {
	for _, id := range SuiteIDs() {
		s, err := Suite(id)
		mustNoErr(t, err, "suite")
		priv, pub, err := s.GenerateHPKEKey()
		mustNoErr(t, err, "key")
		egi := []byte("encrypted group info")
		info, err := encryptContext("Welcome", egi)
		mustNoErr(t, err, "info")
		w := s.newWelcomeSealer(info)
		for i := 0; i < 2; i++ {
			ct, err := w.seal(pub, []byte("group secrets"))
			mustNoErr(t, err, "seal")
			pt, err := s.DecryptWithLabel(priv, "Welcome", egi, ct)
			mustNoErr(t, err, "open")
			if string(pt) != "group secrets" {
				t.Fatalf("suite %d: %q", id, pt)
			}
		}
	}
}
