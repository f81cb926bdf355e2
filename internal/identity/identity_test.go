package identity

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"
)

func seedKey(t *testing.T, b byte) (PrivateKey, PublicKey) {
	t.Helper()
	p, err := PrivateKeyFromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return p, p.Public()
}

// The vectors of docs/protocol.md, "Safety numbers": keys are the Ed25519
// public keys of the seeds 0x01..01, 0x02..02 and 0x03..03. The expected
// numbers were also computed independently (Python hashlib) from the
// derivation as documented.
func TestSafetyNumberVectors(t *testing.T) {
	_, k1 := seedKey(t, 1)
	_, k2 := seedKey(t, 2)
	_, k3 := seedKey(t, 3)
	if got := hex.EncodeToString(k1[:]); got != "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c" {
		t.Fatalf("key of seed 01: %s", got)
	}
	if got := hex.EncodeToString(k2[:]); got != "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394" {
		t.Fatalf("key of seed 02: %s", got)
	}
	for _, v := range []struct {
		a, b Party
		want string
	}{
		{Party{"alice", k1}, Party{"bob", k2}, "31927 73888 66231 16320 27561 78333 25414 35859 52367 03408 67125 80239"},
		{Party{"alice", k1}, Party{"bob", k3}, "70592 15953 13055 15091 97563 55703 67828 86305 82768 44936 91750 94250"},
		{Party{"alice", k1}, Party{"carol", k2}, "38217 57893 17311 79223 11474 81883 19791 06987 10319 65153 54348 11454"},
	} {
		t.Run(v.a.Name+"-"+v.b.Name, func(t *testing.T) {
			ab, err := SafetyNumber(v.a, v.b)
			if err != nil {
				t.Fatal(err)
			}
			ba, err := SafetyNumber(v.b, v.a)
			if err != nil {
				t.Fatal(err)
			}
			if ab != ba {
				t.Fatalf("not symmetric: %s vs %s", ab, ba)
			}
			if got := FormatSafetyNumber(ab, false); got != v.want {
				t.Fatalf("got %s, want %s", got, v.want)
			}
			if !SameSafetyNumber(v.want, ab) || !SameSafetyNumber(FormatSafetyNumber(ab, true), ab) {
				t.Fatal("the formatted number does not compare equal")
			}
		})
	}
	if _, err := SafetyNumber(Party{"a", k1}, Party{"a", k2}); err == nil {
		t.Fatal("same account accepted")
	}
	if _, err := SafetyNumber(Party{"a", k1}, Party{"b", PublicKey{}}); err == nil {
		t.Fatal("zero key accepted")
	}
	n, _ := SafetyNumber(Party{"alice", k1}, Party{"bob", k2})
	wrong := []byte(n)
	wrong[59] = '0' + (wrong[59]-'0'+1)%10
	if SameSafetyNumber(string(wrong), n) || SameSafetyNumber("123", n) {
		t.Fatal("a different number compared equal")
	}
}

func TestCertificateRoundTripAndChecks(t *testing.T) {
	idPriv, idPub := seedKey(t, 1)
	_, devPub := seedKey(t, 2)
	const dev = "0123456789abcdef0123456789abcdef"
	issued := time.UnixMilli(1700000000000)
	c, err := Issue(idPriv, "bob", dev, devPub[:], issued)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The encoding of docs/protocol.md's certificate example (Ed25519
	// signatures are deterministic).
	const want = "0103626f62203031323334353637383961626364656630313233343536373839616263646566208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0000018bcfe5680040be1724423b45bfd809a8fd3d992a6795d35b1e9532534a2855f3464bd5418e0882f5e574ec23e4a46767b5f8262a8e0c88358bcf367d4e1cc49649ac7a094401"
	if hex.EncodeToString(raw) != want {
		t.Fatalf("encoding changed:\n%x", raw)
	}
	p, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	ok := Expect{AccountName: "bob", DeviceID: dev, DeviceKey: devPub[:], IdentityKey: &idPub}
	if err := p.Verify(ok); err != nil {
		t.Fatal(err)
	}
	if !p.Issued.Equal(issued) || p.IdentityKey != idPub {
		t.Fatal("fields lost in the round trip")
	}
	_, other := seedKey(t, 3)
	for name, e := range map[string]Expect{
		"account":      {AccountName: "mallory", DeviceID: dev, DeviceKey: devPub[:], IdentityKey: &idPub},
		"device":       {AccountName: "bob", DeviceID: "ffffffffffffffffffffffffffffffff", DeviceKey: devPub[:], IdentityKey: &idPub},
		"device key":   {AccountName: "bob", DeviceID: dev, DeviceKey: other[:], IdentityKey: &idPub},
		"identity key": {AccountName: "bob", DeviceID: dev, DeviceKey: devPub[:], IdentityKey: &other},
	} {
		if err := p.Verify(e); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: %v, want ErrMismatch", name, err)
		}
	}
	// Every single-bit change is refused, by the parser or the signature.
	for i := range len(raw) * 8 {
		b := bytes.Clone(raw)
		b[i/8] ^= 1 << (i % 8)
		q, err := Parse(b)
		if err != nil {
			continue
		}
		if err := q.Verify(ok); err == nil {
			t.Fatalf("bit %d flipped still verifies", i)
		}
	}
	if _, err := Parse(append(bytes.Clone(raw), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: %v", err)
	}
	// A certificate signed by a key other than the one it names.
	forger, _ := seedKey(t, 9)
	f, _ := Issue(forger, "bob", dev, devPub[:], issued)
	f.IdentityKey = idPub
	if err := f.Verify(ok); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged: %v", err)
	}
	if _, err := Issue(idPriv, "bob", dev, idPub[:], issued); err == nil {
		t.Fatal("the identity key certified as a device key")
	}
}

func TestKeysNeverPrint(t *testing.T) {
	p, pub := seedKey(t, 7)
	s := fmt.Sprintf("%v %s %+v", p, p, p)
	if bytes.Contains([]byte(s), bytes.Repeat([]byte{7}, 4)) || !bytes.Contains([]byte(s), []byte("REDACTED")) {
		t.Fatalf("private key printed: %q", s)
	}
	if got := pub.String(); got != "identity:"+Fingerprint(pub[:]) {
		t.Fatalf("public key prints as %q", got)
	}
	p.Wipe()
	if !p.IsZero() && !bytes.Equal(p.Seed(), make([]byte, 32)) {
		t.Fatal("seed not wiped")
	}
	_ = ed25519.PublicKeySize
}

func TestFingerprintCodes(t *testing.T) {
	_, k := seedKey(t, 1)
	fp := Fingerprint(k[:])
	if fp != "gr2q-7gf5-lh6p-zfdn" {
		t.Fatalf("fingerprint %s", fp)
	}
	for _, typed := range []string{"gr2q-7gf5-lh6p-zfdn", "GR2Q 7GF5 LH6P ZFDN", "gr2q7gf5lh6pzfdn"} {
		if NormaliseCode(typed) != fp {
			t.Errorf("%q not recognised", typed)
		}
	}
	for _, bad := range []string{"", "gr2q-7gf5-lh6p", "gr2q-7gf5-lh6p-zfd1", "gr2q-7gf5-lh6p-zfdnx"} {
		if NormaliseCode(bad) != "" {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseCertificate(f *testing.F) {
	idPriv, _ := PrivateKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	devPub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	c, _ := Issue(idPriv, "bob", "0123456789abcdef0123456789abcdef", devPub, time.UnixMilli(1))
	raw, _ := c.Marshal()
	f.Add(raw)
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		_ = c.VerifySignature()
		again, err := c.Marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("round trip differs: %x vs %x (%v)", again, b, err)
		}
	})
}
