package mls

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"
)

// TreeKEM (RFC 9420 §7.4-§7.6): creating an UpdatePath for the
// committer's filtered direct path and processing one received in a
// Commit.

// nodeKeys holds the HPKE private keys a member knows, by node index:
// its own leaf and parent nodes on its direct path.
type nodeKeys map[nodeIndex]nodeKey

// nodeKey is a private key with its public key.
type nodeKey struct {
	priv HPKEPrivateKey
	pub  HPKEPublicKey
}

func (k nodeKeys) clone() nodeKeys {
	c := make(nodeKeys, len(k))
	for x, v := range k {
		c[x] = v
	}
	return c
}

// prune drops keys of nodes that are blank, out of range or hold another
// public key in t (after a commit replaced them).
func (k nodeKeys) prune(t *ratchetTree) {
	for x, nk := range k {
		if int(x) >= len(t.nodes) || t.nodes[x] == nil || !bytes.Equal(nk.pub, t.encKey(x)) {
			delete(k, x)
		}
	}
}

// publicOf returns the public key of an HPKE private key.
func (s *CipherSuite) publicOf(priv HPKEPrivateKey) (HPKEPublicKey, error) {
	sk, err := s.kem.id.Scheme().UnmarshalBinaryPrivateKey(priv.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	pub, err := sk.Public().MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return pub, nil
}

// deriveNodeKey is node_priv, node_pub = DeriveKeyPair(DeriveSecret(path_secret, "node")).
func (s *CipherSuite) deriveNodeKey(pathSecret []byte) (HPKEPrivateKey, HPKEPublicKey, error) {
	ns, err := s.DeriveSecret(pathSecret, "node")
	if err != nil {
		return HPKEPrivateKey{}, nil, err
	}
	defer clear(ns)
	return s.DeriveKeyPair(ns)
}

// updatePathResult is what creating an UpdatePath yields.
type updatePathResult struct {
	path         *UpdatePath
	commitSecret Secret
	pathSecrets  map[nodeIndex]Secret // per filtered-direct-path node
	keys         nodeKeys             // new leaf and parent private keys
}

// gcFunc builds the provisional GroupContext for a tree hash.
type gcFunc func(treeHash []byte) (*GroupContext, error)

// applyPathNodes blanks l's direct path and sets the filtered direct
// path's parents to keys (with parent hashes computed top down); it
// returns the parent hash the leaf must carry.
func (t *ratchetTree) applyPathNodes(l leafIndex, fdp []pathStep, keys []HPKEPublicKey) []byte {
	t.blankPath(l)
	var above []byte // parent_hash for the next node down
	for i := len(fdp) - 1; i >= 0; i-- {
		p := &ParentNode{EncryptionKey: keys[i], ParentHash: above}
		t.set(fdp[i].node, &Node{Type: NodeTypeParent, Parent: p})
		above = t.parentHash(p, fdp[i].copath)
	}
	return above
}

// excludedResolution is the copath node's resolution without the leaves
// added by the commit (they get the path secret in their Welcome).
func (t *ratchetTree) excludedResolution(x nodeIndex, exclude []leafIndex) []nodeIndex {
	res := t.resolution(x)
	if len(exclude) == 0 {
		return res
	}
	return slices.DeleteFunc(res, func(y nodeIndex) bool {
		return y.isLeaf() && slices.Contains(exclude, y.leaf())
	})
}

// createUpdatePath refreshes leaf from's path in t (which already has the
// commit's proposals applied): a new leaf (leafTmpl with a fresh
// encryption key, source commit, signed) and new keys on the filtered
// direct path, whose path secrets are encrypted to the copath
// resolutions (without exclude) under the provisional GroupContext.
func (t *ratchetTree) createUpdatePath(from leafIndex, leafTmpl *LeafNode, groupID []byte, sigPriv SignaturePrivateKey, gc gcFunc, exclude []leafIndex) (*updatePathResult, error) {
	s := t.suite
	fdp := t.filteredDirectPath(from)
	res := &updatePathResult{pathSecrets: map[nodeIndex]Secret{}, keys: nodeKeys{}}
	leafPriv, leafPub, err := s.GenerateHPKEKey()
	if err != nil {
		return nil, err
	}
	res.keys[from.node()] = nodeKey{leafPriv, leafPub}
	ps := make([]byte, s.Nh())
	if _, err := rand.Read(ps); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	pubs := make([]HPKEPublicKey, len(fdp))
	secrets := make([][]byte, len(fdp))
	for i, st := range fdp {
		next, err := s.DeriveSecret(ps, "path")
		clear(ps)
		if err != nil {
			return nil, err
		}
		ps = next
		priv, pub, err := s.deriveNodeKey(ps)
		if err != nil {
			return nil, err
		}
		pubs[i], secrets[i] = pub, slices.Clone(ps)
		res.keys[st.node] = nodeKey{priv, pub}
		res.pathSecrets[st.node] = NewSecret(ps)
	}
	cs, err := s.DeriveSecret(ps, "path")
	clear(ps)
	if err != nil {
		return nil, err
	}
	res.commitSecret = adoptSecret(cs)
	ln := *leafTmpl
	ln.EncryptionKey = leafPub
	ln.Source = LeafNodeSourceCommit
	ln.Lifetime = Lifetime{}
	ln.ParentHash = t.applyPathNodes(from, fdp, pubs)
	if err := s.SignLeafNode(&ln, groupID, uint32(from), sigPriv); err != nil {
		return nil, err
	}
	t.setLeaf(from, &ln)
	ctx, err := gc(t.rootHash())
	if err != nil {
		return nil, err
	}
	gcb, err := ctx.Marshal()
	if err != nil {
		return nil, err
	}
	up := &UpdatePath{LeafNode: ln, Nodes: make([]UpdatePathNode, len(fdp))}
	for i, st := range fdp {
		n := &up.Nodes[i]
		n.EncryptionKey = pubs[i]
		for _, y := range t.excludedResolution(st.copath, exclude) {
			ct, err := s.EncryptWithLabel(t.encKey(y), "UpdatePathNode", gcb, secrets[i])
			if err != nil {
				return nil, err
			}
			n.EncryptedPathSecret = append(n.EncryptedPathSecret, ct)
		}
		clear(secrets[i])
	}
	res.path = up
	return res, nil
}

// mergeUpdatePath validates the public part of path from leaf from and
// merges it into t (§12.4.2): node count matching the filtered direct
// path, ciphertext counts matching the resolutions, no key already in
// the tree, the leaf of source commit with a valid signature, a new
// encryption key and the parent hash the merged path implies.
func (t *ratchetTree) mergeUpdatePath(from leafIndex, path *UpdatePath, groupID []byte, exclude []leafIndex) ([]pathStep, error) {
	s := t.suite
	old := t.leaf(from)
	if old == nil {
		return nil, fmt.Errorf("%w: UpdatePath from blank leaf %d", ErrInvalidCommit, from)
	}
	fdp := t.filteredDirectPath(from)
	if len(path.Nodes) != len(fdp) {
		return nil, fmt.Errorf("%w: UpdatePath has %d nodes, filtered direct path %d", ErrInvalidCommit, len(path.Nodes), len(fdp))
	}
	ln := &path.LeafNode
	if ln.Source != LeafNodeSourceCommit {
		return nil, fmt.Errorf("%w: UpdatePath leaf source %d", ErrInvalidCommit, ln.Source)
	}
	if err := s.VerifyLeafNodeSignature(ln, groupID, uint32(from)); err != nil {
		return nil, fmt.Errorf("%w: UpdatePath leaf: %w", ErrInvalidCommit, err)
	}
	if bytes.Equal(ln.EncryptionKey, old.EncryptionKey) {
		return nil, fmt.Errorf("%w: UpdatePath leaf reuses the encryption key", ErrInvalidCommit)
	}
	keys := make([]HPKEPublicKey, len(fdp))
	seen := map[string]bool{string(ln.EncryptionKey): true}
	for i, st := range fdp {
		n := &path.Nodes[i]
		if want := len(t.excludedResolution(st.copath, exclude)); len(n.EncryptedPathSecret) != want {
			return nil, fmt.Errorf("%w: UpdatePath node %d has %d ciphertexts, resolution %d", ErrInvalidCommit, i, len(n.EncryptedPathSecret), want)
		}
		if seen[string(n.EncryptionKey)] {
			return nil, fmt.Errorf("%w: repeated key in UpdatePath", ErrInvalidCommit)
		}
		seen[string(n.EncryptionKey)] = true
		keys[i] = n.EncryptionKey
	}
	if t.holdsAnyKey(seen) {
		return nil, fmt.Errorf("%w: UpdatePath key already in the tree", ErrInvalidCommit)
	}
	ph := t.applyPathNodes(from, fdp, keys)
	if !bytes.Equal(ph, ln.ParentHash) {
		return nil, fmt.Errorf("%w: UpdatePath leaf parent hash mismatch", ErrInvalidCommit)
	}
	t.setLeaf(from, ln)
	return fdp, nil
}

// decryptPath recovers the path secret of a merged UpdatePath from
// leaf from for member own, who holds keys, using the provisional
// GroupContext gcb. It returns the path secret it decrypted (at the
// common ancestor), the commit secret and the new private keys of the
// nodes above.
func (t *ratchetTree) decryptPath(from, own leafIndex, fdp []pathStep, path *UpdatePath, gcb []byte, keys nodeKeys, exclude []leafIndex) (Secret, Secret, nodeKeys, error) {
	s := t.suite
	k := -1
	for i, st := range fdp {
		if st.copath.isAncestor(own.node()) {
			k = i
			break
		}
	}
	if k < 0 {
		return Secret{}, Secret{}, nil, fmt.Errorf("%w: no path node covers leaf %d", ErrInvalidCommit, own)
	}
	res := t.excludedResolution(fdp[k].copath, exclude)
	var ps []byte
	for i, y := range res {
		nk, ok := keys[y]
		if !ok {
			continue
		}
		pt, err := s.DecryptWithLabel(nk.priv, "UpdatePathNode", gcb, path.Nodes[k].EncryptedPathSecret[i])
		if err != nil {
			return Secret{}, Secret{}, nil, fmt.Errorf("%w: path secret: %w", ErrInvalidCommit, err)
		}
		ps = pt
		break
	}
	if ps == nil {
		return Secret{}, Secret{}, nil, fmt.Errorf("%w: no private key for the resolution of node %d", ErrInvalidCommit, fdp[k].copath)
	}
	first := NewSecret(ps)
	out := nodeKeys{}
	for i := k; i < len(fdp); i++ {
		if i > k {
			next, err := s.DeriveSecret(ps, "path")
			clear(ps)
			if err != nil {
				return Secret{}, Secret{}, nil, err
			}
			ps = next
		}
		priv, pub, err := s.deriveNodeKey(ps)
		if err != nil {
			return Secret{}, Secret{}, nil, err
		}
		if !bytes.Equal(pub, path.Nodes[i].EncryptionKey) {
			return Secret{}, Secret{}, nil, fmt.Errorf("%w: derived key of path node %d does not match", ErrInvalidCommit, i)
		}
		out[fdp[i].node] = nodeKey{priv, pub}
	}
	cs, err := s.DeriveSecret(ps, "path")
	clear(ps)
	if err != nil {
		return Secret{}, Secret{}, nil, err
	}
	return first, adoptSecret(cs), out, nil
}

// holdsAnyKey reports whether any node's encryption key is in keys (a
// path's worth). It runs over the whole tree at every processed commit,
// so it compares an 8-byte prefix first (sorted, binary search) and only
// hashes the keys whose prefix matches.
func (t *ratchetTree) holdsAnyKey(keys map[string]bool) bool {
	prefixes := make([]uint64, 0, len(keys))
	for k := range keys {
		prefixes = append(prefixes, keyPrefix([]byte(k)))
	}
	slices.Sort(prefixes)
	for i := range t.nodes {
		k := t.encKey(nodeIndex(i))
		if k == nil {
			continue
		}
		if _, found := slices.BinarySearch(prefixes, keyPrefix(k)); found && keys[string(k)] {
			return true
		}
	}
	return false
}

// keyPrefix is the first 8 bytes of k (fewer, zero-padded, for a short k).
func keyPrefix(k []byte) uint64 {
	var b [8]byte
	copy(b[:], k)
	return binary.BigEndian.Uint64(b[:])
}
