package mls

import (
	"bytes"
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
	gi, err := s.DecryptGroupInfo(w, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	if gi.GroupContext.Version != ProtocolVersionMLS10 {
		return nil, fmt.Errorf("%w: GroupInfo version %d", ErrInvalidMessage, gi.GroupContext.Version)
	}
	tree, err := g.joinTree(gi, opts.RatchetTree)
	if err != nil {
		return nil, err
	}
	g.gc = gi.GroupContext
	g.tree = tree
	// Our leaf: the one identical to our KeyPackage's LeafNode (§12.4.3.1).
	own := leafIndex(tree.leafCount())
	want, err := bundle.KeyPackage.LeafNode.Marshal()
	if err != nil {
		return nil, err
	}
	tree.members(func(l leafIndex, ln *LeafNode) {
		if bytes.Equal(ln.EncryptionKey, bundle.KeyPackage.LeafNode.EncryptionKey) {
			if got, err := ln.Marshal(); err == nil && bytes.Equal(got, want) {
				own = l
			}
		}
	})
	if uint32(own) >= uint32(tree.leafCount()) {
		return nil, fmt.Errorf("%w: our leaf is not in the tree", ErrInvalidTree)
	}
	g.own = own
	g.keys = nodeKeys{own.node(): {bundle.EncryptionPriv.clone(), bundle.KeyPackage.LeafNode.EncryptionKey}}
	es, err := s.VerifyWelcomeConfirmation(gi, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	g.es = es
	g.confTag = slices.Clone(gi.ConfirmationTag)
	if g.interim, err = s.InterimTranscriptHash(g.gc.ConfirmedTranscriptHash, g.confTag); err != nil {
		return nil, err
	}
	if gs.PathSecret != nil {
		if err := g.adoptPathSecret(leafIndex(gi.Signer), gs.PathSecret.PathSecret); err != nil {
			return nil, err
		}
	}
	if g.st, err = NewSecretTree(s, es.EncryptionSecret, uint32(tree.leafCount())); err != nil {
		return nil, err
	}
	g.rememberResumption()
	return g, nil
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
	s := g.suite
	rt := supplied
	if x := findExtension(gi.Extensions, ExtensionTypeRatchetTree); x != nil {
		if err := rt.Unmarshal(x.Data); err != nil {
			return nil, fmt.Errorf("ratchet_tree extension: %w", err)
		}
	}
	if len(rt) == 0 {
		return nil, fmt.Errorf("%w: no ratchet tree in the GroupInfo and none supplied", ErrInvalidTree)
	}
	tree, err := treeFromPublic(s, rt)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tree.rootHash(), gi.GroupContext.TreeHash) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidTree, ErrTreeHashMismatch)
	}
	if err := tree.verifyStructure(); err != nil {
		return nil, err
	}
	if err := tree.verifyParentHashes(); err != nil {
		return nil, err
	}
	if err := tree.verifyLeafSignatures(gi.GroupContext.GroupID); err != nil {
		return nil, err
	}
	g.gc = gi.GroupContext
	var lerr error
	keys := map[string]bool{}
	for i := range tree.nodes {
		k := tree.encKey(nodeIndex(i))
		if k == nil {
			continue
		}
		if keys[string(k)] {
			return nil, fmt.Errorf("%w: encryption key used twice", ErrInvalidTree)
		}
		keys[string(k)] = true
	}
	idx := newMemberIndex(tree)
	if idx.dup != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidTree, idx.dup)
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
		return nil, lerr
	}
	signer := tree.leaf(leafIndex(gi.Signer))
	if gi.Signer >= uint32(tree.leafCount()) || signer == nil {
		return nil, fmt.Errorf("%w: GroupInfo signer %d is not a member", ErrInvalidMessage, gi.Signer)
	}
	if err := s.VerifyGroupInfo(gi, signer.SignatureKey); err != nil {
		return nil, err
	}
	return tree, nil
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
