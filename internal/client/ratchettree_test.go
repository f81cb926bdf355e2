package client

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// storedGroupInfo is what the server hands an external joiner of c's
// channel name.
func storedGroupInfo(t *testing.T, c *Client, name string) *qpcv1.GetGroupInfoResponse {
	t.Helper()
	ctx := ctxT(t)
	ch, err := c.channelOf(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var resp qpcv1.GetGroupInfoResponse
	if err := c.call(ctx, "GetGroupInfo", &qpcv1.GetGroupInfoRequest{ChannelId: ch}, &resp); err != nil {
		t.Fatal(err)
	}
	return &resp
}

// embedsTree reports whether a stored GroupInfo carries the ratchet_tree
// extension.
func embedsTree(t *testing.T, raw []byte) bool {
	t.Helper()
	var m mls.MLSMessage
	if err := m.Unmarshal(raw); err != nil || m.GroupInfo == nil {
		t.Fatalf("stored GroupInfo does not decode: %v", err)
	}
	for _, x := range m.GroupInfo.Extensions {
		if x.Type == mls.ExtensionTypeRatchetTree {
			return true
		}
	}
	return false
}

// TestCommitTreeBesideGroupInfo: between clients of this version and a
// server that stores trees, a commit sends the ratchet tree beside a
// GroupInfo without it, and a member rejoins from the two; once the
// committer learns the server dropped a tree (or never stored them) it
// embeds the tree again, and a rejoin works from that too.
func TestCommitTreeBesideGroupInfo(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := registered(t, srv, "alice"), registered(t, srv, "bob")
	registered(t, srv, "carol")
	ctx := ctxT(t)
	team(t, alice, "bob")
	acceptAll(t, bob)
	gi := storedGroupInfo(t, alice, "team")
	if len(gi.GetRatchetTree()) == 0 || embedsTree(t, gi.GetGroupInfo()) {
		t.Fatalf("alice's add commit: tree beside %d bytes, embedded %v; want the tree beside only",
			len(gi.GetRatchetTree()), embedsTree(t, gi.GetGroupInfo()))
	}
	send(t, alice, "team", "m1")
	if got := texts(t, bob, "team"); fmt.Sprint(got) != "[m1]" {
		t.Fatalf("bob: %q", got)
	}

	// Bob rejoins from the GroupInfo and the tree beside it; his external
	// commit's GroupInfo goes to the server the same way.
	if err := bob.Rejoin(ctx, "team"); err != nil {
		t.Fatalf("rejoin from a separate tree: %v", err)
	}
	gi = storedGroupInfo(t, bob, "team")
	if len(gi.GetRatchetTree()) == 0 || embedsTree(t, gi.GetGroupInfo()) {
		t.Fatal("bob's external commit did not send the tree beside its GroupInfo")
	}
	send(t, bob, "team", "back")
	if got := texts(t, alice, "team"); got[len(got)-1] != "back" {
		t.Fatalf("alice after bob's rejoin: %q", got)
	}

	// A server that dropped a tree: alice embeds it again.
	alice.treeDropped()
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	gi = storedGroupInfo(t, alice, "team")
	if len(gi.GetRatchetTree()) != 0 || !embedsTree(t, gi.GetGroupInfo()) {
		t.Fatal("after the server dropped a tree, alice's commit still sent it beside the GroupInfo")
	}
	if err := bob.Rejoin(ctx, "team"); err != nil {
		t.Fatalf("rejoin from an embedded tree: %v", err)
	}
	send(t, bob, "team", "again")
	if got := texts(t, alice, "team"); got[len(got)-1] != "again" {
		t.Fatalf("alice after the second rejoin: %q", got)
	}
	ms, err := alice.Members(ctx, "team")
	if err != nil || fmt.Sprint(accounts(ms)) != "[alice bob carol]" {
		t.Fatalf("members: %v %v", accounts(ms), err)
	}
}

// TestRejoinRefusesAMismatchedTree: a tree beside the GroupInfo that does
// not hash to its tree_hash (another epoch's, or altered by the server) is
// refused with mls.ErrTreeHashMismatch.
func TestRejoinRefusesAMismatchedTree(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := registered(t, srv, "alice"), registered(t, srv, "bob")
	ctx := ctxT(t)
	team(t, alice, "bob")
	acceptAll(t, bob)
	send(t, alice, "team", "m1")
	texts(t, bob, "team")
	old := storedGroupInfo(t, alice, "team")
	if err := bob.Rejoin(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	cur := storedGroupInfo(t, alice, "team")
	if bytes.Equal(old.GetRatchetTree(), cur.GetRatchetTree()) || len(old.GetRatchetTree()) == 0 {
		t.Fatal("the rejoin did not store a new tree")
	}
	id, err := alice.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer id.Wipe()
	suite, _ := mls.Suite(1)
	sk, _, err := suite.SignaturePrivateKeyFromBytes(id.key.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Wipe()
	_, _, err = mls.JoinExternal(mlsConfig, cur.GetGroupInfo(), mls.BasicIdentity(id.AccountName, id.DeviceID), sk,
		mls.ExternalJoinOptions{RemovePrior: true, EncodedTree: old.GetRatchetTree()})
	if !errors.Is(err, mls.ErrTreeHashMismatch) {
		t.Fatalf("external join with the previous epoch's tree: %v, want mls.ErrTreeHashMismatch", err)
	}
}

func TestOutboxGroupInfoPacking(t *testing.T) {
	gi, tree := []byte{0, 1, 0, 4, 9, 9}, []byte{3, 1, 1, 0}
	if got := packOutboxGroupInfo(gi, nil); !bytes.Equal(got, gi) {
		t.Fatal("without a tree the GroupInfo is stored as before")
	}
	g, tr, err := unpackOutboxGroupInfo(packOutboxGroupInfo(gi, tree))
	if err != nil || !bytes.Equal(g, gi) || !bytes.Equal(tr, tree) {
		t.Fatalf("round trip: %x %x %v", g, tr, err)
	}
	g, tr, err = unpackOutboxGroupInfo(gi)
	if err != nil || !bytes.Equal(g, gi) || tr != nil {
		t.Fatalf("a GroupInfo stored by an earlier version: %x %x %v", g, tr, err)
	}
	for _, bad := range [][]byte{outboxTreeMagic, append(bytes.Clone(outboxTreeMagic), 0, 0, 0, 9, 1, 2), append(bytes.Clone(outboxTreeMagic), 0, 0, 0, 0, 1)} {
		if _, _, err := unpackOutboxGroupInfo(bad); !errors.Is(err, ErrOutboxGroupInfo) {
			t.Fatalf("%x: %v, want ErrOutboxGroupInfo", bad, err)
		}
	}
}

func FuzzUnpackOutboxGroupInfo(f *testing.F) {
	f.Add([]byte{0, 1, 0, 4})
	f.Add(packOutboxGroupInfo([]byte{0, 1, 0, 4}, []byte{1}))
	f.Add(outboxTreeMagic)
	f.Fuzz(func(t *testing.T, b []byte) {
		gi, tree, err := unpackOutboxGroupInfo(b)
		if err != nil {
			return
		}
		if len(tree) > 0 && !bytes.Equal(packOutboxGroupInfo(gi, tree), b) {
			t.Fatalf("%x does not pack back", b)
		}
	})
}
