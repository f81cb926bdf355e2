package mls

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
)

// The ratchet tree (RFC 9420 §4, §7): nodes in array order, resolution,
// unmerged leaves, extension and truncation, tree hashes (§7.8) and
// parent hashes (§7.9).
//
// Nodes are treated as immutable values: every change replaces the *Node
// at an index, so cloning a tree (for a pending commit, a past epoch)
// copies only the slices. Tree hashes are cached per node and invalidated
// along the path of every change.

// ratchetTree is a group's ratchet tree. Its width is always that of a
// full tree (a power-of-two number of leaves).
type ratchetTree struct {
	suite  *CipherSuite
	nodes  []*Node
	hashes [][]byte // cached tree hash per node; nil when stale
	encs   [][]byte // cached encoding of each node; nil when stale
	// sup counts the leaves that do not list one extension type in their
	// capabilities (allSupport), kept up to date by set.
	sup supportCount
	// pub is the last public encoding made of this tree or a relative
	// (nil: none); encodePublic reuses its entries for unchanged nodes.
	pub *pubCache
}

// pubCache is a public encoding of a tree (encodePublic's vector body)
// with the node each entry was written from. An entry is reused for any
// tree that holds the same node pointer at the same index (nodes are
// immutable, and an entry depends on its node only), runs of them copied
// at once: a 10 000-member tree is about 20 000 node encodings scattered
// over the heap, and gathering them at every commit was the largest cost
// left once the tree no longer had to be signed. It is read-only once
// built and shared between clones. Its body aliases the buffer the
// encoding was written into, which is handed out (PendingCommit.Tree, a
// GroupInfo) and must not be modified.
type pubCache struct {
	body  []byte
	nodes []*Node  // nodes[i]: what entry i encodes (nil: a blank node)
	off   []uint32 // off[i]: where entry i starts in body; off[len(nodes)] = len(body)
}

// reusable reports whether entry i of c encodes t's node i.
func (c *pubCache) reusable(t *ratchetTree, i int) bool {
	return c != nil && i < len(c.nodes) && c.nodes[i] == t.nodes[i]
}

// supportCount is the number of non-blank leaves whose capabilities lack
// extension type typ, when valid.
type supportCount struct {
	typ     ExtensionType
	lacking int
	valid   bool
}

// newRatchetTree returns a one-leaf tree holding leaf.
func newRatchetTree(s *CipherSuite, leaf *LeafNode) *ratchetTree {
	return &ratchetTree{suite: s, nodes: []*Node{{Type: NodeTypeLeaf, Leaf: leaf}}, hashes: make([][]byte, 1), encs: make([][]byte, 1)}
}

// treeFromPublic builds a tree from the wire form (the ratchet_tree
// extension): node types must match positions, the last node must be
// non-blank, and the tree is padded with blanks to full width.
func treeFromPublic(s *CipherSuite, rt RatchetTree) (*ratchetTree, error) {
	if len(rt) == 0 || len(rt)%2 == 0 {
		return nil, fmt.Errorf("%w: ratchet tree of %d nodes", ErrInvalidTree, len(rt))
	}
	if rt[len(rt)-1] == nil {
		return nil, fmt.Errorf("%w: ratchet tree ends in a blank node", ErrInvalidTree)
	}
	leaves := uint32(1)
	for leafCount(leaves).nodeWidth() < uint32(len(rt)) {
		if leaves >= 1<<30 {
			return nil, fmt.Errorf("%w: ratchet tree too large", ErrInvalidTree)
		}
		leaves *= 2
	}
	w := leafCount(leaves).nodeWidth()
	t := &ratchetTree{suite: s, nodes: make([]*Node, w), hashes: make([][]byte, w), encs: make([][]byte, w)}
	for i, n := range rt {
		if n == nil {
			continue
		}
		x := nodeIndex(i)
		switch {
		case x.isLeaf() && (n.Type != NodeTypeLeaf || n.Leaf == nil):
			return nil, fmt.Errorf("%w: node %d should be a leaf", ErrInvalidTree, i)
		case !x.isLeaf() && (n.Type != NodeTypeParent || n.Parent == nil):
			return nil, fmt.Errorf("%w: node %d should be a parent", ErrInvalidTree, i)
		}
		t.nodes[i] = n
	}
	return t, nil
}

// decodeRatchetTreeEncodings is RatchetTree.Unmarshal that also returns
// each non-blank node's encoding as received (node type byte first, nil
// for a blank node), the form nodeEncoding caches, and the vector's body
// with where each entry starts, as the tree's encoding cache (pubCache,
// as ImportGroup keeps it: the joiner's first commit then copies the
// received tree instead of gathering its nodes). The codec is canonical
// (minimal varints, presence octets 0 or 1, known enum values only), so
// these are the bytes encoding the decoded nodes would give
// (TestDecodedRatchetTreeEncodingsRoundTrip, FuzzDecodeRatchetTreeEncodings);
// they and the nodes' byte fields share b's memory, which must not change.
func decodeRatchetTreeEncodings(b []byte) (RatchetTree, [][]byte, *pubCache, error) {
	var rt RatchetTree
	var encs [][]byte
	var body []byte
	var off []uint32
	d := newDecoder(b)
	d.alias = true
	d.vector(func(d *decoder) {
		if body == nil {
			body = d.s // the first element sees the whole body
		}
		off = append(off, uint32(len(body)-len(d.s)))
		var n *Node
		var enc []byte
		if d.optional() {
			before := d.s
			n = decodeNodeTogether(d)
			enc = before[: len(before)-len(d.s) : len(before)-len(d.s)]
		}
		rt = append(rt, n)
		encs = append(encs, enc)
	})
	if err := d.finish(); err != nil {
		return nil, nil, nil, err
	}
	if len(rt) == 0 {
		return rt, encs, nil, nil
	}
	off = append(off, uint32(len(body)))
	return rt, encs, &pubCache{body: body[:len(body):len(body)], nodes: slices.Clone(rt), off: off}, nil
}

// decodeNodeTogether is Node.decode into a Node allocated together with
// its LeafNode or ParentNode: one allocation per node of a large tree
// instead of two.
func decodeNodeTogether(d *decoder) *Node {
	switch t := NodeType(d.u8()); t {
	case NodeTypeLeaf:
		b := new(struct {
			n Node
			l LeafNode
		})
		b.n = Node{Type: t, Leaf: &b.l}
		b.l.decode(d)
		return &b.n
	case NodeTypeParent:
		b := new(struct {
			n Node
			p ParentNode
		})
		b.n = Node{Type: t, Parent: &b.p}
		b.p.decode(d)
		return &b.n
	default:
		d.fail("unknown node type %d", t)
		return &Node{Type: t}
	}
}

// public returns the tree in wire form, truncated after the last
// non-blank node.
func (t *ratchetTree) public() RatchetTree {
	end := len(t.nodes)
	for end > 0 && t.nodes[end-1] == nil {
		end--
	}
	return RatchetTree(slices.Clone(t.nodes[:end]))
}

// encodePublic writes the tree in wire form (as public() would encode),
// reusing the tree's encoding cache and each node's cached encoding, and
// keeps what it wrote as the tree's encoding cache: e.buf must not be
// modified afterwards (see pubCache).
func (t *ratchetTree) encodePublic(e *encoder) { t.writePublic(e, true) }

// writePublic is encodePublic; keep false leaves the cache as it was (for
// a buffer the caller may wipe, such as an exported state).
func (t *ratchetTree) writePublic(e *encoder, keep bool) {
	end := t.publicEnd()
	// Size the buffer exactly first and write the length header before
	// the body: a large tree's encoding is megabytes, and growing it by
	// doubling (or shifting it behind a late header) copies it again.
	size := t.publicBodyLen(end)
	if size > maxVarint {
		e.fail("ratchet tree of %d bytes exceeds 2^30-1", size)
		return
	}
	e.buf = slices.Grow(e.buf, varintLen(size)+size)
	e.buf = appendVarint(e.buf, uint32(size))
	start := len(e.buf)
	c := t.pub
	off := make([]uint32, end+1)
	for i := 0; i < end; {
		if c.reusable(t, i) {
			j := i + 1
			for j < end && c.reusable(t, j) {
				j++
			}
			base := uint32(len(e.buf)-start) - c.off[i]
			for k := i; k < j; k++ {
				off[k] = base + c.off[k]
			}
			e.buf = append(e.buf, c.body[c.off[i]:c.off[j]]...)
			i = j
			continue
		}
		off[i] = uint32(len(e.buf) - start)
		if t.nodes[i] == nil {
			e.u8(0)
		} else {
			e.u8(1)
			e.raw(t.nodeEncoding(nodeIndex(i)))
		}
		i++
	}
	off[end] = uint32(len(e.buf) - start)
	if keep && e.err == nil && int(off[end]) == size {
		t.pub = &pubCache{body: e.buf[start:len(e.buf):len(e.buf)], nodes: slices.Clone(t.nodes[:end]), off: off}
	}
}

// publicEnd is the number of nodes encodePublic writes (trailing blanks
// dropped).
func (t *ratchetTree) publicEnd() int {
	end := len(t.nodes)
	for end > 0 && t.nodes[end-1] == nil {
		end--
	}
	return end
}

// publicBodyLen is the length of the body of encodePublic's vector.
func (t *ratchetTree) publicBodyLen(end int) int {
	size := 0
	c := t.pub
	for i := 0; i < end; i++ {
		switch {
		case c.reusable(t, i):
			size += int(c.off[i+1] - c.off[i])
		case t.nodes[i] == nil:
			size++
		default:
			size += 1 + len(t.nodeEncoding(nodeIndex(i)))
		}
	}
	return size
}

// publicLen is the length of encodePublic's output.
func (t *ratchetTree) publicLen() int {
	n := t.publicBodyLen(t.publicEnd())
	return varintLen(n) + n
}

// nodeEncoding returns the cached encoding of non-blank node x (node
// type byte first). A node that cannot be encoded yields just its type
// byte, which makes the tree hash and encoding wrong but never panics;
// such a node never passes validation.
func (t *ratchetTree) nodeEncoding(x nodeIndex) []byte {
	if b := t.encs[x]; b != nil {
		return b
	}
	ne := &encoder{}
	t.nodes[x].encode(ne)
	if ne.err != nil || len(ne.buf) == 0 {
		return []byte{uint8(t.nodes[x].Type)}
	}
	t.encs[x] = ne.buf
	return ne.buf
}

// clone returns an independent copy (nodes are shared, being immutable).
func (t *ratchetTree) clone() *ratchetTree {
	return &ratchetTree{suite: t.suite, nodes: slices.Clone(t.nodes), hashes: slices.Clone(t.hashes), encs: slices.Clone(t.encs), sup: t.sup, pub: t.pub}
}

// lacks reports whether node n is a leaf whose capabilities do not list
// extension type typ.
func lacks(n *Node, typ ExtensionType) bool {
	return n != nil && n.Leaf != nil && !slices.Contains(n.Leaf.Capabilities.Extensions, typ)
}

// allSupport reports whether every member's leaf lists extension type typ
// in its capabilities. The first call for a type walks the leaves; set
// keeps the count current afterwards, so asking again (at every commit)
// costs nothing.
func (t *ratchetTree) allSupport(typ ExtensionType) bool {
	if !t.sup.valid || t.sup.typ != typ {
		n := 0
		for x := 0; x < len(t.nodes); x += 2 {
			if lacks(t.nodes[x], typ) {
				n++
			}
		}
		t.sup = supportCount{typ: typ, lacking: n, valid: true}
	}
	return t.sup.lacking == 0
}

// encodedPublic returns the tree in wire form (the ratchet_tree
// extension's data), encoded into an exactly sized buffer.
func (t *ratchetTree) encodedPublic() ([]byte, error) {
	e := &encoder{buf: make([]byte, 0, t.publicLen())}
	t.encodePublic(e)
	return e.buf[:len(e.buf):len(e.buf)], e.err
}

func (t *ratchetTree) leafCount() leafCount { return leafCount((len(t.nodes) + 1) / 2) }

func (t *ratchetTree) root() nodeIndex { return t.leafCount().root() }

// leaf returns the leaf node at l, or nil if blank or out of range.
func (t *ratchetTree) leaf(l leafIndex) *LeafNode {
	if uint32(l) >= uint32(t.leafCount()) {
		return nil
	}
	x := l.node()
	if int(x) >= len(t.nodes) || t.nodes[x] == nil {
		return nil
	}
	return t.nodes[x].Leaf
}

// parentNode returns the parent node at x, or nil if blank.
func (t *ratchetTree) parentNode(x nodeIndex) *ParentNode {
	if int(x) >= len(t.nodes) || t.nodes[x] == nil {
		return nil
	}
	return t.nodes[x].Parent
}

// encKey returns the encryption key of node x (nil if blank).
func (t *ratchetTree) encKey(x nodeIndex) HPKEPublicKey {
	n := t.nodes[x]
	switch {
	case n == nil:
		return nil
	case n.Leaf != nil:
		return n.Leaf.EncryptionKey
	default:
		return n.Parent.EncryptionKey
	}
}

// set replaces node x and invalidates the cached hashes above it.
func (t *ratchetTree) set(x nodeIndex, n *Node) {
	if t.sup.valid && x.isLeaf() {
		if lacks(t.nodes[x], t.sup.typ) {
			t.sup.lacking--
		}
		if lacks(n, t.sup.typ) {
			t.sup.lacking++
		}
	}
	t.nodes[x] = n
	t.encs[x] = nil
	n2 := t.leafCount()
	for y, ok := x, true; ok; y, ok = y.parent(n2) {
		t.hashes[y] = nil
	}
}

func (t *ratchetTree) setLeaf(l leafIndex, ln *LeafNode) {
	var n *Node
	if ln != nil {
		n = &Node{Type: NodeTypeLeaf, Leaf: ln}
	}
	t.set(l.node(), n)
}

// resolution is RFC 9420 §4.1.1: the non-blank nodes covering x's
// subtree, with the unmerged leaves of a non-blank parent after it.
func (t *ratchetTree) resolution(x nodeIndex) []nodeIndex {
	var out []nodeIndex
	t.appendResolution(&out, x)
	return out
}

func (t *ratchetTree) appendResolution(out *[]nodeIndex, x nodeIndex) {
	n := t.nodes[x]
	if n != nil {
		*out = append(*out, x)
		if n.Parent != nil {
			for _, l := range n.Parent.UnmergedLeaves {
				*out = append(*out, leafIndex(l).node())
			}
		}
		return
	}
	if x.isLeaf() {
		return
	}
	l, _ := x.left()
	r, _ := x.right()
	t.appendResolution(out, l)
	t.appendResolution(out, r)
}

// resolutionEmpty reports whether x's resolution is empty (its subtree
// is all blank).
func (t *ratchetTree) resolutionEmpty(x nodeIndex) bool {
	if t.nodes[x] != nil {
		return false
	}
	if x.isLeaf() {
		return true
	}
	l, _ := x.left()
	r, _ := x.right()
	return t.resolutionEmpty(l) && t.resolutionEmpty(r)
}

// pathStep is one node of a filtered direct path with its copath child.
type pathStep struct {
	node, copath nodeIndex
}

// filteredDirectPath is RFC 9420 §4.1.2: the direct path of leaf l
// without the nodes whose copath child has an empty resolution.
func (t *ratchetTree) filteredDirectPath(l leafIndex) []pathStep {
	n := t.leafCount()
	var out []pathStep
	for c, ok := l.node(), true; ; {
		p, okp := c.parent(n)
		if !okp {
			break
		}
		s, _ := c.sibling(n)
		if !t.resolutionEmpty(s) {
			out = append(out, pathStep{p, s})
		}
		c, ok = p, true
		_ = ok
	}
	return out
}

// leftmostBlankLeaf returns the first blank leaf, or leafCount if none.
func (t *ratchetTree) leftmostBlankLeaf() leafIndex {
	n := t.leafCount()
	for l := leafIndex(0); uint32(l) < uint32(n); l++ {
		if t.nodes[l.node()] == nil {
			return l
		}
	}
	return leafIndex(n)
}

// extend doubles the tree (RFC 9420 §7.7).
func (t *ratchetTree) extend() {
	w := len(t.nodes)
	t.nodes = append(t.nodes, make([]*Node, w+1)...)
	t.hashes = append(t.hashes, make([][]byte, w+1)...)
	t.encs = append(t.encs, make([][]byte, w+1)...)
}

// truncate halves the tree while its right subtree is all blank.
func (t *ratchetTree) truncate() {
	for len(t.nodes) > 1 {
		r := t.root()
		right, _ := r.right()
		if !t.resolutionEmpty(right) {
			return
		}
		half := int(r)
		clear(t.nodes[half:])
		t.nodes = t.nodes[:half]
		t.hashes = t.hashes[:half]
		t.encs = t.encs[:half]
	}
}

// addLeaf puts ln in the leftmost blank leaf (extending the tree if
// none) and adds it to the unmerged leaves of the non-blank parents on
// its direct path (RFC 9420 §12.1.1).
func (t *ratchetTree) addLeaf(ln *LeafNode) leafIndex {
	l := t.leftmostBlankLeaf()
	if uint32(l) >= uint32(t.leafCount()) {
		t.extend()
	}
	t.setLeaf(l, ln)
	for _, p := range l.node().directPath(t.leafCount()) {
		pn := t.parentNode(p)
		if pn == nil {
			continue
		}
		c := *pn
		i, _ := slices.BinarySearch(c.UnmergedLeaves, uint32(l))
		c.UnmergedLeaves = slices.Insert(slices.Clone(c.UnmergedLeaves), i, uint32(l))
		t.set(p, &Node{Type: NodeTypeParent, Parent: &c})
	}
	return l
}

// blankPath blanks leaf l's direct path (not the leaf).
func (t *ratchetTree) blankPath(l leafIndex) {
	for _, p := range l.node().directPath(t.leafCount()) {
		if t.nodes[p] != nil {
			t.set(p, nil)
		}
	}
}

// updateLeaf replaces leaf l and blanks its direct path (§12.1.2).
func (t *ratchetTree) updateLeaf(l leafIndex, ln *LeafNode) {
	t.setLeaf(l, ln)
	t.blankPath(l)
}

// removeLeaf blanks leaf l and its direct path (§12.1.3). The caller
// truncates after all removes.
func (t *ratchetTree) removeLeaf(l leafIndex) {
	t.setLeaf(l, nil)
	t.blankPath(l)
}

// treeHash returns the tree hash of node x (§7.8), from the cache when
// possible.
func (t *ratchetTree) treeHash(x nodeIndex) []byte {
	if h := t.hashes[x]; h != nil {
		return h
	}
	h := t.computeTreeHash(x, nil)
	t.hashes[x] = h
	return h
}

// computeTreeHash hashes x's subtree. If exclude is non-empty, those
// leaves are treated as blank and dropped from unmerged lists (for
// original sibling tree hashes) and nothing is cached.
func (t *ratchetTree) computeTreeHash(x nodeIndex, exclude []uint32) []byte {
	e := &encoder{}
	n := t.nodes[x]
	if x.isLeaf() {
		e.u8(uint8(NodeTypeLeaf))
		e.u32(uint32(x.leaf()))
		blank := n == nil || slices.Contains(exclude, uint32(x.leaf()))
		e.optional(!blank, func(e *encoder) { e.raw(t.nodeEncoding(x)[1:]) })
		return t.suite.Hash(e.buf)
	}
	l, _ := x.left()
	r, _ := x.right()
	var lh, rh []byte
	if len(exclude) == 0 || !t.subtreeHasAny(l, exclude) {
		lh = t.treeHash(l)
	} else {
		lh = t.computeTreeHash(l, exclude)
	}
	if len(exclude) == 0 || !t.subtreeHasAny(r, exclude) {
		rh = t.treeHash(r)
	} else {
		rh = t.computeTreeHash(r, exclude)
	}
	e.u8(uint8(NodeTypeParent))
	e.optional(n != nil, func(e *encoder) {
		if len(exclude) == 0 {
			e.raw(t.nodeEncoding(x)[1:])
			return
		}
		c := *n.Parent
		c.UnmergedLeaves = slices.DeleteFunc(slices.Clone(c.UnmergedLeaves), func(u uint32) bool { return slices.Contains(exclude, u) })
		c.encode(e)
	})
	e.opaque(lh)
	e.opaque(rh)
	return t.suite.Hash(e.buf)
}

// hashAll fills the tree-hash cache of every node whose hash is not
// cached, bottom up, level by level, with one hasher and one buffer and
// the hashes in one block: a joiner hashes the whole received tree once
// (about 2 000 nodes at 1 000 members), and treeHash's recursion makes an
// encoder, a hasher and a digest per node. The hashes are treeHash's
// (TestHashAllMatchesTreeHash).
func (t *ratchetTree) hashAll() {
	nh := t.suite.hash.Size()
	h := t.suite.hash.New()
	block := make([]byte, 0, len(t.nodes)*nh)
	e := &encoder{}
	for level := 0; 1<<level <= len(t.nodes); level++ {
		first, step := 1<<level-1, 1<<(level+1)
		for i := first; i < len(t.nodes); i += step {
			x := nodeIndex(i)
			if t.hashes[x] != nil {
				continue
			}
			e.buf = e.buf[:0]
			n := t.nodes[x]
			if x.isLeaf() {
				e.u8(uint8(NodeTypeLeaf))
				e.u32(uint32(x.leaf()))
			} else {
				e.u8(uint8(NodeTypeParent))
			}
			if n == nil { // optional<LeafNode> or optional<ParentNode>
				e.u8(0)
			} else {
				e.u8(1)
				e.raw(t.nodeEncoding(x)[1:])
			}
			if !x.isLeaf() {
				l, _ := x.left()
				r, _ := x.right()
				e.opaque(t.hashes[l])
				e.opaque(t.hashes[r])
			}
			h.Reset()
			h.Write(e.buf)
			start := len(block)
			block = h.Sum(block)
			t.hashes[x] = block[start:len(block):len(block)]
		}
	}
}

// subtreeHasAny reports whether any of leaves lies under x.
func (t *ratchetTree) subtreeHasAny(x nodeIndex, leaves []uint32) bool {
	for _, l := range leaves {
		if x.isAncestor(leafIndex(l).node()) {
			return true
		}
	}
	return false
}

// rootHash is the tree hash of the whole tree.
func (t *ratchetTree) rootHash() []byte { return t.treeHash(t.root()) }

// parentHash is the parent hash of parent p with copath child s (§7.9):
// Hash(ParentHashInput{p.encryption_key, p.parent_hash,
// original_sibling_tree_hash}).
func (t *ratchetTree) parentHash(p *ParentNode, s nodeIndex) []byte {
	return t.appendParentHash(nil, t.suite.hash.New(), &encoder{}, p, s)
}

// appendParentHash appends parentHash(p, s) to dst, with h and e as
// scratch (reset here).
func (t *ratchetTree) appendParentHash(dst []byte, h hash.Hash, e *encoder, p *ParentNode, s nodeIndex) []byte {
	var sh []byte
	if len(p.UnmergedLeaves) == 0 || !t.subtreeHasAny(s, p.UnmergedLeaves) {
		sh = t.treeHash(s)
	} else {
		sh = t.computeTreeHash(s, p.UnmergedLeaves)
	}
	e.buf = e.buf[:0]
	e.opaque(p.EncryptionKey)
	e.opaque(p.ParentHash)
	e.opaque(sh)
	h.Reset()
	h.Write(e.buf)
	return h.Sum(dst)
}

// nodeParentHash returns the parent_hash field of node x.
func (t *ratchetTree) nodeParentHash(x nodeIndex) ([]byte, bool) {
	n := t.nodes[x]
	switch {
	case n == nil:
		return nil, false
	case n.Leaf != nil:
		if n.Leaf.Source != LeafNodeSourceCommit {
			return nil, false
		}
		return n.Leaf.ParentHash, true
	default:
		return n.Parent.ParentHash, true
	}
}

// verifyParentHashes checks that every non-blank parent node is
// parent-hash valid (§7.9.2, top down): exactly one node D in the
// resolution of one child C has P's parent hash (with the other child as
// copath child), and P's unmerged leaves under C are the rest of C's
// resolution.
func (t *ratchetTree) verifyParentHashes() error {
	// Scratch reused from node to node: a joiner checks every parent of
	// the tree (about 1 000 at 1 000 members).
	var res []nodeIndex
	var under, rest []uint32
	h := t.suite.hash.New()
	e := &encoder{}
	var ph []byte
	for i := 1; i < len(t.nodes); i += 2 {
		x := nodeIndex(i)
		p := t.parentNode(x)
		if p == nil {
			continue
		}
		l, _ := x.left()
		r, _ := x.right()
		found := 0
		for _, cs := range [2][2]nodeIndex{{l, r}, {r, l}} {
			c, s := cs[0], cs[1]
			ph = t.appendParentHash(ph[:0], h, e, p, s)
			res = res[:0]
			t.appendResolution(&res, c)
			under = under[:0]
			for _, u := range p.UnmergedLeaves {
				if c.isAncestor(leafIndex(u).node()) {
					under = append(under, u)
				}
			}
			for _, d := range res {
				dph, ok := t.nodeParentHash(d)
				if !ok || !bytes.Equal(dph, ph) {
					continue
				}
				// resolution(C) \ {D} must equal the unmerged leaves under C.
				rest = rest[:0]
				okRest := true
				for _, y := range res {
					if y == d {
						continue
					}
					if !y.isLeaf() {
						okRest = false
						break
					}
					rest = append(rest, uint32(y.leaf()))
				}
				slices.Sort(rest)
				if okRest && slices.Equal(rest, under) {
					found++
				}
			}
		}
		if found != 1 {
			return fmt.Errorf("%w: parent node %d is not parent-hash valid (%d chains)", ErrInvalidTree, x, found)
		}
	}
	return nil
}

// verifyStructure checks the invariants a received tree must meet
// besides hashes: unmerged leaves sorted, non-blank and below their node,
// and, for a leaf unmerged at P, also unmerged at every non-blank parent
// between it and P.
func (t *ratchetTree) verifyStructure() error {
	n := t.leafCount()
	for i := 1; i < len(t.nodes); i += 2 {
		x := nodeIndex(i)
		p := t.parentNode(x)
		if p == nil {
			continue
		}
		for j, u := range p.UnmergedLeaves {
			if j > 0 && p.UnmergedLeaves[j-1] >= u {
				return fmt.Errorf("%w: unmerged leaves of node %d not sorted", ErrInvalidTree, x)
			}
			ln := leafIndex(u).node()
			if uint32(u) >= uint32(n) || !x.isAncestor(ln) || t.nodes[ln] == nil {
				return fmt.Errorf("%w: bad unmerged leaf %d at node %d", ErrInvalidTree, u, x)
			}
			for y, ok := ln.parent(n); ok && y != x; y, ok = y.parent(n) {
				if q := t.parentNode(y); q != nil && !slices.Contains(q.UnmergedLeaves, u) {
					return fmt.Errorf("%w: leaf %d unmerged at %d but not at %d", ErrInvalidTree, u, x, y)
				}
			}
		}
	}
	return nil
}

// members iterates over the non-blank leaves.
func (t *ratchetTree) members(fn func(leafIndex, *LeafNode)) {
	for i := 0; i < len(t.nodes); i += 2 {
		if n := t.nodes[i]; n != nil {
			fn(nodeIndex(i).leaf(), n.Leaf)
		}
	}
}

// hasEncKey reports whether any node already holds key k.
func (t *ratchetTree) hasEncKey(k []byte) bool {
	for i := range t.nodes {
		if t.nodes[i] != nil && bytes.Equal(t.encKey(nodeIndex(i)), k) {
			return true
		}
	}
	return false
}

// verifyLeafSignatures checks every leaf's signature (§7.3), with the
// group id and leaf index as context for update and commit leaves; the
// error is the one for the first bad leaf in leaf order, as a sequential
// walk would report. See startLeafSignatureCheck.
func (t *ratchetTree) verifyLeafSignatures(groupID []byte) error {
	return t.startLeafSignatureCheck(groupID).wait()
}

// leafSigCheck is a leaf-signature check of a whole tree in progress. A
// joiner checks one signature per member, the bulk of a join's cost, so
// a large tree is checked by up to GOMAXPROCS goroutines claiming
// batches of leaves in order: GOMAXPROCS-1 helpers from the start, and
// the goroutine that calls wait, which meanwhile does the rest of the
// join (tree hash, parent hashes, GroupInfo signature, key schedule).
// The tree must not change until wait or abort returns.
type leafSigCheck struct {
	t       *ratchetTree
	groupID []byte
	leaves  []leafIndex
	errs    []error // errs[i]: the error of leaves[i], when checked and bad
	next    atomic.Int64
	// firstBad is the lowest position known to fail: positions after it
	// need no check, positions before it still do (an earlier bad leaf
	// wins).
	firstBad atomic.Int64
	stop     atomic.Bool // abort: claim nothing more
	wg       sync.WaitGroup
	done     bool
	err      error
}

// startLeafSignatureCheck starts checking every leaf's signature. Each
// leaf's LeafNodeTBS is taken from its cached encoding (for a received
// tree, the bytes as received), so the encodings of all leaves are
// cached here first, before any helper reads them.
func (t *ratchetTree) startLeafSignatureCheck(groupID []byte) *leafSigCheck {
	c := &leafSigCheck{t: t, groupID: groupID}
	t.members(func(l leafIndex, _ *LeafNode) {
		c.leaves = append(c.leaves, l)
		t.nodeEncoding(l.node())
	})
	c.errs = make([]error, len(c.leaves))
	c.firstBad.Store(int64(len(c.leaves)))
	workers := min(runtime.GOMAXPROCS(0), len(c.leaves)/parallelVerifyMinPerWorker)
	for range workers - 1 {
		c.wg.Go(c.work)
	}
	return c
}

// work claims batches of leaves and checks them until none is left, an
// earlier leaf is known bad, or the check is aborted.
func (c *leafSigCheck) work() {
	var buf []byte // SignContent, reused from leaf to leaf
	n := int64(len(c.leaves))
	for !c.stop.Load() {
		start := c.next.Add(verifyBatch) - verifyBatch
		if start >= n || start >= c.firstBad.Load() {
			return
		}
		end := min(start+verifyBatch, n)
		for i := start; i < end; i++ {
			var err error
			if buf, err = c.check(c.leaves[i], buf); err != nil {
				c.errs[i] = err
				for {
					cur := c.firstBad.Load()
					if i >= cur || c.firstBad.CompareAndSwap(cur, i) {
						break
					}
				}
				break
			}
		}
	}
}

// check verifies leaf l's signature over SignContent{"MLS 1.0
// LeafNodeTBS", LeafNodeTBS} built in buf from the leaf's cached encoding
// (its fields before the signature, then group id and leaf index for the
// update and commit sources), as VerifyLeafNodeSignature does from a
// fresh encoding. A leaf whose cached encoding does not end in its
// signature (or has none) is checked by VerifyLeafNodeSignature.
func (c *leafSigCheck) check(l leafIndex, buf []byte) ([]byte, error) {
	const label = "LeafNodeTBS"
	t := c.t
	ln := t.nodes[l.node()].Leaf
	raw := t.encs[l.node()]
	sigField := varintLen(len(ln.Signature)) + len(ln.Signature)
	var err error
	if len(raw) < 1+sigField || len(ln.Signature) > maxVarint || !bytes.Equal(raw[len(raw)-len(ln.Signature):], ln.Signature) {
		err = t.suite.VerifyLeafNodeSignature(ln, c.groupID, uint32(l))
	} else {
		content := raw[1 : len(raw)-sigField] // after the node type byte
		tbsLen := len(content)
		withContext := ln.Source == LeafNodeSourceUpdate || ln.Source == LeafNodeSourceCommit
		if withContext {
			tbsLen += varintLen(len(c.groupID)) + len(c.groupID) + 4
		}
		if tbsLen > maxVarint || len(c.groupID) > maxVarint {
			err = t.suite.VerifyLeafNodeSignature(ln, c.groupID, uint32(l))
		} else {
			buf = buf[:0]
			buf = appendVarint(buf, uint32(len("MLS 1.0 "+label)))
			buf = append(buf, "MLS 1.0 "+label...)
			buf = appendVarint(buf, uint32(tbsLen))
			buf = append(buf, content...)
			if withContext {
				buf = appendVarint(buf, uint32(len(c.groupID)))
				buf = append(buf, c.groupID...)
				buf = binary.BigEndian.AppendUint32(buf, uint32(l))
			}
			if !t.suite.sig.verify(ln.SignatureKey, buf, ln.Signature) {
				err = fmt.Errorf("%w: %s", ErrInvalidSignature, label)
			}
		}
	}
	if err != nil {
		return buf, fmt.Errorf("%w: leaf %d: %w", ErrInvalidTree, l, err)
	}
	return buf, nil
}

// wait checks, on the calling goroutine, the leaves no helper has
// claimed, waits for the helpers and returns the error of the first bad
// leaf in leaf order (nil if all are good). It may be called again.
func (c *leafSigCheck) wait() error {
	if !c.done {
		c.work()
		c.wg.Wait()
		c.done = true
		if i := c.firstBad.Load(); i < int64(len(c.leaves)) {
			c.err = c.errs[i]
		}
	}
	return c.err
}

// abort stops the check (another check failed first) and waits for the
// helpers to stop.
func (c *leafSigCheck) abort() {
	if !c.done {
		c.stop.Store(true)
		c.wg.Wait()
		c.done = true
	}
}

const (
	// parallelVerifyMinPerWorker keeps small trees on one goroutine,
	// where starting others costs more than it saves.
	parallelVerifyMinPerWorker = 32
	// verifyBatch is how many leaves a worker claims at once: few, so
	// that the goroutines finish close together (one leaf is ~65 µs).
	verifyBatch = 4
)
