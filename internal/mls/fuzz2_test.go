package mls

import (
	"testing"
)

// Fuzz targets for the part-2 decoders: group state import, ratchet tree
// validation, KeyPackage bundles, and ProcessMessage on a live group.

// fuzzState returns exported states of a small group as seeds.
func fuzzStates(f *testing.F) [][]byte {
	f.Helper()
	cfg := Config{}
	alice, bob := newTestClient(f, "alice"), newTestClient(f, "bob")
	var err error
	alice.g, err = CreateGroup(cfg, NewGroupID(), 1, BasicIdentity("alice", "d1"), alice.sig, GroupOptions{})
	mustNoErr(f, err, "CreateGroup")
	s0, _ := alice.g.Export()
	bb := bob.bundle(f)
	pc, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&bb.KeyPackage}})
	mustNoErr(f, err, "Commit")
	s1, _ := alice.g.Export() // with a pending commit
	mustNoErr(f, alice.g.MergePendingCommit(pc), "merge")
	bob.g, err = JoinFromWelcome(cfg, pc.Welcome, bb, JoinOptions{})
	mustNoErr(f, err, "join")
	m, _ := alice.g.Protect([]byte("x"), nil)
	_, _ = alice.g.Protect([]byte("y"), nil)
	_, _ = bob.g.ProcessMessage(m)
	s2, _ := bob.g.Export()
	return [][]byte{s0, s1, s2}
}

func FuzzImportGroup(f *testing.F) {
	for _, s := range fuzzStates(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		g, err := ImportGroup(Config{}, in)
		if err != nil {
			return
		}
		if _, err := g.Export(); err != nil {
			t.Fatalf("imported state does not export: %v", err)
		}
	})
}

func FuzzValidateRatchetTree(f *testing.F) {
	for _, c := range readVectors[treeValidationCase](f, "tree-validation.json") {
		if c.CipherSuite == 1 {
			f.Add([]byte(c.Tree))
		}
	}
	s, _ := Suite(1)
	f.Fuzz(func(t *testing.T, in []byte) {
		var rt RatchetTree
		if rt.Unmarshal(in) != nil {
			return
		}
		tree, err := treeFromPublic(s, rt)
		if err != nil {
			return
		}
		_ = tree.verifyStructure()
		_ = tree.verifyParentHashes()
		_ = tree.rootHash()
		for i := range tree.nodes {
			_ = tree.resolution(nodeIndex(i))
		}
	})
}

func FuzzKeyPackageBundle(f *testing.F) {
	c := newTestClient(f, "a")
	raw, _ := c.bundle(f).Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, in []byte) { _, _ = UnmarshalKeyPackageBundle(in) })
}

// FuzzProcessMessage feeds arbitrary messages to a two-member group's
// member (restored from its exported state for every input).
func FuzzProcessMessage(f *testing.F) {
	cfg := Config{PublicHandshake: true}
	alice, bob := newTestClient(f, "alice"), newTestClient(f, "bob")
	var err error
	alice.g, err = CreateGroup(cfg, NewGroupID(), 1, []byte("alice/d"), alice.sig, GroupOptions{})
	mustNoErr(f, err, "CreateGroup")
	bb := bob.bundle(f)
	pc, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&bb.KeyPackage}})
	mustNoErr(f, err, "Commit")
	mustNoErr(f, alice.g.MergePendingCommit(pc), "merge")
	bob.g, err = JoinFromWelcome(cfg, pc.Welcome, bb, JoinOptions{})
	mustNoErr(f, err, "join")
	state, err := bob.g.Export()
	mustNoErr(f, err, "export")
	app, _ := alice.g.Protect([]byte("hi"), nil)
	up, _ := alice.g.UpdateProposal()
	prop, _ := alice.g.Propose(up, nil)
	c2, _ := alice.g.Commit(CommitOptions{})
	for _, s := range [][]byte{app, prop, c2.Message, c2.GroupInfo, pc.Welcome} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		g, err := ImportGroup(cfg, state)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = g.ProcessMessage(in)
	})
}
