package keylog

import (
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// The log is an RFC 6962 Merkle tree over the encoded entries, in the
// order they were appended (leaf i = entry i):
//
//	            root (size 5)
//	           /            \
//	      n(2,0)             l4
//	     /      \
//	  n(1,0)   n(1,1)
//	  /   \    /   \
//	 l0   l1  l2   l3
//
// MTH({})   = SHA-256()
// MTH({d})  = SHA-256(0x00 || d)
// MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])), k the largest
// power of two below n. Node n(level, index) is the root of the perfect
// subtree over leaves [index·2^level, (index+1)·2^level); Tree keeps every
// such node, so a proof is a lookup of the node ids the merkle library
// names (plus at most one rehash).

var hasher = rfc6962.DefaultHasher

var rangeFactory = compact.RangeFactory{Hash: hasher.HashChildren}

// Tree is the whole log's hashes in memory: levels[l][i] is node n(l, i).
// It is not safe for concurrent use.
type Tree struct {
	levels [][]Hash
}

// Size is the number of leaves.
func (t *Tree) Size() uint64 {
	if len(t.levels) == 0 {
		return 0
	}
	return uint64(len(t.levels[0]))
}

// Append adds a leaf hash and the perfect subtrees it completes.
func (t *Tree) Append(leaf Hash) {
	if len(t.levels) == 0 {
		t.levels = append(t.levels, nil)
	}
	t.levels[0] = append(t.levels[0], leaf)
	for l := 0; ; l++ {
		n := len(t.levels[l])
		if n%2 == 1 {
			return
		}
		var h Hash
		copy(h[:], hasher.HashChildren(t.levels[l][n-2][:], t.levels[l][n-1][:]))
		if len(t.levels) == l+1 {
			t.levels = append(t.levels, nil)
		}
		t.levels[l+1] = append(t.levels[l+1], h)
	}
}

// Leaf returns leaf i's hash.
func (t *Tree) Leaf(i uint64) (Hash, error) {
	if i >= t.Size() {
		return Hash{}, fmt.Errorf("keylog: leaf %d of a tree of %d", i, t.Size())
	}
	return t.levels[0][i], nil
}

func (t *Tree) node(id compact.NodeID) ([]byte, error) {
	if int(id.Level) >= len(t.levels) || id.Index >= uint64(len(t.levels[id.Level])) {
		return nil, fmt.Errorf("keylog: node (%d, %d) not in a tree of %d", id.Level, id.Index, t.Size())
	}
	h := t.levels[id.Level][id.Index]
	return h[:], nil
}

func (t *Tree) nodes(ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := t.node(id)
		if err != nil {
			return nil, err
		}
		out[i] = append([]byte(nil), h...)
	}
	return out, nil
}

// rangeAt is the compact range [0, size): the peaks of the tree of size.
func (t *Tree) rangeAt(size uint64) (*compact.Range, error) {
	if size > t.Size() {
		return nil, fmt.Errorf("keylog: tree of %d has no size %d", t.Size(), size)
	}
	hs, err := t.nodes(compact.RangeNodes(0, size, nil))
	if err != nil {
		return nil, err
	}
	return rangeFactory.NewRange(0, size, hs)
}

// RootAt is the root hash of the first size leaves.
func (t *Tree) RootAt(size uint64) (Hash, error) {
	var out Hash
	if size == 0 {
		copy(out[:], hasher.EmptyRoot())
		return out, nil
	}
	r, err := t.rangeAt(size)
	if err != nil {
		return out, err
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		return out, err
	}
	copy(out[:], root)
	return out, nil
}

// RootWith is the root the tree would have after appending leaves, without
// changing it (the server signs the head inside the transaction that may
// still roll back).
func (t *Tree) RootWith(leaves ...Hash) (Hash, error) { return t.RootAfter(t.Size(), leaves...) }

// RootAfter is the root of the first size leaves followed by leaves,
// without changing the tree.
func (t *Tree) RootAfter(size uint64, leaves ...Hash) (Hash, error) {
	r, err := t.rangeAt(size)
	if err != nil {
		return Hash{}, err
	}
	for _, l := range leaves {
		if err := r.Append(append([]byte(nil), l[:]...), nil); err != nil {
			return Hash{}, err
		}
	}
	if r.End() == 0 {
		var empty Hash
		copy(empty[:], hasher.EmptyRoot())
		return empty, nil
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		return Hash{}, err
	}
	var out Hash
	copy(out[:], root)
	return out, nil
}

// InclusionProof proves leaf index in the tree of size.
func (t *Tree) InclusionProof(index, size uint64) ([][]byte, error) {
	if size > t.Size() {
		return nil, fmt.Errorf("keylog: tree of %d has no size %d", t.Size(), size)
	}
	n, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("keylog: %w", err)
	}
	hs, err := t.nodes(n.IDs)
	if err != nil {
		return nil, err
	}
	return n.Rehash(hs, hasher.HashChildren)
}

// ConsistencyProof proves that the tree of size1 is a prefix of the tree
// of size2.
func (t *Tree) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	if size2 > t.Size() {
		return nil, fmt.Errorf("keylog: tree of %d has no size %d", t.Size(), size2)
	}
	n, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, fmt.Errorf("keylog: %w", err)
	}
	hs, err := t.nodes(n.IDs)
	if err != nil {
		return nil, err
	}
	return n.Rehash(hs, hasher.HashChildren)
}

// maxProofHashes bounds a proof: a tree of 2^64 leaves needs at most 64
// hashes for inclusion and 65 for consistency.
const maxProofHashes = 66

func checkProof(p [][]byte) error {
	if len(p) > maxProofHashes {
		return fmt.Errorf("%w: proof of %d hashes", ErrMalformed, len(p))
	}
	for _, h := range p {
		if len(h) != HashSize {
			return fmt.Errorf("%w: proof hash of %d bytes", ErrMalformed, len(h))
		}
	}
	return nil
}

// VerifyInclusion checks that the encoded entry is leaf index of the tree
// the (already verified) head commits to.
func VerifyInclusion(entry []byte, index uint64, p [][]byte, h *Head) error {
	if err := checkProof(p); err != nil {
		return err
	}
	if index >= h.Size {
		return fmt.Errorf("%w: leaf %d of a tree of %d", ErrNotIncluded, index, h.Size)
	}
	leaf := LeafHash(entry)
	if err := proof.VerifyInclusion(hasher, index, h.Size, leaf[:], p, h.Root[:]); err != nil {
		return fmt.Errorf("%w: leaf %d in %v: %v", ErrNotIncluded, index, h, err)
	}
	return nil
}

// VerifyConsistency checks that the two (already verified) heads are views
// of one append-only log: the same root at the same size, or p proving the
// smaller a prefix of the larger. Failure wraps ErrInconsistent and names
// both heads: together they are the evidence of a fork.
func VerifyConsistency(a, b *Head, p [][]byte) error {
	if a.Size > b.Size {
		a, b = b, a
	}
	if a.Size == b.Size {
		if !a.SameView(b) {
			return fmt.Errorf("%w: two roots for size %d: %v and %v", ErrInconsistent, a.Size, a, b)
		}
		return nil
	}
	if err := checkProof(p); err != nil {
		return fmt.Errorf("%w: %v and %v: %w", ErrInconsistent, a, b, err)
	}
	if a.Size == 0 {
		return nil
	}
	if err := proof.VerifyConsistency(hasher, a.Size, b.Size, p, a.Root[:], b.Root[:]); err != nil {
		return fmt.Errorf("%w: %v is not a prefix of %v: %v", ErrInconsistent, a, b, err)
	}
	return nil
}
