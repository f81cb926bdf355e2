package mls

// The ratchet tree's wire form (RFC 9420 §7.6, §7.8, §12.4.3.3).

// NodeType distinguishes leaf and parent nodes.
type NodeType uint8

// Node types.
const (
	NodeTypeLeaf   NodeType = 1
	NodeTypeParent NodeType = 2
)

// ParentNode is an interior node of the ratchet tree (RFC 9420 §7.1).
type ParentNode struct {
	EncryptionKey  HPKEPublicKey
	ParentHash     []byte
	UnmergedLeaves []uint32
}

func (p *ParentNode) encode(e *encoder) {
	e.opaque(p.EncryptionKey)
	e.opaque(p.ParentHash)
	e.vector(func(e *encoder) {
		for _, l := range p.UnmergedLeaves {
			e.u32(l)
		}
	})
}

func (p *ParentNode) decode(d *decoder) {
	p.EncryptionKey = d.opaque()
	p.ParentHash = d.opaque()
	d.vector(func(d *decoder) { p.UnmergedLeaves = append(p.UnmergedLeaves, d.u32()) })
}

// Node is a non-blank ratchet tree node: exactly one of Leaf and Parent is
// set, matching Type.
type Node struct {
	Type   NodeType
	Leaf   *LeafNode
	Parent *ParentNode
}

func (n *Node) encode(e *encoder) {
	e.u8(uint8(n.Type))
	switch {
	case n.Type == NodeTypeLeaf && n.Leaf != nil:
		n.Leaf.encode(e)
	case n.Type == NodeTypeParent && n.Parent != nil:
		n.Parent.encode(e)
	default:
		e.fail("node type %d without matching content", n.Type)
	}
}

func (n *Node) decode(d *decoder) {
	n.Type = NodeType(d.u8())
	switch n.Type {
	case NodeTypeLeaf:
		n.Leaf = new(LeafNode)
		n.Leaf.decode(d)
	case NodeTypeParent:
		n.Parent = new(ParentNode)
		n.Parent.decode(d)
	default:
		d.fail("unknown node type %d", n.Type)
	}
}

// RatchetTree is optional<Node> ratchet_tree<V>: the nodes in array order,
// nil for a blank node. It is the content of the ratchet_tree extension.
type RatchetTree []*Node

func (t *RatchetTree) encode(e *encoder) {
	e.vector(func(e *encoder) {
		for _, n := range *t {
			e.optional(n != nil, func(e *encoder) { n.encode(e) })
		}
	})
}

func (t *RatchetTree) decode(d *decoder) {
	*t = nil
	d.vector(func(d *decoder) {
		var n *Node
		if d.optional() {
			n = new(Node)
			n.decode(d)
		}
		*t = append(*t, n)
	})
}

// UpdatePathNode carries a new parent public key and the path secret
// encrypted to each node of the copath resolution (RFC 9420 §7.6).
type UpdatePathNode struct {
	EncryptionKey       HPKEPublicKey
	EncryptedPathSecret []HPKECiphertext
}

func (n *UpdatePathNode) encode(e *encoder) {
	e.opaque(n.EncryptionKey)
	e.vector(func(e *encoder) {
		for i := range n.EncryptedPathSecret {
			n.EncryptedPathSecret[i].encode(e)
		}
	})
}

func (n *UpdatePathNode) decode(d *decoder) {
	n.EncryptionKey = d.opaque()
	d.vector(func(d *decoder) {
		var c HPKECiphertext
		c.decode(d)
		n.EncryptedPathSecret = append(n.EncryptedPathSecret, c)
	})
}

// UpdatePath is the committer's new leaf and direct-path keys (RFC 9420 §7.6).
type UpdatePath struct {
	LeafNode LeafNode
	Nodes    []UpdatePathNode
}

func (p *UpdatePath) encode(e *encoder) {
	p.LeafNode.encode(e)
	e.vector(func(e *encoder) {
		for i := range p.Nodes {
			p.Nodes[i].encode(e)
		}
	})
}

func (p *UpdatePath) decode(d *decoder) {
	p.LeafNode.decode(d)
	d.vector(func(d *decoder) {
		var n UpdatePathNode
		n.decode(d)
		p.Nodes = append(p.Nodes, n)
	})
}
