package mls

import (
	"testing"
	"time"
)

type passiveCase struct {
	CipherSuite  CipherSuiteID `json:"cipher_suite"`
	ExternalPSKs []struct {
		PSKID hexBytes `json:"psk_id"`
		PSK   hexBytes `json:"psk"`
	} `json:"external_psks"`
	KeyPackage                hexBytes `json:"key_package"`
	SignaturePriv             hexBytes `json:"signature_priv"`
	EncryptionPriv            hexBytes `json:"encryption_priv"`
	InitPriv                  hexBytes `json:"init_priv"`
	Welcome                   hexBytes `json:"welcome"`
	RatchetTree               hexBytes `json:"ratchet_tree"`
	InitialEpochAuthenticator hexBytes `json:"initial_epoch_authenticator"`
	Epochs                    []struct {
		Proposals          []hexBytes `json:"proposals"`
		Commit             hexBytes   `json:"commit"`
		EpochAuthenticator hexBytes   `json:"epoch_authenticator"`
	} `json:"epochs"`
}

// suite1Only restricts the passive-client vectors to suite 1 (the issue's
// scope); other suites count as skipped.
func suite1Only(c *passiveCase) CipherSuiteID {
	if c.CipherSuite != 1 && !allSuitesPassive {
		return 0xffff
	}
	return c.CipherSuite
}

func runPassive(t *testing.T, s *CipherSuite, tc *passiveCase) {
	kp := decodeMLS(t, tc.KeyPackage, WireFormatKeyPackage).KeyPackage
	b := &KeyPackageBundle{KeyPackage: *kp}
	var err error
	var pub []byte
	b.InitPriv, pub, err = s.HPKEPrivateKeyFromBytes(tc.InitPriv)
	mustNoErr(t, err, "init key")
	mustHex(t, pub, kp.InitKey, "init key")
	b.EncryptionPriv, pub, err = s.HPKEPrivateKeyFromBytes(tc.EncryptionPriv)
	mustNoErr(t, err, "encryption key")
	mustHex(t, pub, kp.LeafNode.EncryptionKey, "encryption key")
	b.SignaturePriv, pub, err = s.SignaturePrivateKeyFromBytes(tc.SignaturePriv)
	mustNoErr(t, err, "signature key")
	mustHex(t, pub, kp.LeafNode.SignatureKey, "signature key")
	psks := map[string][]byte{}
	for _, p := range tc.ExternalPSKs {
		psks[string(p.PSKID)] = p.PSK
	}
	cfg := Config{
		AllowedSuites:     []CipherSuiteID{s.ID()},
		SkipLifetimeCheck: true,
		Now:               func() time.Time { return time.Unix(int64(kp.LeafNode.Lifetime.NotBefore), 0) },
		PSKs: func(id []byte) (Secret, bool) {
			p, ok := psks[string(id)]
			return NewSecret(p), ok
		},
	}
	var opts JoinOptions
	if tc.RatchetTree != nil {
		mustNoErr(t, opts.RatchetTree.Unmarshal(tc.RatchetTree), "ratchet tree")
	}
	g, err := JoinFromWelcome(cfg, tc.Welcome, b, opts)
	mustNoErr(t, err, "JoinFromWelcome")
	mustHex(t, g.EpochAuthenticator(), tc.InitialEpochAuthenticator, "initial epoch authenticator")
	for i, ep := range tc.Epochs {
		for _, p := range ep.Proposals {
			_, err := g.ProcessMessage(p)
			mustNoErr(t, err, "proposal")
		}
		_, err := g.ProcessMessage(ep.Commit)
		if err != nil {
			t.Fatalf("epoch %d commit: %v", i, err)
		}
		mustHex(t, g.EpochAuthenticator(), ep.EpochAuthenticator, "epoch authenticator")
		raw, err := g.Export()
		mustNoErr(t, err, "Export")
		g, err = ImportGroup(cfg, raw)
		mustNoErr(t, err, "Import")
	}
}

func TestPassiveClientWelcomeVectors(t *testing.T) {
	runVectors(t, "passive-client-welcome.json", suite1Only, runPassive)
}

func TestPassiveClientHandlingCommitVectors(t *testing.T) {
	runVectors(t, "passive-client-handling-commit.json", suite1Only, runPassive)
}

// allSuitesPassive runs the passive-client vectors of every implemented
// suite, not just suite 1.
var allSuitesPassive = true
