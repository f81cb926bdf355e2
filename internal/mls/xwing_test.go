package mls

import (
	"crypto/sha256"
	"crypto/sha3"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cloudflare/circl/kem/xwing"
)

// TestXWingDeriveKeyPair pins the X-Wing suites' DeriveKeyPair, which
// decides every TreeKEM node key and external_pub and therefore must match
// other implementations bit for bit. Two independent references: the
// draft's formula (seed = SHAKE256(ikm, 32), then X-Wing's own key
// expansion, computed here with the standard library's SHAKE and circl's
// raw X-Wing), and a known answer produced by @hpke/hybridkem-x-wing 0.7.0
// (the KEM ts-mls uses) for ikm = 00 01 .. 3f.
func TestXWingDeriveKeyPair(t *testing.T) {
	ikm := make([]byte, 64)
	for i := range ikm {
		ikm[i] = byte(i)
	}
	for _, id := range []CipherSuiteID{MLS256XWingAES256GCMSHA512Ed25519, MLS256XWingChaCha20Poly1305SHA512Ed25519} {
		s, err := Suite(id)
		mustNoErr(t, err, "suite")
		if !s.PostQuantum() {
			t.Fatalf("suite %#x not marked post-quantum", uint16(id))
		}
		priv, pub, err := s.DeriveKeyPair(ikm)
		mustNoErr(t, err, "DeriveKeyPair")
		const wantSeed = "755e8863a2b2bc067f51c1637a71c819d524dc37c17ba7a29c6ee3767c996a49"
		const wantPubSHA256 = "534ca24d8d6e01bddf462876d102b0e734e9f4c308e02c45d142231b31be16fc"
		if got := hex.EncodeToString(priv.Bytes()); got != wantSeed {
			t.Fatalf("private seed %s, want %s", got, wantSeed)
		}
		if sum := sha256.Sum256(pub); hex.EncodeToString(sum[:]) != wantPubSHA256 || len(pub) != xwing.PublicKeySize {
			t.Fatalf("public key (%d bytes) differs from the @hpke/hybridkem-x-wing answer", len(pub))
		}
		seed := sha3.SumSHAKE256(ikm, xwing.SeedSize)
		_, refPub := xwing.DeriveKeyPairPacked(seed)
		if hex.EncodeToString(seed) != wantSeed || hex.EncodeToString(refPub) != hex.EncodeToString(pub) {
			t.Fatal("DeriveKeyPair differs from SHAKE256(ikm, 32) + X-Wing key expansion")
		}
		again, pub2, err := s.HPKEPrivateKeyFromBytes(priv.Bytes())
		mustNoErr(t, err, "HPKEPrivateKeyFromBytes")
		if hex.EncodeToString(pub2) != hex.EncodeToString(pub) || hex.EncodeToString(again.Bytes()) != wantSeed {
			t.Fatal("private key does not round-trip through its 32-byte seed")
		}
		if _, _, err := s.DeriveKeyPair(nil); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("empty ikm: %v", err)
		}
		// HPKE round trip with the suite's KDF and AEAD.
		ct, err := s.EncryptWithLabel(pub, "test", []byte("ctx"), []byte("secret"))
		mustNoErr(t, err, "EncryptWithLabel")
		if len(ct.KEMOutput) != xwing.CiphertextSize {
			t.Fatalf("kem_output of %d bytes", len(ct.KEMOutput))
		}
		pt, err := s.DecryptWithLabel(priv, "test", []byte("ctx"), ct)
		mustNoErr(t, err, "DecryptWithLabel")
		if string(pt) != "secret" {
			t.Fatalf("plaintext %q", pt)
		}
		ct.KEMOutput[0] ^= 1 // ML-KEM's implicit rejection: a wrong key, so the AEAD fails
		if _, err := s.DecryptWithLabel(priv, "test", []byte("ctx"), ct); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("tampered kem_output: %v", err)
		}
	}
}

// TestXWingKeyPackage checks what the server validates on upload: a
// well-formed X-Wing KeyPackage passes only where the suite is allowed,
// and a truncated init or encryption key is refused.
func TestXWingKeyPackage(t *testing.T) {
	id := MLS256XWingAES256GCMSHA512Ed25519
	c := newSuiteClient(t, "alice", id)
	b := c.bundle(t)
	if len(b.KeyPackage.InitKey) != xwing.PublicKeySize || len(b.KeyPackage.LeafNode.EncryptionKey) != xwing.PublicKeySize {
		t.Fatalf("init key %d, encryption key %d bytes", len(b.KeyPackage.InitKey), len(b.KeyPackage.LeafNode.EncryptionKey))
	}
	mustNoErr(t, ValidateKeyPackage(&b.KeyPackage, KeyPackagePolicy{AllowedSuites: []CipherSuiteID{1, id}}), "valid")
	if err := ValidateKeyPackage(&b.KeyPackage, KeyPackagePolicy{}); !errors.Is(err, ErrUnsupportedCipherSuite) {
		t.Fatalf("default allowlist (suite 1) took an X-Wing KeyPackage: %v", err)
	}
	for _, field := range []string{"init", "encryption"} {
		bad := c.bundle(t).KeyPackage
		if field == "init" {
			bad.InitKey = bad.InitKey[:32] // an X25519-sized key
		} else {
			bad.LeafNode.EncryptionKey = bad.LeafNode.EncryptionKey[:32]
		}
		if err := ValidateKeyPackage(&bad, KeyPackagePolicy{AllowedSuites: []CipherSuiteID{id}}); !errors.Is(err, ErrInvalidKeyPackage) && !errors.Is(err, ErrInvalidSignature) {
			t.Fatalf("truncated %s key: %v", field, err)
		}
	}
}

// TestXWingDowngradeGuards: a group never moves from X-Wing to a classical
// suite by ReInit (whatever its classical strength), may move up to X-Wing,
// and refuses KeyPackages of the other kind in either direction.
func TestXWingDowngradeGuards(t *testing.T) {
	xw := MLS256XWingAES256GCMSHA512Ed25519
	cfg := Config{AllowedSuites: []CipherSuiteID{1, 4, xw}}
	alice, _ := twoSuiteMembers(t, cfg, xw)
	for _, to := range []CipherSuiteID{1, 4} {
		if _, err := alice.g.Commit(CommitOptions{ReInit: &ReInit{GroupID: NewGroupID(), Version: 1, CipherSuite: to}}); !errors.Is(err, ErrDowngrade) {
			t.Fatalf("ReInit X-Wing -> %d: %v", to, err)
		}
	}
	classical := newSuiteClient(t, "carol", 1).bundle(t)
	if _, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&classical.KeyPackage}}); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("suite-1 KeyPackage into an X-Wing group: %v", err)
	}

	// Upwards: suite 1 -> X-Wing by ReInit, and both members follow.
	a1, b1 := twoSuiteMembers(t, cfg, 1)
	hybrid := newSuiteClient(t, "bob", xw).bundle(t)
	if _, err := a1.g.Commit(CommitOptions{Add: []*KeyPackage{&hybrid.KeyPackage}}); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("X-Wing KeyPackage into a suite-1 group: %v", err)
	}
	pc, err := a1.g.Commit(CommitOptions{ReInit: &ReInit{GroupID: NewGroupID(), Version: 1, CipherSuite: xw}})
	mustNoErr(t, err, "ReInit to X-Wing")
	deliver(t, pc.Message, b1)
	mustNoErr(t, a1.g.MergePendingCommit(pc), "merge")
	// Both suites sign with Ed25519: the device key carries over, imported
	// for the new suite (a key is bound to the suite it was imported for).
	sxw, _ := Suite(xw)
	aliceSig, _, err := sxw.SignaturePrivateKeyFromBytes(a1.sig.Bytes())
	mustNoErr(t, err, "import alice's key")
	bobSig, _, err := sxw.SignaturePrivateKeyFromBytes(b1.sig.Bytes())
	mustNoErr(t, err, "import bob's key")
	if _, _, err := a1.g.ReInitGroup(a1.sig, nil, SubgroupOptions{}); err == nil {
		t.Fatal("ReInitGroup signed with a key bound to the old suite")
	}
	bobXW := &testClient{name: "bob", suite: xw, sig: bobSig}
	bb := bobXW.bundle(t)
	ng, welcome, err := a1.g.ReInitGroup(aliceSig, []*KeyPackage{&bb.KeyPackage}, SubgroupOptions{})
	mustNoErr(t, err, "ReInitGroup")
	nb, err := JoinSubgroup(b1.g, welcome, bb, JoinOptions{})
	mustNoErr(t, err, "JoinSubgroup")
	if ng.CipherSuite() != xw || nb.CipherSuite() != xw {
		t.Fatalf("re-created group on suite %#x/%#x", uint16(ng.CipherSuite()), uint16(nb.CipherSuite()))
	}
	a2, b2 := &testClient{name: "a2", g: ng}, &testClient{name: "b2", g: nb}
	sameEpoch(t, a2, b2)
	chat(t, a2, b2)
	if SuiteStrength(xw) <= SuiteStrength(4) || SuiteStrength(4) <= SuiteStrength(1) || SuiteStrength(0x9999) != 0 {
		t.Fatal("SuiteStrength order")
	}
}

func TestCipherSuiteNames(t *testing.T) {
	for _, id := range SuiteIDs() {
		for _, in := range []string{id.String(), strings.ToLower(id.String()), strconv.Itoa(int(id)), fmt.Sprintf("%#x", uint16(id))} {
			got, err := ParseCipherSuite(in)
			if err != nil || got != id {
				t.Fatalf("ParseCipherSuite(%q) = %v, %v; want %v", in, got, err, id)
			}
		}
	}
	for _, bad := range []string{"", "0", "8", "0xF00F", "MLS_256_XWING", "70000"} {
		if _, err := ParseCipherSuite(bad); !errors.Is(err, ErrUnsupportedCipherSuite) {
			t.Fatalf("ParseCipherSuite(%q): %v", bad, err)
		}
	}
	if s := CipherSuiteID(0x1234).String(); s != "suite 0x1234" {
		t.Fatalf("unknown suite prints %q", s)
	}
}

// FuzzParseCipherSuite: whatever parses names an implemented suite whose
// name parses back to it.
func FuzzParseCipherSuite(f *testing.F) {
	for _, s := range []string{"1", "0xF00D", "MLS_256_XWING_AES256GCM_SHA512_Ed25519", "mls_128_dhkemx25519_aes128gcm_sha256_ed25519", "0x10000", "-1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		id, err := ParseCipherSuite(in)
		if err != nil {
			return
		}
		if _, err := Suite(id); err != nil {
			t.Fatalf("%q parsed to unimplemented %v", in, id)
		}
		if back, err := ParseCipherSuite(id.String()); err != nil || back != id {
			t.Fatalf("%v does not round-trip: %v %v", id, back, err)
		}
	})
}

// TestAllowWeakerReInit: with Config.AllowWeakerReInit (the interop
// harness's setting) a ReInit from X-Wing to an allowed classical suite is
// committed and processed; the allowlist still applies, and a member
// without the flag refuses the same commit as a downgrade.
func TestAllowWeakerReInit(t *testing.T) {
	xw := MLS256XWingAES256GCMSHA512Ed25519
	cfg := Config{AllowedSuites: []CipherSuiteID{1, xw}, AllowWeakerReInit: true}
	alice, bob := twoSuiteMembers(t, cfg, xw)
	if _, err := alice.g.Commit(CommitOptions{ReInit: &ReInit{GroupID: NewGroupID(), Version: 1, CipherSuite: 4}}); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("ReInit to suite 4 outside the allowlist: %v", err)
	}
	strict, err := ImportGroup(Config{AllowedSuites: []CipherSuiteID{1, xw}}, mustExportGroup(t, bob.g))
	mustNoErr(t, err, "import bob without the flag")
	pc, err := alice.g.Commit(CommitOptions{ReInit: &ReInit{GroupID: NewGroupID(), Version: 1, CipherSuite: 1}})
	mustNoErr(t, err, "ReInit X-Wing -> 1 with AllowWeakerReInit")
	if _, err := strict.ProcessMessage(pc.Message); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("member without AllowWeakerReInit processed a ReInit to a weaker suite: %v", err)
	}
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	if alice.g.PendingReInit() == nil || bob.g.PendingReInit() == nil {
		t.Fatal("ReInit not pending after the commit")
	}
}

func mustExportGroup(t *testing.T, g *Group) []byte {
	t.Helper()
	raw, err := g.Export()
	mustNoErr(t, err, "Export")
	return raw
}
