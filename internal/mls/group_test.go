package mls

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

type testClient struct {
	name  string
	suite CipherSuiteID
	sig   SignaturePrivateKey
	g     *Group
}

// groupTestSuites are the suites the group state machine tests run on:
// the baseline and both X-Wing hybrids (which have no official vectors,
// so these tests are what covers them end to end).
var groupTestSuites = []CipherSuiteID{
	MLS128DHKEMX25519AES128GCMSHA256Ed25519,
	MLS256XWingAES256GCMSHA512Ed25519,
	MLS256XWingChaCha20Poly1305SHA512Ed25519,
}

// forEachSuite runs f as one subtest per suite of groupTestSuites.
func forEachSuite(t *testing.T, f func(t *testing.T, id CipherSuiteID)) {
	t.Helper()
	for _, id := range groupTestSuites {
		t.Run(fmt.Sprintf("suite=%#x", uint16(id)), func(t *testing.T) { f(t, id) })
	}
}

// withSuite returns cfg with id added to its allowlist (the default
// allowlist is suite 1 only).
func withSuite(cfg Config, id CipherSuiteID) Config {
	allowed := cfg.AllowedSuites
	if len(allowed) == 0 {
		allowed = []CipherSuiteID{1}
	}
	if !slices.Contains(allowed, id) {
		allowed = append(slices.Clone(allowed), id)
	}
	cfg.AllowedSuites = allowed
	return cfg
}

func newTestClient(t testing.TB, name string) *testClient {
	return newSuiteClient(t, name, 1)
}

func newSuiteClient(t testing.TB, name string, id CipherSuiteID) *testClient {
	t.Helper()
	s, err := Suite(id)
	mustNoErr(t, err, "suite")
	sig, _, err := s.GenerateSignatureKey()
	mustNoErr(t, err, "signature key")
	return &testClient{name: name, suite: id, sig: sig}
}

func (c *testClient) bundle(t testing.TB) *KeyPackageBundle {
	t.Helper()
	b, err := GenerateKeyPackage(c.suite, BasicIdentity(c.name, "d1"), c.sig, KeyPackageOptions{})
	mustNoErr(t, err, "GenerateKeyPackage")
	return b
}

// deliver processes msg at every client in to.
func deliver(t testing.TB, msg []byte, to ...*testClient) []*Processed {
	t.Helper()
	var out []*Processed
	for _, c := range to {
		p, err := c.g.ProcessMessage(msg)
		mustNoErr(t, err, "ProcessMessage at "+c.name)
		out = append(out, p)
	}
	return out
}

func sameEpoch(t testing.TB, cs ...*testClient) {
	t.Helper()
	for _, c := range cs[1:] {
		if c.g.Epoch() != cs[0].g.Epoch() || !bytes.Equal(c.g.EpochAuthenticator(), cs[0].g.EpochAuthenticator()) {
			t.Fatalf("%s (epoch %d) and %s (epoch %d) disagree", cs[0].name, cs[0].g.Epoch(), c.name, c.g.Epoch())
		}
	}
}

func chat(t testing.TB, from *testClient, to ...*testClient) {
	t.Helper()
	text := []byte(fmt.Sprintf("hello from %s at %d", from.name, from.g.Epoch()))
	ct, err := from.g.Protect(text, []byte("ad"))
	mustNoErr(t, err, "Protect")
	for _, p := range deliver(t, ct, to...) {
		if p.Kind != KindApplication || !bytes.Equal(p.ApplicationData, text) || !bytes.Equal(p.AuthenticatedData, []byte("ad")) {
			t.Fatalf("application message mangled: %+v", p)
		}
	}
}

func TestGroupLifecycle(t *testing.T) { forEachSuite(t, testGroupLifecycle) }

func testGroupLifecycle(t *testing.T, id CipherSuiteID) {
	for _, public := range []bool{false, true} {
		t.Run(fmt.Sprintf("public=%v", public), func(t *testing.T) {
			cfg := withSuite(Config{PublicHandshake: public}, id)
			alice, bob, carol := newSuiteClient(t, "alice", id), newSuiteClient(t, "bob", id), newSuiteClient(t, "carol", id)
			var err error
			alice.g, err = CreateGroup(cfg, NewGroupID(), id, BasicIdentity("alice", "d1"), alice.sig, GroupOptions{})
			mustNoErr(t, err, "CreateGroup")

			// alice adds bob.
			bb := bob.bundle(t)
			pc, err := alice.g.Commit(CommitOptions{Add: []*KeyPackage{&bb.KeyPackage}})
			mustNoErr(t, err, "Commit add bob")
			mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
			bob.g, err = JoinFromWelcome(cfg, pc.Welcome, bb, JoinOptions{})
			mustNoErr(t, err, "bob joins")
			bb.Wipe() // the group keeps its own copies
			sameEpoch(t, alice, bob)
			if s := fmt.Sprintf("%v %+v", alice.g, bob.g); !strings.HasPrefix(s, "mls.Group{") {
				t.Fatalf("Group prints as %q", s)
			}
			chat(t, alice, bob)
			chat(t, bob, alice)

			// bob adds carol; the server echoes the commit to bob too.
			cb := carol.bundle(t)
			pc, err = bob.g.Commit(CommitOptions{Add: []*KeyPackage{&cb.KeyPackage}, OmitRatchetTree: true})
			mustNoErr(t, err, "Commit add carol")
			deliver(t, pc.Message, alice)
			p := deliver(t, pc.Message, bob)[0]
			if !p.OwnCommit {
				t.Fatal("own commit not recognised")
			}
			carol.g, err = JoinFromWelcome(cfg, pc.Welcome, cb, JoinOptions{RatchetTree: bob.g.RatchetTree()})
			mustNoErr(t, err, "carol joins")
			sameEpoch(t, alice, bob, carol)
			chat(t, carol, alice, bob)

			// carol commits an update (empty commit with path).
			pc, err = carol.g.Commit(CommitOptions{})
			mustNoErr(t, err, "empty commit")
			deliver(t, pc.Message, alice, bob)
			mustNoErr(t, carol.g.MergePendingCommit(pc), "merge")
			sameEpoch(t, alice, bob, carol)
			chat(t, alice, bob, carol)

			// bob proposes an update, alice commits it by reference.
			up, err := bob.g.UpdateProposal()
			mustNoErr(t, err, "UpdateProposal")
			msg, err := bob.g.Propose(up, nil)
			mustNoErr(t, err, "Propose")
			deliver(t, msg, alice, carol)
			pc, err = alice.g.Commit(CommitOptions{})
			mustNoErr(t, err, "commit update")
			ps := deliver(t, pc.Message, bob, carol)
			if len(ps[0].Updated) != 1 {
				t.Fatalf("Updated = %v", ps[0].Updated)
			}
			mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
			sameEpoch(t, alice, bob, carol)
			chat(t, bob, alice, carol)

			// Late message from the previous epoch.
			late, err := carol.g.Protect([]byte("late"), nil)
			mustNoErr(t, err, "Protect")
			pc, err = alice.g.Commit(CommitOptions{Remove: []uint32{bob.g.OwnLeaf()}})
			mustNoErr(t, err, "remove bob")
			ps = deliver(t, pc.Message, bob, carol)
			if !ps[0].SelfRemoved || bob.g.Active() {
				t.Fatal("bob does not know he was removed")
			}
			mustNoErr(t, alice.g.MergePendingCommit(pc), "merge")
			sameEpoch(t, alice, carol)
			if p := deliver(t, late, alice)[0]; string(p.ApplicationData) != "late" {
				t.Fatal("late message")
			}
			if _, err := alice.g.ProcessMessage(late); !errors.Is(err, ErrGeneration) {
				t.Fatalf("replayed late message: %v", err)
			}
			chat(t, carol, alice)
			chat(t, alice, carol)

			// Export and import.
			for _, c := range []*testClient{alice, carol} {
				raw, err := c.g.Export()
				mustNoErr(t, err, "Export")
				raw2, err := c.g.Export()
				mustNoErr(t, err, "Export again")
				if !bytes.Equal(raw, raw2) {
					t.Fatal("Export is not deterministic")
				}
				c.g, err = ImportGroup(cfg, raw)
				mustNoErr(t, err, "ImportGroup")
				raw3, err := c.g.Export()
				mustNoErr(t, err, "Export after import")
				if !bytes.Equal(raw, raw3) {
					t.Fatal("Export after Import differs")
				}
			}
			chat(t, carol, alice)
			pc, err = carol.g.Commit(CommitOptions{})
			mustNoErr(t, err, "commit after import")
			deliver(t, pc.Message, alice)
			mustNoErr(t, carol.g.MergePendingCommit(pc), "merge")
			sameEpoch(t, alice, carol)
			chat(t, alice, carol)
		})
	}
}
