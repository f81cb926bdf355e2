package mls

// Array-based tree math of RFC 9420 §4.1 and Appendix C.
//
// Leaves sit at even node indices, parents at odd ones; a node's level is
// the number of trailing one bits of its index. A tree always has a power
// of two leaves (RFC 9420 §7.8 grows it by doubling). For 8 leaves:
//
//	                              X
//	                              |
//	                    .---------+---------.
//	                   /                     \
//	                  X                       X
//	                  |                       |
//	              .---+---.               .---+---.
//	             /         \             /         \
//	            X           X           X           X
//	           / \         / \         / \         / \
//	          /   \       /   \       /   \       /   \
//	         X     X     X     X     X     X     X     X
//
//	Node:    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
//	Leaf:    0     1     2     3     4     5     6     7
//
// Node 7 is the root; node 3 is the parent of 1 and 5; leaf 2 is node 4.

// nodeIndex is a position in the array representation of the tree.
type nodeIndex uint32

// leafIndex is the position of a leaf among the leaves (node = 2*leaf).
type leafIndex uint32

// leafCount is a number of leaves (a power of two for a valid tree).
type leafCount uint32

// node returns the node index of leaf l.
func (l leafIndex) node() nodeIndex { return nodeIndex(2 * uint32(l)) }

// isLeaf reports whether x is a leaf node.
func (x nodeIndex) isLeaf() bool { return x&1 == 0 }

// leaf returns the leaf index of leaf node x.
func (x nodeIndex) leaf() leafIndex { return leafIndex(x >> 1) }

// level is the number of trailing one bits of x (0 for leaves).
func (x nodeIndex) level() uint {
	var k uint
	for (x>>k)&1 == 1 {
		k++
	}
	return k
}

// log2 is floor(log2(x)) for x > 0, and 0 for x == 0.
func log2(x uint32) uint {
	var k uint
	for x>>(k+1) > 0 {
		k++
	}
	return k
}

// nodeWidth is the number of nodes in a tree with n leaves.
func (n leafCount) nodeWidth() uint32 {
	if n == 0 {
		return 0
	}
	return 2*(uint32(n)-1) + 1
}

// root is the root node index of a tree with n leaves.
func (n leafCount) root() nodeIndex {
	w := n.nodeWidth()
	return nodeIndex(uint32(1)<<log2(w) - 1)
}

// left returns the left child of parent x; ok is false for a leaf.
func (x nodeIndex) left() (nodeIndex, bool) {
	k := x.level()
	if k == 0 {
		return 0, false
	}
	return x ^ (1 << (k - 1)), true
}

// right returns the right child of parent x; ok is false for a leaf.
func (x nodeIndex) right() (nodeIndex, bool) {
	k := x.level()
	if k == 0 {
		return 0, false
	}
	return x ^ (3 << (k - 1)), true
}

// parent returns the parent of x in a tree of n leaves; ok is false for the
// root and for nodes outside the tree.
func (x nodeIndex) parent(n leafCount) (nodeIndex, bool) {
	if x == n.root() || uint32(x) >= n.nodeWidth() {
		return 0, false
	}
	k := x.level()
	b := (x >> (k + 1)) & 1
	return (x | (1 << k)) ^ (b << (k + 1)), true
}

// sibling returns the other child of x's parent; ok is false for the root.
func (x nodeIndex) sibling(n leafCount) (nodeIndex, bool) {
	p, ok := x.parent(n)
	if !ok {
		return 0, false
	}
	if x < p {
		return p.right()
	}
	return p.left()
}

// directPath lists the parents of x from its parent up to the root.
func (x nodeIndex) directPath(n leafCount) []nodeIndex {
	var d []nodeIndex
	for p, ok := x.parent(n); ok; p, ok = p.parent(n) {
		d = append(d, p)
	}
	return d
}

// copath lists the siblings of x and of its direct path except the root.
func (x nodeIndex) copath(n leafCount) []nodeIndex {
	var c []nodeIndex
	for y := x; ; {
		s, ok := y.sibling(n)
		if !ok {
			return c
		}
		c = append(c, s)
		y, _ = y.parent(n)
	}
}

// isAncestor reports whether a is an ancestor of (or equal to) d: d lies in
// a's subtree.
func (a nodeIndex) isAncestor(d nodeIndex) bool {
	span := nodeIndex(1)<<a.level() - 1
	return d+span >= a && d <= a+span
}
