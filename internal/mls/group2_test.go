package mls

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// twoMembers returns alice and bob in one group (bob joined by Welcome).
func twoMembers(t *testing.T, cfg Config) (*testClient, *testClient) {
	t.Helper()
	return twoSuiteMembers(t, cfg, 1)
}

// twoSuiteMembers is twoMembers in a group of suite id (cfg must allow it).
func twoSuiteMembers(t *testing.T, cfg Config, id CipherSuiteID) (*testClient, *testClient) {
	t.Helper()
	alice, bob := newSuiteClient(t, "alice", id), newSuiteClient(t, "bob", id)
	var err error
	alice.g, err = CreateGroup(cfg, NewGroupID(), id, BasicIdentity("alice", "d1"), alice.sig, GroupOptions{})
	mustNoErr(t, err, "CreateGroup")
	bb := bob.bundle(t)
	pc, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&bb.KeyPackage}})
	mustNoErr(t, err, "Commit")
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	bob.g, err = JoinFromWelcome(cfg, pc.Welcome, bb, JoinOptions{})
	mustNoErr(t, err, "join")
	return alice, bob
}

func TestExternalJoin(t *testing.T) { forEachSuite(t, testExternalJoin) }

func testExternalJoin(t *testing.T, id CipherSuiteID) {
	cfg := withSuite(Config{}, id)
	alice, bob := twoSuiteMembers(t, cfg, id)
	gi, err := alice.g.GroupInfo()
	mustNoErr(t, err, "GroupInfo")
	carol := newSuiteClient(t, "carol", id)
	g, commit, err := JoinExternal(cfg, gi, BasicIdentity("carol", "d1"), carol.sig, ExternalJoinOptions{})
	mustNoErr(t, err, "JoinExternal")
	carol.g = g
	deliver(t, commit, alice, bob)
	sameEpoch(t, alice, bob, carol)
	chat(t, carol, alice, bob)
	chat(t, alice, bob, carol)

	// bob lost his state and rejoins, removing his old leaf.
	gi, err = carol.g.GroupInfo()
	mustNoErr(t, err, "GroupInfo")
	g, commit, err = JoinExternal(cfg, gi, BasicIdentity("bob", "d1"), bob.sig, ExternalJoinOptions{RemovePrior: true})
	mustNoErr(t, err, "rejoin")
	deliver(t, commit, alice, carol)
	bob.g = g
	sameEpoch(t, alice, bob, carol)
	if n := len(alice.g.Members()); n != 3 {
		t.Fatalf("%d members after rejoin", n)
	}
	chat(t, bob, alice, carol)

}

func TestPSKAndExtensions(t *testing.T) { forEachSuite(t, testPSKAndExtensions) }

func testPSKAndExtensions(t *testing.T, suite CipherSuiteID) {
	psk := NewSecret(bytes.Repeat([]byte{7}, 32))
	cfg := withSuite(Config{PSKs: func(id []byte) (Secret, bool) { return psk, string(id) == "k1" }}, suite)
	alice, bob := twoSuiteMembers(t, cfg, suite)
	pc, err := alice.g.Commit(CommitOptions{PSKs: []PreSharedKeyID{alice.g.ExternalPSK([]byte("k1")), alice.g.ResumptionPSKID(alice.g.Epoch())}})
	mustNoErr(t, err, "commit PSKs")
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	sameEpoch(t, alice, bob)
	if _, err := alice.g.Commit(CommitOptions{PSKs: []PreSharedKeyID{alice.g.ExternalPSK([]byte("nope"))}}); !errors.Is(err, ErrPSKNotFound) {
		t.Fatalf("unknown PSK: %v", err)
	}
	// External senders via GroupContextExtensions, then an external Remove proposal.
	ext := newSuiteClient(t, "server", suite)
	s, _ := Suite(suite)
	_, extPub, _ := s.SignaturePrivateKeyFromBytes(ext.sig.Bytes())
	x, err := ExternalSendersExtension([]ExternalSender{{SignatureKey: extPub, Credential: Credential{Type: CredentialTypeBasic, Identity: []byte("server")}}})
	mustNoErr(t, err, "extension")
	exts := []Extension{x}
	pc, err = bob.g.Commit(CommitOptions{GroupContextExtensions: &exts})
	mustNoErr(t, err, "commit GCE")
	deliver(t, pc.Message, alice)
	mustNoErr(t, bob.g.MergePendingCommit(pc), "merge")
	sameEpoch(t, alice, bob)
	carol := newSuiteClient(t, "carol", suite)
	cb := carol.bundle(t)
	gc := alice.g.Context()
	msg, err := ExternalProposal(&gc, 0, &Proposal{Type: ProposalTypeAdd, Add: &Add{KeyPackage: cb.KeyPackage}}, ext.sig)
	mustNoErr(t, err, "ExternalProposal")
	deliver(t, msg, alice, bob)
	pc, err = alice.g.Commit(CommitOptions{})
	mustNoErr(t, err, "commit external proposal")
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	carol.g, err = JoinFromWelcome(cfg, pc.Welcome, cb, JoinOptions{})
	mustNoErr(t, err, "carol joins")
	sameEpoch(t, alice, bob, carol)
}

func TestReInitAndBranch(t *testing.T) {
	cfg := Config{AllowedSuites: []CipherSuiteID{1, 3}}
	alice, bob := twoMembers(t, cfg)
	// Downgrade guard: suite 2 is not allowed.
	if _, err := alice.g.Commit(CommitOptions{ReInit: &ReInit{GroupID: NewGroupID(), Version: 1, CipherSuite: 2}}); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("ReInit to a suite outside the allowlist: %v", err)
	}
	newID := NewGroupID()
	pc, err := alice.g.Commit(CommitOptions{ReInit: &ReInit{GroupID: newID, Version: 1, CipherSuite: 1}})
	mustNoErr(t, err, "ReInit commit")
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	if bob.g.PendingReInit() == nil || alice.g.Active() {
		t.Fatal("ReInit not recorded")
	}
	if _, err := alice.g.Protect([]byte("x"), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("Protect after ReInit: %v", err)
	}
	bb := bob.bundle(t)
	ng, welcome, err := alice.g.ReInitGroup(alice.sig, []*KeyPackage{&bb.KeyPackage}, SubgroupOptions{})
	mustNoErr(t, err, "ReInitGroup")
	nb, err := JoinSubgroup(bob.g, welcome, bb, JoinOptions{})
	mustNoErr(t, err, "JoinSubgroup")
	alice.g, bob.g = ng, nb
	sameEpoch(t, alice, bob)
	chat(t, alice, bob)

	// Branch.
	bb = bob.bundle(t)
	br, welcome, err := alice.g.Branch(NewGroupID(), nil, []*KeyPackage{&bb.KeyPackage}, SubgroupOptions{OmitRatchetTree: true})
	mustNoErr(t, err, "Branch")
	nb, err = JoinSubgroup(bob.g, welcome, bb, JoinOptions{RatchetTree: br.RatchetTree()})
	mustNoErr(t, err, "join branch")
	a2, b2 := &testClient{name: "a2", g: br}, &testClient{name: "b2", g: nb}
	sameEpoch(t, a2, b2)
	chat(t, b2, a2)
}

func TestEpochGuards(t *testing.T) { forEachSuite(t, testEpochGuards) }

func testEpochGuards(t *testing.T, id CipherSuiteID) {
	cfg := withSuite(Config{MaxPastEpochs: 1}, id)
	alice, bob := twoSuiteMembers(t, cfg, id)
	m1, _ := bob.g.Protect([]byte("e1"), nil)
	for i := 0; i < 2; i++ {
		pc, err := alice.g.Commit(CommitOptions{})
		mustNoErr(t, err, "commit")
		deliver(t, pc.Message, bob)
		mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
		// A replayed old commit is refused.
		if _, err := bob.g.ProcessMessage(pc.Message); !errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("replayed commit: %v", err)
		}
	}
	if _, err := alice.g.ProcessMessage(m1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("message beyond MaxPastEpochs: %v", err)
	}
	// Stale pending commit: bob's commit loses against alice's.
	pcB, err := bob.g.Commit(CommitOptions{})
	mustNoErr(t, err, "bob commit")
	pcA, err := alice.g.Commit(CommitOptions{})
	mustNoErr(t, err, "alice commit")
	deliver(t, pcA.Message, bob)
	if err := bob.g.MergePendingCommit(pcB); err == nil {
		t.Fatal("merged a commit for a past epoch")
	}
	mustNoErr(t, alice.g.MergePendingCommit(pcA), "merge")
	sameEpoch(t, alice, bob)
	// Other group.
	other, _ := twoSuiteMembers(t, cfg, id)
	m, _ := other.g.Protect([]byte("x"), nil)
	if _, err := alice.g.ProcessMessage(m); !errors.Is(err, ErrWrongGroup) {
		t.Fatalf("other group: %v", err)
	}
	// Out of order within the window, and the used key is deleted.
	var msgs [][]byte
	for i := 0; i < 5; i++ {
		m, _ := alice.g.Protect([]byte{byte(i)}, nil)
		msgs = append(msgs, m)
	}
	for _, i := range []int{4, 0, 2, 1, 3} {
		p, err := bob.g.ProcessMessage(msgs[i])
		mustNoErr(t, err, "out of order")
		if p.ApplicationData[0] != byte(i) {
			t.Fatal("wrong plaintext")
		}
	}
	if _, err := bob.g.ProcessMessage(msgs[2]); !errors.Is(err, ErrGeneration) {
		t.Fatalf("replay: %v", err)
	}
}

func TestAddKeyPackageChecks(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	cfg := Config{Now: func() time.Time { return now }, AllowedSuites: []CipherSuiteID{1, 3}}
	alice := newTestClient(t, "alice")
	var err error
	alice.g, err = CreateGroup(cfg, NewGroupID(), 1, []byte("alice/d"), alice.sig, GroupOptions{})
	mustNoErr(t, err, "CreateGroup")
	bob := newTestClient(t, "bob")
	old, err := GenerateKeyPackage(1, []byte("bob/d"), bob.sig, KeyPackageOptions{Now: now.Add(-48 * time.Hour), Lifetime: time.Hour})
	mustNoErr(t, err, "kp")
	if _, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&old.KeyPackage}}); !errors.Is(err, ErrInvalidProposal) {
		t.Fatalf("expired KeyPackage: %v", err)
	}
	s3, _ := Suite(3)
	sig3, _, _ := s3.GenerateSignatureKey()
	kp3, err := GenerateKeyPackage(3, []byte("bob/d"), sig3, KeyPackageOptions{Now: now})
	mustNoErr(t, err, "kp3")
	if _, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&kp3.KeyPackage}}); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("KeyPackage of another suite: %v", err)
	}
	// A duplicate of an existing member is refused.
	ab, err := GenerateKeyPackage(1, []byte("alice/d"), alice.sig, KeyPackageOptions{Now: now})
	mustNoErr(t, err, "dup kp")
	if _, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&ab.KeyPackage}}); !errors.Is(err, ErrInvalidProposal) {
		t.Fatalf("same signature key as a member: %v", err)
	}
	// Remove of the committer and path rules.
	if _, err := alice.g.Commit(CommitOptions{Remove: []uint32{0}}); !errors.Is(err, ErrInvalidProposal) {
		t.Fatalf("self remove: %v", err)
	}
}

// forgeCommit signs and frames commit c as alice (public message).
func forgeCommit(t *testing.T, g *Group, c *Commit, tag []byte) []byte {
	t.Helper()
	content := &FramedContent{GroupID: g.gc.GroupID, Epoch: g.gc.Epoch, Sender: Sender{Type: SenderTypeMember, LeafIndex: uint32(g.own)},
		ContentType: ContentTypeCommit, Commit: c}
	ac, err := g.suite.SignContent(WireFormatPublicMessage, content, &g.gc, g.sigPriv)
	mustNoErr(t, err, "sign")
	ac.Auth.ConfirmationTag = tag
	pm, err := g.suite.ProtectPublic(ac, &g.gc, g.es.MembershipKey)
	mustNoErr(t, err, "protect")
	raw, err := (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}).Marshal()
	mustNoErr(t, err, "marshal")
	return raw
}

func TestCommitValidation(t *testing.T) { forEachSuite(t, testCommitValidation) }

func testCommitValidation(t *testing.T, id CipherSuiteID) {
	cfg := withSuite(Config{PublicHandshake: true}, id)
	alice, bob := twoSuiteMembers(t, cfg, id)
	carol := newSuiteClient(t, "carol", id)
	cb := carol.bundle(t)
	pc, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&cb.KeyPackage}})
	mustNoErr(t, err, "add carol")
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	tag := make([]byte, alice.g.suite.Nh())
	cases := []struct {
		name string
		c    *Commit
		want error
	}{
		{"remove without path", &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: 2}}}}}, ErrInvalidCommit},
		{"empty commit without path", &Commit{}, ErrInvalidCommit},
		{"remove committer", &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: 0}}}}}, ErrInvalidProposal},
		{"remove blank", &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: 3}}}}}, ErrInvalidProposal},
		{"double remove", &Commit{Proposals: []ProposalOrRef{
			{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: 2}}},
			{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: 2}}}}}, ErrInvalidProposal},
		{"external init by member", &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeExternalInit, ExternalInit: &ExternalInit{KEMOutput: make([]byte, 32)}}}}}, ErrInvalidProposal},
		{"unknown reference", &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeReference, Reference: make([]byte, 32)}}}, ErrInvalidProposal},
		{"reinit with others", &Commit{Proposals: []ProposalOrRef{
			{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeReInit, ReInit: &ReInit{GroupID: []byte("x"), Version: 1, CipherSuite: id}}},
			{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: alice.g.ExternalPSK([]byte("k"))}}}}}, ErrInvalidProposal},
		{"bad confirmation tag (add without path)", &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeAdd, Add: &Add{KeyPackage: newSuiteClient(t, "dave", id).bundle(t).KeyPackage}}}}}, ErrBadConfirmationTag},
	}
	before := bob.g.EpochAuthenticator()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bob.g.ProcessMessage(forgeCommit(t, alice.g, tc.c, tag))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !bytes.Equal(bob.g.EpochAuthenticator(), before) {
				t.Fatal("state changed by a rejected commit")
			}
		})
	}
	// A tampered membership tag.
	pc, err = alice.g.Commit(CommitOptions{})
	mustNoErr(t, err, "commit")
	bad := bytes.Clone(pc.Message)
	bad[len(bad)-1] ^= 1
	if _, err := bob.g.ProcessMessage(bad); !errors.Is(err, ErrBadMembershipTag) {
		t.Fatalf("tampered tag: %v", err)
	}
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	sameEpoch(t, alice, bob)
}

func TestCommitWithoutPath(t *testing.T) { forEachSuite(t, testCommitWithoutPath) }

func testCommitWithoutPath(t *testing.T, suite CipherSuiteID) {
	psk := NewSecret(bytes.Repeat([]byte{9}, 32))
	cfg := withSuite(Config{PSKs: func(id []byte) (Secret, bool) { return psk, true }}, suite)
	alice, bob := twoSuiteMembers(t, cfg, suite)
	carol := newSuiteClient(t, "carol", suite)
	cb := carol.bundle(t)
	pc, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&cb.KeyPackage}, PSKs: []PreSharedKeyID{alice.g.ExternalPSK([]byte("k"))}, NoPath: true})
	mustNoErr(t, err, "partial commit")
	var m MLSMessage
	mustNoErr(t, m.Unmarshal(pc.Message), "decode")
	deliver(t, pc.Message, bob)
	mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
	carol.g, err = JoinFromWelcome(cfg, pc.Welcome, cb, JoinOptions{})
	mustNoErr(t, err, "join with PSK, no path secret")
	sameEpoch(t, alice, bob, carol)
	chat(t, carol, alice, bob)
	// NoPath is ignored when a path is required (Remove).
	pc, err = bob.g.Commit(CommitOptions{Remove: []uint32{carol.g.OwnLeaf()}, NoPath: true})
	mustNoErr(t, err, "remove")
	deliver(t, pc.Message, alice, carol)
	mustNoErr(t, bob.g.MergePendingCommit(pc), "merge")
	sameEpoch(t, alice, bob)
	if carol.g.Active() {
		t.Fatal("carol still active")
	}
}

// TestExternalJoinReportsJoiner: the members processing an external
// commit see the joiner in Processed.Added at the leaf it took, both for
// a fresh join (a new leaf) and for a rejoin that removes the prior leaf
// (the joiner is added and its old leaf removed). Before the fix Added
// was empty and the joiner could only be found afterwards by identity.
func TestExternalJoinReportsJoiner(t *testing.T) {
	cfg := Config{}
	alice, bob := twoMembers(t, cfg)
	gi, err := alice.g.GroupInfo()
	mustNoErr(t, err, "GroupInfo")
	carol := newSuiteClient(t, "carol", 1)
	g, commit, err := JoinExternal(cfg, gi, BasicIdentity("carol", "d1"), carol.sig, ExternalJoinOptions{})
	mustNoErr(t, err, "JoinExternal")
	carol.g = g
	for i, p := range deliver(t, commit, alice, bob) {
		if len(p.Added) != 1 || p.Added[0] != carol.g.OwnLeaf() || len(p.Removed) != 0 {
			t.Fatalf("member %d: Added %v Removed %v after carol's external join at leaf %d", i, p.Added, p.Removed, carol.g.OwnLeaf())
		}
	}

	// bob rejoins, removing his old leaf 1; he takes the leftmost blank
	// leaf, which is that same leaf once the Remove is applied.
	gi, err = carol.g.GroupInfo()
	mustNoErr(t, err, "GroupInfo")
	old := bob.g.OwnLeaf()
	g, commit, err = JoinExternal(cfg, gi, BasicIdentity("bob", "d1"), bob.sig, ExternalJoinOptions{RemovePrior: true})
	mustNoErr(t, err, "rejoin")
	bob.g = g
	for i, p := range deliver(t, commit, alice, carol) {
		if len(p.Added) != 1 || p.Added[0] != bob.g.OwnLeaf() || len(p.Removed) != 1 || p.Removed[0] != old {
			t.Fatalf("member %d: Added %v Removed %v after bob's rejoin at leaf %d (was %d)", i, p.Added, p.Removed, bob.g.OwnLeaf(), old)
		}
	}
	sameEpoch(t, alice, bob, carol)
}
