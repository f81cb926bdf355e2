package mls

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// welcomeCraft builds Welcomes for the last member of a real group with
// a tree, GroupContext, GroupInfo signature and confirmation tag that a
// test may spoil one by one, each Welcome otherwise valid.
type welcomeCraft struct {
	a      *Group
	joiner *KeyPackageBundle
}

type spoil struct {
	badLeaves   []leafIndex // leaves whose signature is flipped
	badTreeHash bool        // GroupContext.tree_hash not the tree's
	badGISig    bool        // GroupInfo signature flipped
	badConfTag  bool        // confirmation tag flipped
}

func (c *welcomeCraft) welcome(t *testing.T, sp spoil) []byte {
	t.Helper()
	s := c.a.suite
	tree := c.a.tree.clone()
	// A flipped leaf signature changes the leaf's tree hash, which the
	// parent hashes of the creator's path cover: blank that path (a valid
	// tree still, as after the creator's removal and re-add).
	tree.blankPath(c.a.own)
	for _, l := range sp.badLeaves {
		leaf := *tree.leaf(l)
		leaf.Signature = slices.Clone(leaf.Signature)
		leaf.Signature[5] ^= 1
		tree.set(l.node(), &Node{Type: NodeTypeLeaf, Leaf: &leaf})
	}
	gc := c.a.Context()
	gc.TreeHash = slices.Clone(tree.rootHash())
	if sp.badTreeHash {
		gc.TreeHash[0] ^= 1
	}
	js := make([]byte, s.Nh())
	_, _ = rand.Read(js)
	joinerSecret := NewSecret(js)
	psk, err := s.PSKSecret(nil)
	mustNoErr(t, err, "psk secret")
	es, err := s.EpochSecrets(joinerSecret, psk, &gc)
	mustNoErr(t, err, "epoch secrets")
	tag := s.ConfirmationTag(es.ConfirmationKey, gc.ConfirmedTranscriptHash)
	if sp.badConfTag {
		tag[0] ^= 1
	}
	pub := tree.public()
	rt, err := pub.Marshal()
	mustNoErr(t, err, "tree")
	gi := &GroupInfo{GroupContext: gc, Extensions: []Extension{{Type: ExtensionTypeRatchetTree, Data: rt}},
		ConfirmationTag: tag, Signer: uint32(c.a.own)}
	mustNoErr(t, s.SignGroupInfo(gi, c.a.sigPriv), "sign GroupInfo")
	if sp.badGISig {
		gi.Signature[3] ^= 1
	}
	ws, err := s.WelcomeSecret(joinerSecret, psk)
	mustNoErr(t, err, "welcome secret")
	egi, err := s.EncryptGroupInfo(gi, ws)
	mustNoErr(t, err, "encrypt GroupInfo")
	egs, err := s.EncryptGroupSecrets(&c.joiner.KeyPackage, &GroupSecrets{JoinerSecret: joinerSecret}, egi)
	mustNoErr(t, err, "encrypt GroupSecrets")
	w, err := (&Welcome{CipherSuite: s.id, Secrets: []EncryptedGroupSecrets{egs}, EncryptedGroupInfo: egi}).Marshal()
	mustNoErr(t, err, "Welcome")
	return w
}

// TestJoinFromWelcomeErrorsInOrder: the leaf signatures of a joined tree
// are checked on other goroutines while the join goes on, yet the error
// is the one the checks in their sequential order give: a bad tree hash
// before any leaf signature, the first bad leaf in leaf order before a
// bad GroupInfo signature or confirmation tag; every time.
func TestJoinFromWelcomeErrorsInOrder(t *testing.T) {
	const n = 150 // enough leaves for several checking goroutines
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	a, _, kb := freshGroup(t, 1, n)
	c := &welcomeCraft{a: a, joiner: kb[n-1]}
	g, err := JoinFromWelcome(benchCfg, c.welcome(t, spoil{}), c.joiner, JoinOptions{})
	mustNoErr(t, err, "join from an unspoiled crafted Welcome")
	if g.EpochAuthenticator() == nil || g.own != leafIndex(n-1) {
		t.Fatalf("joined at leaf %d", g.own)
	}
	// The joined tree's encoding cache (the tree as received) encodes it
	// as the generic encoder does.
	e := &encoder{}
	g.tree.encodePublic(e)
	pub := g.tree.public()
	want, err := pub.Marshal()
	mustNoErr(t, err, "tree")
	if g.tree.pub == nil || !bytes.Equal(e.buf, want) {
		t.Fatalf("joined tree (cache %v) encodes to %d bytes, want %d", g.tree.pub != nil, len(e.buf), len(want))
	}
	leafErr := func(l int) func(error) bool {
		return func(err error) bool {
			return errors.Is(err, ErrInvalidTree) && errors.Is(err, ErrInvalidSignature) &&
				strings.Contains(err.Error(), fmt.Sprintf("leaf %d:", l))
		}
	}
	cases := []struct {
		name string
		sp   spoil
		want func(error) bool
	}{
		{"leaf", spoil{badLeaves: []leafIndex{120, 37}}, leafErr(37)},
		{"last leaf", spoil{badLeaves: []leafIndex{n - 2}}, leafErr(n - 2)},
		{"leaf and GroupInfo signature", spoil{badLeaves: []leafIndex{90}, badGISig: true}, leafErr(90)},
		{"leaf and confirmation tag", spoil{badLeaves: []leafIndex{3, 140}, badConfTag: true}, leafErr(3)},
		{"tree hash and leaf", spoil{badLeaves: []leafIndex{0}, badTreeHash: true}, func(err error) bool {
			return errors.Is(err, ErrInvalidTree) && errors.Is(err, ErrTreeHashMismatch) && !errors.Is(err, ErrInvalidSignature)
		}},
		{"GroupInfo signature", spoil{badGISig: true}, func(err error) bool {
			return errors.Is(err, ErrInvalidSignature) && !errors.Is(err, ErrInvalidTree) && strings.Contains(err.Error(), "GroupInfoTBS")
		}},
		{"confirmation tag", spoil{badConfTag: true}, func(err error) bool { return errors.Is(err, ErrBadConfirmationTag) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := c.welcome(t, tc.sp)
			for range 10 {
				g, err := JoinFromWelcome(benchCfg, w, c.joiner, JoinOptions{})
				if g != nil || !tc.want(err) {
					t.Fatalf("group %v, error %v", g, err)
				}
			}
		})
	}
}

// TestDecodedRatchetTreeEncodingsRoundTrip: the node encodings a joiner
// takes from the received tree (for the tree hash and the leaf
// signatures) are the encodings of the decoded nodes, for the trees of
// the official vectors and a populated 100-member tree.
func TestDecodedRatchetTreeEncodingsRoundTrip(t *testing.T) {
	var trees [][]byte
	for _, c := range readVectors[treeValidationCase](t, "tree-validation.json") {
		trees = append(trees, c.Tree)
	}
	bg := getBenchGroup(t, "populated", 100)
	pubTree := bg.a.RatchetTree()
	rt, err := pubTree.Marshal()
	mustNoErr(t, err, "tree")
	trees = append(trees, rt)
	for i, raw := range trees {
		checkRatchetTreeEncodings(t, raw)
		if t.Failed() {
			t.Fatalf("tree %d", i)
		}
	}
}

// checkRatchetTreeEncodings: decodeRatchetTreeEncodings accepts exactly
// what RatchetTree.Unmarshal does, gives the same nodes, and each node's
// encoding as received is the node's encoding.
func checkRatchetTreeEncodings(t *testing.T, in []byte) {
	t.Helper()
	var want RatchetTree
	errU := want.Unmarshal(in)
	got, encs, pub, errE := decodeRatchetTreeEncodings(in)
	if (errU == nil) != (errE == nil) {
		t.Fatalf("Unmarshal error %v, decodeRatchetTreeEncodings error %v", errU, errE)
	}
	if errU != nil {
		return
	}
	if len(got) != len(want) || len(encs) != len(want) {
		t.Fatalf("%d nodes and %d encodings, want %d nodes", len(got), len(encs), len(want))
	}
	// The tree's encoding cache: the vector body, entry i (presence octet
	// and node) at off[i], written from node i.
	if len(want) == 0 {
		if pub != nil {
			t.Fatal("an encoding cache for an empty tree")
		}
		return
	}
	body := &encoder{}
	for _, n := range want {
		body.optional(n != nil, func(e *encoder) { n.encode(e) })
	}
	if pub == nil || !bytes.Equal(pub.body, body.buf) || len(pub.off) != len(want)+1 || len(pub.nodes) != len(want) ||
		int(pub.off[len(want)]) != len(pub.body) || cap(pub.body) != len(pub.body) {
		t.Fatalf("encoding cache %+v does not hold the tree's body %x", pub, body.buf)
	}
	for i := range want {
		entry := pub.body[pub.off[i]:pub.off[i+1]]
		if pub.nodes[i] != got[i] || (got[i] == nil && !bytes.Equal(entry, []byte{0})) ||
			(got[i] != nil && (entry[0] != 1 || !bytes.Equal(entry[1:], encs[i]))) {
			t.Fatalf("encoding cache entry %d: %x, node %v", i, entry, got[i])
		}
	}
	for i := range want {
		if (want[i] == nil) != (got[i] == nil) || (got[i] == nil) != (encs[i] == nil) {
			t.Fatalf("node %d: blank %v, decoded blank %v, encoding %x", i, want[i] == nil, got[i] == nil, encs[i])
		}
		if want[i] == nil {
			continue
		}
		e := &encoder{}
		want[i].encode(e)
		if e.err != nil || !bytes.Equal(e.buf, encs[i]) {
			t.Fatalf("node %d: received as %x, encodes to %x (%v)", i, encs[i], e.buf, e.err)
		}
		e2 := &encoder{}
		got[i].encode(e2)
		if !bytes.Equal(e2.buf, e.buf) {
			t.Fatalf("node %d: decoded differently", i)
		}
		if cap(encs[i]) != len(encs[i]) {
			t.Fatalf("node %d: encoding's capacity reaches into the next node", i)
		}
	}
}

// FuzzDecodeRatchetTreeEncodings covers the joiner's decoder of the
// ratchet_tree extension.
func FuzzDecodeRatchetTreeEncodings(f *testing.F) {
	for _, c := range readVectors[treeValidationCase](f, "tree-validation.json") {
		f.Add([]byte(c.Tree))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkRatchetTreeEncodings(t, in) })
}

// TestHashAllMatchesTreeHash: the joiner's bottom-up hashing of a whole
// tree gives every node the hash treeHash computes, for the trees of the
// official vectors (blank nodes, unmerged leaves) and a populated tree,
// also with some hashes already cached.
func TestHashAllMatchesTreeHash(t *testing.T) {
	s, _ := Suite(1)
	var trees []RatchetTree
	for _, c := range readVectors[treeValidationCase](t, "tree-validation.json") {
		if c.CipherSuite != 1 {
			continue
		}
		var rt RatchetTree
		mustNoErr(t, rt.Unmarshal(c.Tree), "vector tree")
		trees = append(trees, rt)
	}
	trees = append(trees, getBenchGroup(t, "populated", 100).a.RatchetTree())
	for i, rt := range trees {
		for _, cached := range []int{0, 1, 5} {
			want, err := treeFromPublic(s, rt)
			mustNoErr(t, err, "tree")
			got, err := treeFromPublic(s, rt)
			mustNoErr(t, err, "tree")
			for x := 0; x < len(got.nodes) && cached > 0; x += cached {
				got.treeHash(nodeIndex(x))
			}
			got.hashAll()
			for x := range want.nodes {
				if w := want.computeTreeHash(nodeIndex(x), nil); !bytes.Equal(got.hashes[x], w) {
					t.Fatalf("tree %d (%d cached): node %d hash %x, want %x", i, cached, x, got.hashes[x], w)
				}
			}
		}
	}
}

// TestDecryptGroupInfoTBSAsReceived: the GroupInfoTBS a joiner verifies
// (the plaintext up to the signature) is the encoding of the decoded
// GroupInfo's TBS, for fresh and populated trees.
func TestDecryptGroupInfoTBSAsReceived(t *testing.T) {
	for _, shape := range []string{"fresh", "populated"} {
		bg := getBenchGroup(t, shape, 10)
		w, err := decodeWelcome(bg.welcome)
		mustNoErr(t, err, "Welcome")
		s := bg.a.suite
		ref, err := bg.joiner.KeyPackage.Ref(s)
		mustNoErr(t, err, "ref")
		gs, err := s.DecryptGroupSecrets(w, ref, bg.joiner.InitPriv)
		mustNoErr(t, err, "group secrets")
		psk, err := s.PSKSecret(nil)
		mustNoErr(t, err, "psk")
		gi, tbs, err := s.decryptGroupInfo(w, gs.JoinerSecret, psk)
		mustNoErr(t, err, "GroupInfo")
		want, err := gi.TBS()
		mustNoErr(t, err, "TBS")
		if !bytes.Equal(tbs, want) || findExtension(gi.Extensions, ExtensionTypeRatchetTree) == nil {
			t.Fatalf("%s: TBS as received (%d bytes) is not the GroupInfo's (%d bytes)", shape, len(tbs), len(want))
		}
	}
}

// TestMemberIndexCountsEachCredentialTypeOnce: a member listing a
// credential type several times supports it once, in a short list
// (checked in place) as in a long one (sorted).
func TestMemberIndexCountsEachCredentialTypeOnce(t *testing.T) {
	s, _ := Suite(1)
	long := make([]CredentialType, 0, 40)
	for i := range 40 {
		long = append(long, CredentialType(1+i%3))
	}
	lists := [][]CredentialType{{1}, {1, 1, 2}, {2, 1, 2, 1}, long, nil}
	tree := newRatchetTree(s, &LeafNode{SignatureKey: []byte{0}, EncryptionKey: []byte{0}, Capabilities: Capabilities{Credentials: lists[0]}})
	for i, l := range lists[1:] {
		tree.addLeaf(&LeafNode{SignatureKey: []byte{byte(i + 1)}, EncryptionKey: []byte{byte(i + 1)}, Capabilities: Capabilities{Credentials: l}})
	}
	m := newMemberIndex(tree)
	want := map[CredentialType]int{1: 4, 2: 3, 3: 1}
	if m.n != len(lists) || len(m.supports) != len(want) {
		t.Fatalf("%d members, supports %v; want %d, %v", m.n, m.supports, len(lists), want)
	}
	for c, n := range want {
		if m.supports[c] != n {
			t.Fatalf("supports %v, want %v", m.supports, want)
		}
	}
}
