package mls

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
)

// Joining a group: from a Welcome (RFC 9420 §12.4.3.1) and by external
// commit (§12.4.3.2).

// JoinOptions tune JoinFromWelcome and JoinExternal.
type JoinOptions struct {
	// RatchetTree is the group's tree when the Welcome/GroupInfo does not
	// carry the ratchet_tree extension.
	RatchetTree RatchetTree
	// ResumptionGroup and ResumptionPSKs supply resumption PSKs of
	// another group (ReInit, branch) named by the Welcome.
	ResumptionGroup *Group
}

// JoinFromWelcome joins the group a Welcome invites the owner of bundle
// to: it decrypts the group secrets and GroupInfo, validates the ratchet
// tree (tree hash, parent hashes, leaf signatures), the GroupInfo
// signature and the confirmation tag, and derives the epoch. The Welcome
// may be an MLSMessage or a bare Welcome.
func JoinFromWelcome(cfg Config, welcome []byte, bundle *KeyPackageBundle, opts JoinOptions) (*Group, error) {
	w, err := decodeWelcome(welcome)
	if err != nil {
		return nil, err
	}
	if !cfg.allowed(w.CipherSuite) {
		return nil, fmt.Errorf("%w: Welcome for suite %d outside the allowlist", ErrDowngrade, w.CipherSuite)
	}
	if w.CipherSuite != bundle.KeyPackage.CipherSuite {
		return nil, fmt.Errorf("%w: Welcome for suite %d, KeyPackage of suite %d", ErrInvalidMessage, w.CipherSuite, bundle.KeyPackage.CipherSuite)
	}
	s, err := Suite(w.CipherSuite)
	if err != nil {
		return nil, err
	}
	ref, err := bundle.KeyPackage.Ref(s)
	if err != nil {
		return nil, err
	}
	gs, err := s.DecryptGroupSecrets(w, ref, bundle.InitPriv)
	if err != nil {
		return nil, err
	}
	defer gs.Wipe()
	g := &Group{cfg: cfg, suite: s, sigPriv: bundle.SignaturePriv}
	// PSKs: external from the config, resumption from another group.
	var extra []resumptionPSK
	var extraGroup []byte
	if rg := opts.ResumptionGroup; rg != nil {
		extra, extraGroup = rg.resumption, rg.gc.GroupID
	}
	psks, err := g.resolvePSKs(gs.PSKs, extra, extraGroup)
	if err != nil {
		return nil, err
	}
	pskSecret, err := s.PSKSecret(psks)
	if err != nil {
		return nil, err
	}
	defer pskSecret.Wipe()
	gi, giTBS, err := s.decryptGroupInfo(w, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	if gi.GroupContext.Version != ProtocolVersionMLS10 {
		return nil, fmt.Errorf("%w: GroupInfo version %d", ErrInvalidMessage, gi.GroupContext.Version)
	}
	tree, sigs, err := g.checkJoinTree(gi, opts.RatchetTree, giTBS)
	if err != nil {
		return nil, err
	}
	// The leaf signatures are still being checked on other cores while
	// the rest of the join runs here; then this goroutine helps check the
	// leaves left. A bad leaf signature is reported before any error of
	// the rest, as the sequential order would.
	err = g.finishJoinFromWelcome(gi, tree, gs, pskSecret, bundle)
	if serr := sigs.wait(); serr != nil || err != nil {
		g.Wipe()
		return nil, cmp.Or(serr, err)
	}
	g.rememberResumption()
	return g, nil
}

// finishJoinFromWelcome finishes JoinFromWelcome on a checked tree (its
// leaf signatures possibly still being checked): our leaf, the epoch
// secrets and confirmation tag, the path secret and the secret tree.
func (g *Group) finishJoinFromWelcome(gi *GroupInfo, tree *ratchetTree, gs *GroupSecrets, pskSecret Secret, bundle *KeyPackageBundle) error {
	s := g.suite
	g.gc = gi.GroupContext
	g.tree = tree
	// Our leaf: the one identical to our KeyPackage's LeafNode (§12.4.3.1).
	own := leafIndex(tree.leafCount())
	want, err := bundle.KeyPackage.LeafNode.Marshal()
	if err != nil {
		return err
	}
	tree.members(func(l leafIndex, ln *LeafNode) {
		if bytes.Equal(ln.EncryptionKey, bundle.KeyPackage.LeafNode.EncryptionKey) {
			if got, err := ln.Marshal(); err == nil && bytes.Equal(got, want) {
				own = l
			}
		}
	})
	if uint32(own) >= uint32(tree.leafCount()) {
		return fmt.Errorf("%w: our leaf is not in the tree", ErrInvalidTree)
	}
	g.own = own
	g.keys = nodeKeys{own.node(): {bundle.EncryptionPriv.clone(), bundle.KeyPackage.LeafNode.EncryptionKey}}
	es, err := s.VerifyWelcomeConfirmation(gi, gs.JoinerSecret, pskSecret)
	if err != nil {
		return err
	}
	g.es = es
	g.confTag = slices.Clone(gi.ConfirmationTag)
	if g.interim, err = s.InterimTranscriptHash(g.gc.ConfirmedTranscriptHash, g.confTag); err != nil {
		return err
	}
	if gs.PathSecret != nil {
		if err := g.adoptPathSecret(leafIndex(gi.Signer), gs.PathSecret.PathSecret); err != nil {
			return err
		}
	}
	if g.st, err = NewSecretTree(s, es.EncryptionSecret, uint32(tree.leafCount())); err != nil {
		return err
	}
	return nil
}

func decodeWelcome(raw []byte) (*Welcome, error) {
	var m MLSMessage
	if err := m.Unmarshal(raw); err == nil {
		if m.WireFormat != WireFormatWelcome {
			return nil, fmt.Errorf("%w: wire format %d, want Welcome", ErrInvalidMessage, m.WireFormat)
		}
		return m.Welcome, nil
	}
	w := new(Welcome)
	if err := w.Unmarshal(raw); err != nil {
		return nil, err
	}
	return w, nil
}

// joinTree gets the tree of a GroupInfo (extension or supplied) and
// validates it: structure, tree hash against the context, parent hashes,
// leaf signatures and keys, and the GroupInfo signature by its signer.
func (g *Group) joinTree(gi *GroupInfo, supplied RatchetTree) (*ratchetTree, error) {
	tree, sigs, err := g.checkJoinTree(gi, supplied, nil)
	if err != nil {
		return nil, err
	}
	if err := sigs.wait(); err != nil {
		return nil, err
	}
	return tree, nil
}

// checkJoinTree is joinTree with the leaf-signature check left running:
// it is started as soon as the tree is parsed and runs on other cores
// while this goroutine does the other checks, and the caller, which may
// go on deriving the epoch, must call sigs.wait before using the tree.
// Errors are those of the sequential order (parse, tree hash, structure,
// parent hashes, leaf signatures, keys, leaves, GroupInfo signature):
// a failure before the leaf signatures aborts their check, one after
// them is reported only if every leaf signature is good. giTBS, if not
// nil, is gi's GroupInfoTBS as received (gi.TBS() otherwise).
func (g *Group) checkJoinTree(gi *GroupInfo, supplied RatchetTree, giTBS []byte) (tree *ratchetTree, sigs *leafSigCheck, err error) {
	s := g.suite
	rt, encs, pub := supplied, [][]byte(nil), (*pubCache)(nil)
	if x := findExtension(gi.Extensions, ExtensionTypeRatchetTree); x != nil {
		if rt, encs, pub, err = decodeRatchetTreeEncodings(x.Data); err != nil {
			return nil, nil, fmt.Errorf("ratchet_tree extension: %w", err)
		}
	}
	if len(rt) == 0 {
		return nil, nil, fmt.Errorf("%w: no ratchet tree in the GroupInfo and none supplied", ErrInvalidTree)
	}
	if tree, err = treeFromPublic(s, rt); err != nil {
		return nil, nil, err
	}
	// The nodes as received are their encodings (the codec is canonical:
	// decoding then encoding gives the input back), for the tree hash and
	// the leaf signatures.
	copy(tree.encs, encs)
	tree.pub = pub
	sigs = tree.startLeafSignatureCheck(gi.GroupContext.GroupID)
	if err := tree.checkHashes(gi.GroupContext.TreeHash); err != nil {
		sigs.abort()
		return nil, nil, err
	}
	if err := g.checkJoinLeaves(tree, gi, giTBS); err != nil {
		if serr := sigs.wait(); serr != nil {
			return nil, nil, serr
		}
		return nil, nil, err
	}
	return tree, sigs, nil
}

// checkHashes checks what precedes the leaf signatures in a joiner's
// validation: the tree hash against the GroupContext's, the structure
// and the parent hashes.
func (t *ratchetTree) checkHashes(treeHash []byte) error {
	t.hashAll()
	if !bytes.Equal(t.rootHash(), treeHash) {
		return fmt.Errorf("%w: %w", ErrInvalidTree, ErrTreeHashMismatch)
	}
	if err := t.verifyStructure(); err != nil {
		return err
	}
	return t.verifyParentHashes()
}

// checkJoinLeaves checks what follows the leaf signatures in a joiner's
// validation: distinct encryption keys, every leaf against the group
// (§7.3), and the GroupInfo signature by its signer.
func (g *Group) checkJoinLeaves(tree *ratchetTree, gi *GroupInfo, giTBS []byte) error {
	s := g.suite
	g.gc = gi.GroupContext
	var lerr error
	keys := make(map[string]bool, len(tree.nodes))
	for i := range tree.nodes {
		k := tree.encKey(nodeIndex(i))
		if k == nil {
			continue
		}
		if keys[string(k)] {
			return fmt.Errorf("%w: encryption key used twice", ErrInvalidTree)
		}
		keys[string(k)] = true
	}
	idx := newMemberIndex(tree)
	if idx.dup != nil {
		return fmt.Errorf("%w: %w", ErrInvalidTree, idx.dup)
	}
	tree.members(func(l leafIndex, ln *LeafNode) {
		if lerr != nil {
			return
		}
		if err := g.validateLeaf(tree, ln, l, gi.GroupContext.Extensions, false, idx); err != nil {
			lerr = fmt.Errorf("%w: leaf %d: %w", ErrInvalidTree, l, err)
		}
	})
	if lerr != nil {
		return lerr
	}
	signer := tree.leaf(leafIndex(gi.Signer))
	if gi.Signer >= uint32(tree.leafCount()) || signer == nil {
		return fmt.Errorf("%w: GroupInfo signer %d is not a member", ErrInvalidMessage, gi.Signer)
	}
	if giTBS == nil {
		return s.VerifyGroupInfo(gi, signer.SignatureKey)
	}
	return s.VerifyWithLabel(signer.SignatureKey, "GroupInfoTBS", giTBS, gi.Signature)
}

// adoptPathSecret derives the keys of the nodes above the common
// ancestor of our leaf and the committer's from the Welcome's path
// secret, checking them against the tree.
func (g *Group) adoptPathSecret(committer leafIndex, ps Secret) error {
	s := g.suite
	n := g.tree.leafCount()
	x := lca(g.own, committer)
	if uint32(x) >= n.nodeWidth() {
		return fmt.Errorf("%w: committer leaf %d outside the tree", ErrInvalidMessage, committer)
	}
	cur := slices.Clone(ps.Bytes())
	defer func() { clear(cur) }()
	for ok := true; ok; x, ok = x.parent(n) {
		pub := g.tree.encKey(x)
		if pub == nil {
			continue
		}
		priv, got, err := s.deriveNodeKey(cur)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, pub) {
			return fmt.Errorf("%w: Welcome path secret does not match node %d", ErrInvalidMessage, x)
		}
		g.keys[x] = nodeKey{priv, pub}
		next, err := s.DeriveSecret(cur, "path")
		if err != nil {
			return err
		}
		clear(cur)
		cur = next
	}
	return nil
}
