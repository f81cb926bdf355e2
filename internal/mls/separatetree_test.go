package mls

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// The ratchet tree beside the GroupInfo (CommitOptions.SeparateTree,
// ExternalJoinOptions.EncodedTree, RFC 9420 §12.4.3.3).

const testTreeCap ExtensionType = 0xF0AA

// capsClient returns a KeyPackage bundle whose leaf lists testTreeCap
// when with is set.
func (c *testClient) bundleCaps(t testing.TB, with bool) *KeyPackageBundle {
	t.Helper()
	opts := KeyPackageOptions{}
	if with {
		opts.Capabilities = &Capabilities{Extensions: []ExtensionType{testTreeCap}}
	}
	b, err := GenerateKeyPackage(c.suite, BasicIdentity(c.name, "d1"), c.sig, opts)
	mustNoErr(t, err, "GenerateKeyPackage")
	return b
}

func hasTreeExtension(t *testing.T, gi []byte) bool {
	t.Helper()
	var m MLSMessage
	mustNoErr(t, m.Unmarshal(gi), "decode GroupInfo")
	return findExtension(m.GroupInfo.Extensions, ExtensionTypeRatchetTree) != nil
}

func TestSeparateTreeExternalJoin(t *testing.T) { forEachSuite(t, testSeparateTreeExternalJoin) }

func testSeparateTreeExternalJoin(t *testing.T, id CipherSuiteID) {
	cfg := withSuite(Config{}, id)
	alice, bob := twoSuiteMembers(t, cfg, id)
	pc, err := alice.g.Commit(CommitOptions{SeparateTree: true})
	mustNoErr(t, err, "commit")
	if hasTreeExtension(t, pc.GroupInfo) {
		t.Fatal("SeparateTree: the GroupInfo still carries the ratchet_tree extension")
	}
	rt := pc.RatchetTree()
	want, err := rt.Marshal()
	mustNoErr(t, err, "marshal tree")
	if !bytes.Equal(pc.Tree, want) {
		t.Fatal("PendingCommit.Tree is not the new epoch's ratchet tree encoding")
	}
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	deliver(t, pc.Message, bob)

	carol := newSuiteClient(t, "carol", id)
	// Without the tree the join is refused.
	if _, _, err := JoinExternal(cfg, pc.GroupInfo, BasicIdentity("carol", "d1"), carol.sig, ExternalJoinOptions{}); !errors.Is(err, ErrInvalidTree) {
		t.Fatalf("join without any tree: %v, want ErrInvalidTree", err)
	}
	// A tree of an earlier epoch (the same members, other keys) is
	// refused with the typed error.
	pc2, err := bob.g.Commit(CommitOptions{SeparateTree: true})
	mustNoErr(t, err, "bob commit")
	_, _, err = JoinExternal(cfg, pc2.GroupInfo, BasicIdentity("carol", "d1"), carol.sig, ExternalJoinOptions{EncodedTree: pc.Tree})
	if !errors.Is(err, ErrTreeHashMismatch) || !errors.Is(err, ErrInvalidTree) {
		t.Fatalf("join with another epoch's tree: %v, want ErrTreeHashMismatch wrapping ErrInvalidTree", err)
	}
	// Garbage is a decode error, not a panic.
	if _, _, err = JoinExternal(cfg, pc2.GroupInfo, BasicIdentity("carol", "d1"), carol.sig, ExternalJoinOptions{EncodedTree: []byte{0x05, 1, 2}}); !errors.Is(err, ErrDecode) {
		t.Fatalf("join with a malformed tree: %v, want ErrDecode", err)
	}
	mustNoErr(t, bob.g.MergePendingCommit(pc2), "merge bob")
	deliver(t, pc2.Message, alice)

	g, commit, err := JoinExternal(cfg, pc2.GroupInfo, BasicIdentity("carol", "d1"), carol.sig, ExternalJoinOptions{EncodedTree: pc2.Tree})
	mustNoErr(t, err, "JoinExternal with the separate tree")
	carol.g = g
	deliver(t, commit, alice, bob)
	sameEpoch(t, alice, bob, carol)
	chat(t, carol, alice, bob)

	// The joiner's own GroupInfo for the server, tree separate.
	gi, tree, err := carol.g.GroupInfoSeparateTree(0)
	mustNoErr(t, err, "GroupInfoSeparateTree")
	if tree == nil || hasTreeExtension(t, gi) {
		t.Fatal("GroupInfoSeparateTree(0) did not separate the tree")
	}
	dave := newSuiteClient(t, "dave", id)
	g, commit, err = JoinExternal(cfg, gi, BasicIdentity("dave", "d1"), dave.sig, ExternalJoinOptions{EncodedTree: tree})
	mustNoErr(t, err, "join from GroupInfoSeparateTree")
	dave.g = g
	deliver(t, commit, alice, bob, carol)
	sameEpoch(t, alice, bob, carol, dave)
}

// An add with SeparateTree still gives the joiner a Welcome with the tree.
func TestSeparateTreeWelcomeKeepsTree(t *testing.T) {
	cfg := Config{}
	alice, bob := twoMembers(t, cfg)
	carol := newTestClient(t, "carol")
	cb := carol.bundle(t)
	pc, err := alice.g.Commit(CommitOptions{SeparateTree: true, Add: []*KeyPackage{&cb.KeyPackage}})
	mustNoErr(t, err, "commit")
	if pc.Tree == nil || hasTreeExtension(t, pc.GroupInfo) {
		t.Fatal("the server's GroupInfo kept the tree")
	}
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	deliver(t, pc.Message, bob)
	carol.g, err = JoinFromWelcome(cfg, pc.Welcome, cb, JoinOptions{})
	mustNoErr(t, err, "join from the Welcome")
	sameEpoch(t, alice, bob, carol)

	// OmitRatchetTree with SeparateTree: one GroupInfo serves both.
	dave := newTestClient(t, "dave")
	db := dave.bundle(t)
	pc, err = alice.g.Commit(CommitOptions{SeparateTree: true, OmitRatchetTree: true, Add: []*KeyPackage{&db.KeyPackage}})
	mustNoErr(t, err, "commit")
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	deliver(t, pc.Message, bob, carol)
	var rt RatchetTree
	mustNoErr(t, rt.Unmarshal(pc.Tree), "decode tree")
	dave.g, err = JoinFromWelcome(cfg, pc.Welcome, db, JoinOptions{RatchetTree: rt})
	mustNoErr(t, err, "join from the Welcome with the tree out of band")
	sameEpoch(t, alice, bob, carol, dave)
}

// The default stays embedded, byte for byte what GroupInfo() signs.
func TestCommitGroupInfoEmbeddedByDefault(t *testing.T) {
	alice, _ := twoMembers(t, Config{})
	pc, err := alice.g.Commit(CommitOptions{})
	mustNoErr(t, err, "commit")
	if pc.Tree != nil || !hasTreeExtension(t, pc.GroupInfo) {
		t.Fatal("default commit did not embed the tree")
	}
	pc, err = alice.g.Commit(CommitOptions{SeparateTree: true, SeparateTreeIf: testTreeCap})
	mustNoErr(t, err, "commit")
	if pc.Tree != nil || !hasTreeExtension(t, pc.GroupInfo) {
		t.Fatal("SeparateTreeIf: members without the capability, yet the tree was separated")
	}
}

// SeparateTreeIf follows membership: one leaf without the capability keeps
// the tree embedded; removing it separates the tree.
func TestSeparateTreeIfCapability(t *testing.T) {
	cfg := Config{}
	alice := newTestClient(t, "alice")
	var err error
	alice.g, err = CreateGroup(cfg, NewGroupID(), 1, BasicIdentity("alice", "d1"), alice.sig,
		GroupOptions{Capabilities: &Capabilities{Extensions: []ExtensionType{testTreeCap}}})
	mustNoErr(t, err, "CreateGroup")
	bob, old := newTestClient(t, "bob"), newTestClient(t, "old")
	bb, ob := bob.bundleCaps(t, true), old.bundleCaps(t, false)
	opts := CommitOptions{SeparateTree: true, SeparateTreeIf: testTreeCap}

	opts.Add = []*KeyPackage{&bb.KeyPackage}
	pc, err := alice.g.Commit(opts)
	mustNoErr(t, err, "add bob")
	if pc.Tree == nil {
		t.Fatal("every member lists the capability, yet the tree stayed embedded")
	}
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	bob.g, err = JoinFromWelcome(cfg, pc.Welcome, bb, JoinOptions{})
	mustNoErr(t, err, "bob joins")

	opts.Add = []*KeyPackage{&ob.KeyPackage}
	pc, err = alice.g.Commit(opts)
	mustNoErr(t, err, "add old")
	if pc.Tree != nil || !hasTreeExtension(t, pc.GroupInfo) {
		t.Fatal("a member without the capability joins, yet the tree was separated")
	}
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	deliver(t, pc.Message, bob)
	if bob.g.AllMembersSupport(testTreeCap) {
		t.Fatal("bob's state says every member supports the capability")
	}

	opts.Add = nil
	pc, err = bob.g.Commit(opts)
	mustNoErr(t, err, "bob commits")
	if pc.Tree != nil {
		t.Fatal("old is still a member, yet bob separated the tree")
	}
	bob.g.ClearPendingCommit()

	opts.Remove = []uint32{2}
	pc, err = alice.g.Commit(opts)
	mustNoErr(t, err, "remove old")
	if pc.Tree == nil {
		t.Fatal("old was removed, yet the tree stayed embedded")
	}
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	deliver(t, pc.Message, bob)
	if !bob.g.AllMembersSupport(testTreeCap) {
		t.Fatal("bob's state still counts the removed member")
	}
}

// The cached count matches a fresh walk after random adds, removes and
// leaf updates, on clones too.
func TestAllSupportCacheMatchesWalk(t *testing.T) {
	s, err := Suite(1)
	mustNoErr(t, err, "suite")
	leaf := func(with bool) *LeafNode {
		ln := &LeafNode{}
		if with {
			ln.Capabilities.Extensions = []ExtensionType{7, testTreeCap}
		}
		return ln
	}
	walk := func(tr *ratchetTree) bool {
		for x := 0; x < len(tr.nodes); x += 2 {
			if n := tr.nodes[x]; n != nil && !slices.Contains(n.Leaf.Capabilities.Extensions, testTreeCap) {
				return false
			}
		}
		return true
	}
	rng := rand.New(rand.NewPCG(1, 2))
	tr := newRatchetTree(s, leaf(true))
	tr.allSupport(testTreeCap)
	for i := 0; i < 2000; i++ {
		n := int(tr.leafCount())
		switch op := rng.IntN(4); {
		case op == 0 || n < 2:
			tr.addLeaf(leaf(rng.IntN(5) != 0))
		case op == 1:
			if l := leafIndex(rng.IntN(n)); tr.leaf(l) != nil {
				tr.removeLeaf(l)
				tr.truncate()
			}
		case op == 2:
			if l := leafIndex(rng.IntN(n)); tr.leaf(l) != nil {
				tr.updateLeaf(l, leaf(rng.IntN(2) == 0))
			}
		default:
			c := tr.clone()
			c.addLeaf(leaf(false))
			if c.allSupport(testTreeCap) {
				t.Fatal("a clone with a leaf lacking the capability says all support it")
			}
		}
		if got, want := tr.allSupport(testTreeCap), walk(tr); got != want {
			t.Fatalf("step %d: cached %v, walk %v", i, got, want)
		}
	}
	// Asking about another type recounts.
	if tr.allSupport(ExtensionTypeApplicationID) != walkType(tr, ExtensionTypeApplicationID) {
		t.Fatal("another type's answer is wrong")
	}
}

func walkType(tr *ratchetTree, typ ExtensionType) bool {
	for x := 0; x < len(tr.nodes); x += 2 {
		if lacks(tr.nodes[x], typ) {
			return false
		}
	}
	return true
}

// The tree's encoding cache (pubCache) never changes what is encoded:
// through a random run of commits (adds, removes, empty commits, commits
// redone from the same state, a member processing them, a state exported
// and imported), every separately returned tree and every embedded one
// equals the tree encoded from scratch, and the importer's state encodes
// the same.
func TestTreeEncodingCacheMatchesGeneric(t *testing.T) {
	cfg := Config{}
	alice, bob := twoMembers(t, cfg)
	rng := rand.New(rand.NewPCG(3, 4))
	var others []uint32
	generic := func(rt RatchetTree) []byte {
		b, err := rt.Marshal()
		mustNoErr(t, err, "generic encoding")
		return b
	}
	check := func(step int, pc *PendingCommit) {
		t.Helper()
		want := generic(pc.RatchetTree())
		if pc.Tree != nil {
			if !bytes.Equal(pc.Tree, want) {
				t.Fatalf("step %d: separate tree differs from the generic encoding", step)
			}
			return
		}
		var m MLSMessage
		mustNoErr(t, m.Unmarshal(pc.GroupInfo), "GroupInfo")
		x := findExtension(m.GroupInfo.Extensions, ExtensionTypeRatchetTree)
		if x == nil || !bytes.Equal(x.Data, want) {
			t.Fatalf("step %d: embedded tree differs from the generic encoding", step)
		}
	}
	for step := 0; step < 40; step++ {
		opts := CommitOptions{SeparateTree: rng.IntN(3) != 0}
		switch op := rng.IntN(4); {
		case op == 0 || len(others) == 0:
			c := newTestClient(t, fmt.Sprintf("c%d", step))
			b := c.bundle(t)
			opts.Add = []*KeyPackage{&b.KeyPackage}
		case op == 1:
			i := rng.IntN(len(others))
			opts.Remove = []uint32{others[i]}
			others = slices.Delete(others, i, i+1)
		}
		if rng.IntN(4) == 0 {
			// A commit dropped (another won) and made again.
			pc, err := alice.g.Commit(CommitOptions{SeparateTree: true})
			mustNoErr(t, err, "dropped commit")
			check(step, pc)
			alice.g.ClearPendingCommit()
		}
		pc, err := alice.g.Commit(opts)
		mustNoErr(t, err, "commit")
		check(step, pc)
		mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
		others = append(others, pc.Added...)
		deliver(t, pc.Message, bob)
		if rng.IntN(3) == 0 {
			raw, err := alice.g.Export()
			mustNoErr(t, err, "export")
			alice.g, err = ImportGroup(cfg, raw)
			mustNoErr(t, err, "import")
			clear(raw) // the importer keeps no alias of the state buffer
		}
		// Bob's tree (built by processing, never encoded) and its encoding.
		tree, err := bob.g.tree.encodedPublic()
		mustNoErr(t, err, "bob's tree")
		if !bytes.Equal(tree, generic(bob.g.RatchetTree())) {
			t.Fatalf("step %d: bob's tree encodes differently", step)
		}
	}
}

// Wiping an exported state buffer (it holds secrets) does not touch the
// tree's encoding cache: the group encodes the same afterwards.
func TestExportBufferIsNotTheTreeCache(t *testing.T) {
	alice, _ := twoMembers(t, Config{})
	pc, err := alice.g.Commit(CommitOptions{SeparateTree: true})
	mustNoErr(t, err, "commit")
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	before := alice.g.tree.pub
	raw, err := alice.g.Export()
	mustNoErr(t, err, "export")
	if alice.g.tree.pub != before {
		t.Fatal("Export made its buffer the tree's encoding cache")
	}
	clear(raw)
	_, tree, err := alice.g.GroupInfoSeparateTree(0)
	mustNoErr(t, err, "GroupInfoSeparateTree")
	rt := alice.g.RatchetTree()
	want, err := rt.Marshal()
	mustNoErr(t, err, "generic encoding")
	if !bytes.Equal(tree, want) {
		t.Fatal("the tree encodes differently after its exported state was wiped")
	}
}

// An imported state's tree encoding cache (seeded from the state's bytes)
// encodes exactly what the generic encoder writes, whatever the input.
func FuzzImportedTreeEncoding(f *testing.F) {
	for _, s := range fuzzStates(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		g, err := ImportGroup(Config{}, in)
		if err != nil {
			return
		}
		got, err := g.tree.encodedPublic()
		if err != nil {
			t.Fatalf("imported tree does not encode: %v", err)
		}
		rt := g.RatchetTree()
		want, err := rt.Marshal()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("imported tree encodes differently from the generic encoder (%v)", err)
		}
	})
}
