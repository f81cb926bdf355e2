package mls

import (
	"bytes"
	"errors"
	"runtime"
	"testing"
)

// TestParallelPathSealsDecryptAtEveryMember: a commit whose path secrets
// go to more recipients than one sealing goroutine takes (the creator's
// second commit in a group it filled in one commit: one ciphertext per
// other member) is processed by every member, who all reach the same
// epoch. A ciphertext in the wrong slot would not decrypt at its member.
func TestParallelPathSealsDecryptAtEveryMember(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	const n = 3*parallelSealMinPerWorker + 5
	kb := suiteBundles(t, 1, n)
	a, err := CreateGroup(benchCfg, NewGroupID(), 1, kb[0].KeyPackage.LeafNode.Credential.Identity, kb[0].SignaturePriv, GroupOptions{})
	mustNoErr(t, err, "CreateGroup")
	kps := make([]*KeyPackage, 0, n-1)
	for _, x := range kb[1:] {
		kps = append(kps, &x.KeyPackage)
	}
	pc, err := a.Commit(CommitOptions{Add: kps})
	mustNoErr(t, err, "add all")
	mustNoErr(t, a.MergePendingCommit(pc), "merge add")
	members := make([]*Group, 0, n-1)
	for _, x := range kb[1:] {
		g, err := JoinFromWelcome(benchCfg, pc.Welcome, x, JoinOptions{})
		mustNoErr(t, err, "join")
		members = append(members, g)
	}
	if c := pathCiphertexts(a); c != n-1 || c < 2*parallelSealMinPerWorker {
		t.Fatalf("the creator's commit encrypts to %d nodes, want %d (enough for several goroutines)", c, n-1)
	}
	pc, err = a.Commit(CommitOptions{})
	mustNoErr(t, err, "commit")
	mustNoErr(t, a.MergePendingCommit(pc), "merge commit")
	for _, g := range members {
		if _, err := g.ProcessMessage(pc.Message); err != nil {
			t.Fatalf("member at leaf %d: %v", g.OwnLeaf(), err)
		}
		if g.Epoch() != a.Epoch() || !bytes.Equal(g.EpochAuthenticator(), a.EpochAuthenticator()) {
			t.Fatalf("member at leaf %d: epoch %d, creator %d, or the authenticators differ", g.OwnLeaf(), g.Epoch(), a.Epoch())
		}
	}
}

// TestSealPathSecretsBadKey: a bad recipient key among many fails the
// whole path with ErrInvalidKey, on one goroutine and on several alike.
func TestSealPathSecretsBadKey(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	s, _ := Suite(1)
	_, pub, err := s.GenerateHPKEKey()
	mustNoErr(t, err, "key")
	secret := make([]byte, s.Nh())
	for _, count := range []int{3, 5 * parallelSealMinPerWorker} {
		for _, bad := range []int{0, count / 2, count - 1} {
			seals := make([]pathSeal, count)
			outs := make([]HPKECiphertext, count)
			for i := range seals {
				seals[i] = pathSeal{pub: pub, secret: secret, out: &outs[i]}
			}
			seals[bad].pub = pub[:len(pub)-1]
			if err := sealPathSecrets(s, []byte("gc"), seals); !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("%d seals, bad key at %d: got %v, want ErrInvalidKey", count, bad, err)
			}
		}
	}
}
