package keylog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
)

// mth is RFC 6962 §2.1's definition, written out naively as the reference.
func mth(leaves [][]byte) Hash {
	var out Hash
	switch len(leaves) {
	case 0:
		out = sha256.Sum256(nil)
	case 1:
		out = sha256.Sum256(append([]byte{0}, leaves[0]...))
	default:
		k := 1
		for k*2 < len(leaves) {
			k *= 2
		}
		l, r := mth(leaves[:k]), mth(leaves[k:])
		out = sha256.Sum256(append(append([]byte{1}, l[:]...), r[:]...))
	}
	return out
}

func testLeaves(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("entry %d", i))
	}
	return out
}

func TestTreeRootsMatchTheRFCDefinition(t *testing.T) {
	leaves := testLeaves(70)
	var tr Tree
	for i := 0; i <= len(leaves); i++ {
		for size := 0; size <= i; size++ {
			got, err := tr.RootAt(uint64(size))
			if err != nil {
				t.Fatal(err)
			}
			if want := mth(leaves[:size]); got != want {
				t.Fatalf("tree of %d: root at %d = %x, want %x", i, size, got, want)
			}
		}
		if i < len(leaves) {
			next, err := tr.RootWith(LeafHash(leaves[i]))
			if err != nil {
				t.Fatal(err)
			}
			if want := mth(leaves[:i+1]); next != want {
				t.Fatalf("RootWith at %d = %x, want %x", i, next, want)
			}
			tr.Append(LeafHash(leaves[i]))
		}
	}
	// A known value: the RFC 6962 empty root is SHA-256 of nothing.
	if r, _ := tr.RootAt(0); hex.EncodeToString(r[:]) != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Fatalf("empty root %x", r)
	}
}

func signedHead(t *testing.T, s *Signer, tr *Tree, size uint64) *Head {
	t.Helper()
	root, err := tr.RootAt(size)
	if err != nil {
		t.Fatal(err)
	}
	return s.Sign(size, root, time.UnixMilli(1700000000000+int64(size)))
}

func testSigner(t *testing.T, b byte) *Signer {
	t.Helper()
	s, err := NewSigner(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestInclusionAndConsistencyProofs(t *testing.T) {
	leaves := testLeaves(37)
	var tr Tree
	for _, l := range leaves {
		tr.Append(LeafHash(l))
	}
	s := testSigner(t, 1)
	for size := uint64(1); size <= tr.Size(); size++ {
		h := signedHead(t, s, &tr, size)
		for i := uint64(0); i < size; i++ {
			p, err := tr.InclusionProof(i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(leaves[i], i, p, h); err != nil {
				t.Fatalf("leaf %d of %d: %v", i, size, err)
			}
			// Another entry at that index, or the entry at another index, fails.
			if err := VerifyInclusion([]byte("forged"), i, p, h); !errors.Is(err, ErrNotIncluded) {
				t.Fatalf("forged leaf %d of %d: %v", i, size, err)
			}
			if size > 1 {
				if err := VerifyInclusion(leaves[i], (i+1)%size, p, h); !errors.Is(err, ErrNotIncluded) {
					t.Fatalf("leaf %d claimed at %d of %d: %v", i, (i+1)%size, size, err)
				}
			}
		}
		for size1 := uint64(0); size1 <= size; size1++ {
			p, err := tr.ConsistencyProof(size1, size)
			if err != nil {
				t.Fatal(err)
			}
			h1 := signedHead(t, s, &tr, size1)
			if err := VerifyConsistency(h1, h, p); err != nil {
				t.Fatalf("%d -> %d: %v", size1, size, err)
			}
			if err := VerifyConsistency(h, h1, p); err != nil {
				t.Fatalf("%d -> %d (swapped): %v", size1, size, err)
			}
		}
	}
}

// TestForkDetected is the split view: a log that replaced one entry has,
// at every size from there on, heads no consistency proof joins to the
// honest ones, and equal-size heads with two roots.
func TestForkDetected(t *testing.T) {
	leaves := testLeaves(12)
	forked := append([][]byte(nil), leaves...)
	forked[5] = []byte("bob's key, as the server shows carol")
	var honest, fork Tree
	for i := range leaves {
		honest.Append(LeafHash(leaves[i]))
		fork.Append(LeafHash(forked[i]))
	}
	s := testSigner(t, 1)
	for size1 := uint64(6); size1 <= 12; size1++ {
		hf := signedHead(t, s, &fork, size1)
		for size2 := uint64(6); size2 <= 12; size2++ {
			hh := signedHead(t, s, &honest, size2)
			// Whatever proof the server sends, from either tree.
			for _, tr := range []*Tree{&honest, &fork} {
				lo, hi := min(size1, size2), max(size1, size2)
				p, err := tr.ConsistencyProof(lo, hi)
				if err != nil {
					t.Fatal(err)
				}
				if err := VerifyConsistency(hf, hh, p); !errors.Is(err, ErrInconsistent) {
					t.Fatalf("fork %d vs honest %d: %v", size1, size2, err)
				}
			}
		}
	}
	// Before the forked entry the two agree.
	if err := VerifyConsistency(signedHead(t, s, &fork, 5), signedHead(t, s, &honest, 9), mustProof(t, &honest, 5, 9)); err != nil {
		t.Fatal(err)
	}
}

func mustProof(t *testing.T, tr *Tree, a, b uint64) [][]byte {
	t.Helper()
	p, err := tr.ConsistencyProof(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHeadSignature(t *testing.T) {
	s := testSigner(t, 7)
	var tr Tree
	tr.Append(LeafHash([]byte("x")))
	h := signedHead(t, s, &tr, 1)
	raw := h.Marshal()
	if len(raw) != HeadSize {
		t.Fatalf("head of %d bytes", len(raw))
	}
	back, err := ParseHead(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Verify(s.Public()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Marshal(), raw) {
		t.Fatal("head does not round-trip")
	}
	other := testSigner(t, 8)
	if err := back.Verify(other.Public()); !errors.Is(err, ErrWrongLogKey) {
		t.Fatalf("other key: %v", err)
	}
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 1
		h2, err := ParseHead(bad)
		if err != nil {
			continue
		}
		if err := h2.Verify(s.Public()); err == nil {
			t.Fatalf("flipping byte %d still verifies", i)
		}
	}
	// Pinned encoding: seed 0x07..07, one leaf "x", time 1700000000001.
	if got := hex.EncodeToString(raw[:57]); got != "01"+s.KeyID().String()+"0000000000000001"+hex.EncodeToString(h.Root[:])+"0000018bcfe56801" {
		t.Fatalf("head encoding %s", got)
	}
	if _, err := ParseHead(raw[:HeadSize-1]); !errors.Is(err, ErrMalformed) {
		t.Fatal("short head parsed")
	}
}

func TestEntryRoundTrip(t *testing.T) {
	idKey, err := identity.PrivateKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	dev := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	cert, err := identity.Issue(idKey, "bob", "0123456789abcdef0123456789abcdef", dev, time.UnixMilli(1700000000000))
	if err != nil {
		t.Fatal(err)
	}
	certRaw, err := cert.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	at := time.UnixMilli(1700000000000)
	for _, e := range []Entry{IdentityKeyEntry("bob", idKey.Public(), at), CertificateEntry("bob", certRaw, at)} {
		raw, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseEntry(raw)
		if err != nil {
			t.Fatal(err)
		}
		if !back.Binds(e.Kind, "bob", e.Data) || !back.Time.Equal(at) {
			t.Fatalf("%v entry does not round-trip", e.Kind)
		}
		if _, err := ParseEntry(append(raw, 0)); !errors.Is(err, ErrMalformed) {
			t.Fatal("trailing byte accepted")
		}
	}
	ik, _ := IdentityKeyEntry("bob", idKey.Public(), at).Marshal()
	if got := hex.EncodeToString(ik); got != "010103626f620000018bcfe5680000208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c" {
		t.Fatalf("identity key entry encoding %s", got)
	}
	// A certificate entry of another account than the certificate's is refused.
	if _, err := CertificateEntry("carol", certRaw, at).Marshal(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("mismatched certificate entry: %v", err)
	}
	if _, err := (&Entry{Kind: 9, AccountName: "bob", Data: []byte{1}}).Marshal(); !errors.Is(err, ErrMalformed) {
		t.Fatal("unknown kind encoded")
	}
}

func TestMalformedProofsRefused(t *testing.T) {
	var tr Tree
	for _, l := range testLeaves(5) {
		tr.Append(LeafHash(l))
	}
	h := signedHead(t, testSigner(t, 1), &tr, 5)
	p, _ := tr.InclusionProof(0, 5)
	p[0] = p[0][:31]
	if err := VerifyInclusion(testLeaves(1)[0], 0, p, h); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short hash: %v", err)
	}
	if err := VerifyInclusion(testLeaves(1)[0], 9, nil, h); !errors.Is(err, ErrNotIncluded) {
		t.Fatalf("index beyond size: %v", err)
	}
	if err := VerifyInclusion(testLeaves(1)[0], 0, make([][]byte, 100), h); !errors.Is(err, ErrMalformed) {
		t.Fatalf("long proof: %v", err)
	}
}

func FuzzParseEntry(f *testing.F) {
	f.Add([]byte{})
	e, _ := IdentityKeyEntry("bob", identity.PublicKey{1}, time.UnixMilli(1)).Marshal()
	f.Add(e)
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := ParseEntry(raw)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		back, err := e.Marshal()
		if err != nil || !bytes.Equal(back, raw) {
			t.Fatalf("parsed entry does not re-encode: %v", err)
		}
	})
}

func FuzzParseHead(f *testing.F) {
	f.Add(make([]byte, HeadSize))
	s, _ := NewSigner(bytes.Repeat([]byte{3}, 32))
	f.Add(s.Sign(3, Hash{1}, time.UnixMilli(5)).Marshal())
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, err := ParseHead(raw)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !bytes.Equal(h.Marshal(), raw) {
			t.Fatal("parsed head does not re-encode")
		}
		_ = h.Verify(s.Public())
	})
}
