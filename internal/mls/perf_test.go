package mls

import (
	"bytes"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestVerifyLeafSignaturesFirstBadLeaf: the parallel check of a large tree
// reports the first bad leaf in leaf order, every time, whichever worker
// finds which bad leaf first.
func TestVerifyLeafSignaturesFirstBadLeaf(t *testing.T) {
	const n = 200 // enough leaves for several workers
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	a, _, _ := freshGroup(t, 1, n)
	groupID := a.Context().GroupID
	mustNoErr(t, a.tree.verifyLeafSignatures(groupID), "valid tree")

	corrupt := func(tree *ratchetTree, l leafIndex) {
		x := l.node()
		old := tree.nodes[x]
		leaf := *old.Leaf
		leaf.Signature = slices.Clone(leaf.Signature)
		leaf.Signature[0] ^= 1
		tree.set(x, &Node{Type: NodeTypeLeaf, Leaf: &leaf})
	}
	for _, bad := range [][]leafIndex{{n - 1}, {0}, {37, 150}, {150, 37, 38}, {5, 6, 7, 190}} {
		tree := a.tree.clone()
		for _, l := range bad {
			corrupt(tree, l)
		}
		first := slices.Min(bad)
		for range 20 {
			err := tree.verifyLeafSignatures(groupID)
			if !errors.Is(err, ErrInvalidTree) || !errors.Is(err, ErrInvalidSignature) {
				t.Fatalf("bad leaves %v: error %v, want ErrInvalidTree wrapping ErrInvalidSignature", bad, err)
			}
			if want := fmt.Sprintf("leaf %d:", first); !strings.Contains(err.Error(), want) {
				t.Fatalf("bad leaves %v: error %q does not name %q", bad, err, want)
			}
		}
	}
}

// TestSignWithLabelAtMatchesSignWithLabel: signing the content in place
// gives the signature of the copied SignContent, for every suite, and
// leaves the content itself untouched.
func TestSignWithLabelAtMatchesSignWithLabel(t *testing.T) {
	for id := range suites {
		t.Run(fmt.Sprint(id), func(t *testing.T) {
			s := suites[id]
			kb := suiteBundles(t, id, 1)[0]
			pub := kb.KeyPackage.LeafNode.SignatureKey
			for _, n := range []int{0, 10, 63, 64, 16383, 16384, 1 << 20} {
				content := make([]byte, n)
				for i := range content {
					content[i] = byte(i * 7)
				}
				buf := append(make([]byte, 40), content...)
				sig, err := s.signWithLabelAt(kb.SignaturePriv, "GroupInfoTBS", buf, 40)
				mustNoErr(t, err, "signWithLabelAt")
				if !slices.Equal(buf[40:], content) {
					t.Fatalf("n=%d: content changed", n)
				}
				mustNoErr(t, s.VerifyWithLabel(pub, "GroupInfoTBS", content, sig), "verify in-place signature")
				switch s.sig.(type) {
				case ed25519Scheme, ed448Scheme: // deterministic signatures
					want, err := s.SignWithLabel(kb.SignaturePriv, "GroupInfoTBS", content)
					mustNoErr(t, err, "SignWithLabel")
					if !slices.Equal(sig, want) {
						t.Fatalf("n=%d: in-place signature differs from SignWithLabel's", n)
					}
				}
				// Too little room falls back to copying.
				sig, err = s.signWithLabelAt(kb.SignaturePriv, "GroupInfoTBS", buf[38:], 2)
				mustNoErr(t, err, "signWithLabelAt without room")
				mustNoErr(t, s.VerifyWithLabel(pub, "GroupInfoTBS", content, sig), "verify fallback signature")
			}
		})
	}
}

// TestEncodingsWithLengthFirst: the tree and extension encodings that
// write their length header first are byte for byte the generic vector
// encodings, across every varint header size.
func TestEncodingsWithLengthFirst(t *testing.T) {
	for _, n := range []int{2, 3, 50, 300} {
		a, _, _ := freshGroup(t, 1, n)
		fast := &encoder{}
		a.tree.encodePublic(fast)
		public := a.tree.public()
		slow := &encoder{}
		public.encode(slow)
		mustNoErr(t, fast.err, "encodePublic")
		if !slices.Equal(fast.buf, slow.buf) {
			t.Fatalf("n=%d: encodePublic differs from RatchetTree.encode (%d vs %d bytes)", n, len(fast.buf), len(slow.buf))
		}
		if got := a.tree.publicLen(); got != len(slow.buf) {
			t.Fatalf("n=%d: publicLen %d, encoding %d bytes", n, got, len(slow.buf))
		}
		// The GroupInfo written with the tree in place is the generic
		// encoding of the GroupInfo it returns, whose tree extension is
		// the tree.
		for _, withPub := range []bool{false, true} {
			gi, msg, err := a.groupInfoMsg(true, withPub)
			mustNoErr(t, err, "groupInfoMsg")
			generic := &encoder{}
			generic.u16(uint16(ProtocolVersionMLS10))
			generic.u16(uint16(WireFormatGroupInfo))
			gi.encode(generic)
			if !slices.Equal(msg, generic.buf) {
				t.Fatalf("n=%d: GroupInfo message differs from its generic encoding", n)
			}
			if !slices.Equal(gi.Extensions[0].Data, slow.buf) || gi.Extensions[0].Type != ExtensionTypeRatchetTree {
				t.Fatalf("n=%d: GroupInfo tree extension is not the tree", n)
			}
			tbs, err := gi.TBS()
			mustNoErr(t, err, "GroupInfo TBS")
			mustNoErr(t, a.suite.VerifyWithLabel(a.tree.leaf(0).SignatureKey, "GroupInfoTBS", tbs, gi.Signature), "GroupInfo signature")
		}
	}
	for _, sizes := range [][]int{{}, {0}, {10}, {60}, {61, 2}, {16000}, {16400, 5}, {1 << 20, 3, 0}} {
		var l []Extension
		for i, s := range sizes {
			l = append(l, Extension{Type: ExtensionType(i + 1), Data: make([]byte, s)})
		}
		fast := &encoder{}
		encodeExtensions(fast, l)
		slow := &encoder{}
		slow.vector(func(e *encoder) {
			for i := range l {
				e.u16(uint16(l[i].Type))
				e.opaque(l[i].Data)
			}
		})
		if !slices.Equal(fast.buf, slow.buf) {
			t.Fatalf("extension sizes %v: encodings differ", sizes)
		}
	}
}

// TestMergeUpdatePathRejectsKeyInTree: an UpdatePath whose parent key is
// already some node's key in the tree is refused (§7.3 uniqueness), found
// by the prefix filter for a leaf key and a parent key alike.
func TestMergeUpdatePathRejectsKeyInTree(t *testing.T) {
	const n = 40
	a, _, kb := freshGroup(t, 1, n)
	base := a.tree.clone()
	from := leafIndex(n - 1)
	gcFor := func(th []byte) (*GroupContext, error) {
		gc := a.Context()
		gc.TreeHash = th
		return &gc, nil
	}
	// A full path from the last leaf gives the tree parents with keys.
	tmpl := *base.leaf(from)
	_, err := base.createUpdatePath(from, &tmpl, a.Context().GroupID, kb[from].SignaturePriv, gcFor, nil)
	mustNoErr(t, err, "create UpdatePath")
	sender := leafIndex(3)
	for _, k := range []HPKEPublicKey{base.encKey(leafIndex(10).node()), base.encKey(base.root())} {
		if k == nil {
			t.Fatal("no key to reuse")
		}
		tmpl := *base.leaf(sender)
		res, err := base.clone().createUpdatePath(sender, &tmpl, a.Context().GroupID, kb[sender].SignaturePriv, gcFor, nil)
		mustNoErr(t, err, "create UpdatePath")
		path := *res.path
		path.Nodes = slices.Clone(path.Nodes)
		path.Nodes[len(path.Nodes)-1].EncryptionKey = k
		_, err = base.clone().mergeUpdatePath(sender, &path, a.Context().GroupID, nil)
		if !errors.Is(err, ErrInvalidCommit) || !strings.Contains(err.Error(), "already in the tree") {
			t.Fatalf("reused key: error %v, want the key-in-tree refusal", err)
		}
	}
	// The same path with its own fresh keys merges.
	tmpl = *base.leaf(sender)
	res, err := base.clone().createUpdatePath(sender, &tmpl, a.Context().GroupID, kb[sender].SignaturePriv, gcFor, nil)
	mustNoErr(t, err, "create UpdatePath")
	_, err = base.clone().mergeUpdatePath(sender, res.path, a.Context().GroupID, nil)
	mustNoErr(t, err, "merge fresh UpdatePath")
}

// TestTreeCachesMatchRecomputedAfterRandomCommits: after every kind of
// commit (full path, adds with and without a path, removes, committed
// Update proposals, external joins) in a random sequence, every member's
// cached node hashes and encodings give the tree hash and wire encoding
// that a tree rebuilt from scratch gives, and all members agree. A cache
// left stale where the tree changes fails here.
func TestTreeCachesMatchRecomputedAfterRandomCommits(t *testing.T) {
	seed := time.Now().UnixNano()
	rng := mathrand.New(mathrand.NewPCG(uint64(seed), 1))
	t.Logf("seed %d", seed)
	cfg := Config{}
	alice, bob := twoMembers(t, cfg)
	members := []*testClient{alice, bob}
	next := 0
	newClient := func() *testClient {
		next++
		return newSuiteClient(t, fmt.Sprintf("c%d", next), 1)
	}
	others := func(c *testClient) []*testClient {
		var out []*testClient
		for _, m := range members {
			if m != c {
				out = append(out, m)
			}
		}
		return out
	}
	check := func(step int, what string) {
		t.Helper()
		var want []byte
		for _, m := range members {
			tr := m.g.tree
			fresh, err := treeFromPublic(tr.suite, tr.public())
			mustNoErr(t, err, "rebuild tree")
			got := tr.rootHash()
			if !bytes.Equal(got, fresh.rootHash()) {
				t.Fatalf("step %d (%s): %s's cached tree hash differs from a rebuilt tree's", step, what, m.name)
			}
			enc := &encoder{}
			tr.encodePublic(enc)
			pub := tr.public()
			plain := &encoder{}
			pub.encode(plain)
			if !bytes.Equal(enc.buf, plain.buf) {
				t.Fatalf("step %d (%s): %s's cached node encodings are stale", step, what, m.name)
			}
			mustNoErr(t, tr.verifyParentHashes(), "parent hashes")
			if want == nil {
				want = got
			} else if !bytes.Equal(got, want) {
				t.Fatalf("step %d (%s): members disagree on the tree hash", step, what)
			}
		}
		sameEpoch(t, members...)
	}
	commit := func(c *testClient, opts CommitOptions) *PendingCommit {
		t.Helper()
		pc, err := c.g.Commit(opts)
		mustNoErr(t, err, "Commit")
		var rest []*testClient
		for _, m := range others(c) {
			if slices.Contains(opts.Remove, m.g.OwnLeaf()) {
				continue
			}
			rest = append(rest, m)
		}
		deliver(t, pc.Message, rest...)
		mustNoErr(t, c.g.MergePendingCommit(pc), "merge")
		members = append(rest, c)
		return pc
	}
	addNew := func(c *testClient, k int, noPath bool) {
		var kps []*KeyPackage
		var bundles []*KeyPackageBundle
		var joiners []*testClient
		for range k {
			j := newClient()
			b := j.bundle(t)
			kps = append(kps, &b.KeyPackage)
			bundles = append(bundles, b)
			joiners = append(joiners, j)
		}
		pc := commit(c, CommitOptions{Add: kps, NoPath: noPath})
		for i, j := range joiners {
			g, err := JoinFromWelcome(cfg, pc.Welcome, bundles[i], JoinOptions{})
			mustNoErr(t, err, "join")
			j.g = g
			members = append(members, j)
		}
	}
	for step := range 40 {
		c := members[rng.IntN(len(members))]
		op := rng.IntN(6)
		if len(members) < 3 && op == 2 {
			op = 1
		}
		var what string
		switch op {
		case 0:
			what = "empty commit with path"
			commit(c, CommitOptions{})
		case 1:
			what = "add with path"
			addNew(c, 1+rng.IntN(3), false)
		case 2:
			what = "remove"
			o := others(c)
			victim := o[rng.IntN(len(o))]
			commit(c, CommitOptions{Remove: []uint32{victim.g.OwnLeaf()}})
		case 3:
			what = "add without path"
			addNew(c, 1+rng.IntN(3), true)
		case 4:
			what = "committed Update proposal"
			o := others(c)
			u := o[rng.IntN(len(o))]
			p, err := u.g.UpdateProposal()
			mustNoErr(t, err, "UpdateProposal")
			msg, err := u.g.Propose(p, nil)
			mustNoErr(t, err, "Propose")
			deliver(t, msg, others(u)...)
			commit(c, CommitOptions{NoPath: rng.IntN(2) == 0})
		case 5:
			what = "external join"
			gi, err := c.g.GroupInfo()
			mustNoErr(t, err, "GroupInfo")
			j := newClient()
			g, msg, err := JoinExternal(cfg, gi, BasicIdentity(j.name, "d1"), j.sig, ExternalJoinOptions{})
			mustNoErr(t, err, "JoinExternal")
			j.g = g
			deliver(t, msg, members...)
			members = append(members, j)
		}
		check(step, what)
	}
}
