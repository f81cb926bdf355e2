package mls

import (
	"bytes"
	"fmt"
	"slices"
)

// Group state export/import: a versioned, deterministic binary form
// (the same state always encodes to the same bytes) that a client
// persists after every change, encrypted at rest. It holds private keys
// and epoch secrets.
//
//	opaque magic<V> = "qpc-mls-group"; uint16 version = 1;
//	GroupContext; RatchetTree; interim; confirmation tag; uint32 own leaf;
//	signature key; node keys (sorted by node); epoch secrets (9);
//	secret tree; cached proposals; past epochs; resumption PSKs;
//	removed flag; optional ReInit; Update keys; optional pending commit
//	(its messages and the nested next state).

const (
	stateMagic   = "qpc-mls-group"
	stateVersion = 1
	// maxStateDepth bounds the nesting of pending states.
	maxStateDepth = 1
)

// Export returns the group's state for ImportGroup.
func (g *Group) Export() ([]byte, error) {
	e := &encoder{}
	e.opaque([]byte(stateMagic))
	e.u16(stateVersion)
	g.encodeState(e, true)
	if e.err != nil {
		return nil, e.err
	}
	return e.buf, nil
}

func encodeKey(e *encoder, k nodeKey) {
	e.opaque(k.priv.Bytes())
	e.opaque(k.pub)
}

func (g *Group) encodeState(e *encoder, withPending bool) {
	g.gc.encode(e)
	// The RatchetTree encoding, copied from the tree's encoding cache; the
	// caller may wipe the state buffer, so it does not become the cache.
	g.tree.writePublic(e, false)
	e.opaque(g.interim)
	e.opaque(g.confTag)
	e.u32(uint32(g.own))
	e.opaque(g.sigPriv.Bytes())
	idx := make([]nodeIndex, 0, len(g.keys))
	for x := range g.keys {
		idx = append(idx, x)
	}
	slices.Sort(idx)
	e.vector(func(e *encoder) {
		for _, x := range idx {
			e.u32(uint32(x))
			encodeKey(e, g.keys[x])
		}
	})
	for _, s := range g.es.all() {
		e.opaque(s.Bytes())
	}
	g.st.encode(e)
	e.vector(func(e *encoder) {
		for i := range g.proposals {
			p := &g.proposals[i]
			e.opaque(p.ref)
			p.proposal.encode(e)
			p.sender.encode(e)
		}
	})
	e.vector(func(e *encoder) {
		for _, p := range g.past {
			p.gc.encode(e)
			prt := p.tree.public()
			prt.encode(e)
			p.st.encode(e)
			e.opaque(p.senderData.Bytes())
		}
	})
	e.vector(func(e *encoder) {
		for _, r := range g.resumption {
			e.u64(r.epoch)
			e.opaque(r.psk.Bytes())
		}
	})
	if g.removed {
		e.u8(1)
	} else {
		e.u8(0)
	}
	e.optional(g.reinit != nil, func(e *encoder) { g.reinit.encode(e) })
	e.vector(func(e *encoder) {
		for _, k := range g.updateKeys {
			encodeKey(e, k)
		}
	})
	p := g.pending
	e.optional(withPending && p != nil, func(e *encoder) {
		e.opaque(p.Message)
		e.opaque(p.Welcome)
		e.opaque(p.GroupInfo)
		e.u64(p.Epoch)
		e.u64(p.base)
		encodeU32List(e, p.Added)
		p.next.encodeState(e, false)
	})
}

func encodeU32List(e *encoder, l []uint32) {
	e.vector(func(e *encoder) {
		for _, v := range l {
			e.u32(v)
		}
	})
}

func decodeU32List(d *decoder) []uint32 {
	var l []uint32
	d.vector(func(d *decoder) { l = append(l, d.u32()) })
	return l
}

// ImportGroup restores a group from Export's output under cfg. Malformed
// or inconsistent input fails with an error wrapping ErrInvalidState.
func ImportGroup(cfg Config, raw []byte) (*Group, error) {
	d := newDecoder(raw)
	if m := d.opaque(); d.err == nil && string(m) != stateMagic {
		return nil, fmt.Errorf("%w: not an MLS group state", ErrInvalidState)
	}
	if v := d.u16(); d.err == nil && v != stateVersion {
		return nil, fmt.Errorf("%w: state version %d (this build reads %d)", ErrInvalidState, v, stateVersion)
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidState, d.err)
	}
	g, err := decodeState(cfg, d, 0)
	if err != nil {
		return nil, err
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidState, err)
	}
	return g, nil
}

// decodeTreeEntries is RatchetTree.decode that also keeps the vector's
// body (copied: the caller may wipe its state buffer) and where each
// entry starts, as the tree's encoding cache (pubCache): the tree of an
// imported group then encodes for its next commit without gathering its
// nodes again. Nil when the tree does not decode.
func decodeTreeEntries(d *decoder) (RatchetTree, *pubCache) {
	var rt RatchetTree
	var body []byte
	var off []uint32
	d.vector(func(sub *decoder) {
		if body == nil {
			body = bytes.Clone(sub.s)
		}
		off = append(off, uint32(len(body)-len(sub.s)))
		var n *Node
		if sub.optional() {
			n = new(Node)
			n.decode(sub)
		}
		rt = append(rt, n)
	})
	if d.err != nil || len(rt) == 0 {
		return rt, nil
	}
	off = append(off, uint32(len(body)))
	return rt, &pubCache{body: body, nodes: slices.Clone(rt), off: off}
}

func stateErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidState}, args...)...)
}

func decodeState(cfg Config, d *decoder, depth int) (*Group, error) {
	g := &Group{cfg: cfg}
	g.gc.decode(d)
	rt, pub := decodeTreeEntries(d)
	g.interim = d.opaque()
	g.confTag = d.opaque()
	g.own = leafIndex(d.u32())
	sig := d.opaque()
	defer clear(sig)
	type rawKey struct {
		x         uint32
		priv, pub []byte
	}
	var keys []rawKey
	d.vector(func(d *decoder) {
		keys = append(keys, rawKey{d.u32(), d.opaque(), d.opaque()})
	})
	var esRaw [9][]byte
	for i := range esRaw {
		esRaw[i] = d.opaque()
	}
	if d.err != nil {
		return nil, stateErr("%v", d.err)
	}
	s, err := Suite(g.gc.CipherSuite)
	if err != nil {
		return nil, stateErr("%v", err)
	}
	g.suite = s
	if g.tree, err = treeFromPublic(s, rt); err != nil {
		return nil, stateErr("%v", err)
	}
	g.tree.pub = pub
	if !bytes.Equal(g.tree.rootHash(), g.gc.TreeHash) {
		return nil, stateErr("tree hash mismatch")
	}
	if uint32(g.own) >= uint32(g.tree.leafCount()) {
		return nil, stateErr("own leaf %d outside the tree", g.own)
	}
	if g.sigPriv, _, err = s.SignaturePrivateKeyFromBytes(sig); err != nil {
		return nil, stateErr("signature key: %v", err)
	}
	g.keys = nodeKeys{}
	for _, k := range keys {
		nk, err := importNodeKey(s, k.priv, k.pub)
		if err != nil {
			return nil, err
		}
		if uint64(k.x) >= uint64(len(g.tree.nodes)) {
			return nil, stateErr("key for node %d outside the tree", k.x)
		}
		g.keys[nodeIndex(k.x)] = nk
	}
	g.es = &EpochSecrets{suite: s}
	for i, dst := range g.es.ptrs() {
		*dst = adoptSecret(esRaw[i])
	}
	if g.st, err = decodeSecretTree(s, d); err != nil {
		return nil, err
	}
	if g.st.leaves != g.tree.leafCount() {
		return nil, stateErr("secret tree of %d leaves for a tree of %d", g.st.leaves, g.tree.leafCount())
	}
	d.vector(func(d *decoder) {
		var p cachedProposal
		p.ref = d.opaque()
		p.proposal.decode(d)
		p.sender.decode(d)
		g.proposals = append(g.proposals, p)
	})
	var perr error
	d.vector(func(d *decoder) {
		p := &pastEpoch{}
		p.gc.decode(d)
		var prt RatchetTree
		prt.decode(d)
		st, err := decodeSecretTree(s, d)
		if err != nil {
			if perr == nil {
				perr = err
			}
			d.fail("past epoch")
			return
		}
		p.st = st
		p.senderData = d.secret()
		if d.err != nil {
			return
		}
		if p.tree, err = treeFromPublic(s, prt); err != nil || p.tree.leafCount() != st.leaves {
			if perr == nil {
				perr = stateErr("past tree: %v", err)
			}
			d.fail("past epoch")
			return
		}
		g.past = append(g.past, p)
	})
	if perr != nil {
		return nil, perr
	}
	d.vector(func(d *decoder) {
		g.resumption = append(g.resumption, resumptionPSK{epoch: d.u64(), psk: d.secret()})
	})
	switch r := d.u8(); {
	case d.err != nil:
	case r == 1:
		g.removed = true
	case r != 0:
		d.fail("removed flag %d", r)
	}
	if d.optional() {
		g.reinit = new(ReInit)
		g.reinit.decode(d)
	}
	var upd [][2][]byte
	d.vector(func(d *decoder) { upd = append(upd, [2][]byte{d.opaque(), d.opaque()}) })
	if d.err != nil {
		return nil, stateErr("%v", d.err)
	}
	for _, u := range upd {
		nk, err := importNodeKey(s, u[0], u[1])
		if err != nil {
			return nil, err
		}
		g.updateKeys = append(g.updateKeys, nk)
	}
	if d.optional() {
		if depth >= maxStateDepth {
			return nil, stateErr("nested pending state")
		}
		p := &PendingCommit{Message: d.opaque(), Welcome: d.opaque(), GroupInfo: d.opaque(), Epoch: d.u64(), base: d.u64(), Added: decodeU32List(d)}
		if d.err != nil {
			return nil, stateErr("%v", d.err)
		}
		next, err := decodeState(cfg, d, depth+1)
		if err != nil {
			return nil, err
		}
		if p.base != g.gc.Epoch || next.gc.Epoch != p.Epoch {
			return nil, stateErr("pending commit epochs")
		}
		p.next = next
		g.pending = p
	}
	if d.err != nil {
		return nil, stateErr("%v", d.err)
	}
	return g, nil
}

func importNodeKey(s *CipherSuite, priv, pub []byte) (nodeKey, error) {
	defer clear(priv)
	k, p, err := s.HPKEPrivateKeyFromBytes(priv)
	if err != nil {
		return nodeKey{}, stateErr("node key: %v", err)
	}
	if !bytes.Equal(p, pub) {
		return nodeKey{}, stateErr("node key pair mismatch")
	}
	return nodeKey{k, p}, nil
}

// all returns the epoch secrets in a fixed order; ptrs points at them.
func (e *EpochSecrets) all() []Secret {
	return []Secret{e.SenderDataSecret, e.EncryptionSecret, e.ExporterSecret, e.ExternalSecret,
		e.ConfirmationKey, e.MembershipKey, e.ResumptionPSK, e.EpochAuthenticator, e.InitSecret}
}

func (e *EpochSecrets) ptrs() []*Secret {
	return []*Secret{&e.SenderDataSecret, &e.EncryptionSecret, &e.ExporterSecret, &e.ExternalSecret,
		&e.ConfirmationKey, &e.MembershipKey, &e.ResumptionPSK, &e.EpochAuthenticator, &e.InitSecret}
}

// encode writes the secret tree's remaining secrets, sorted.
func (t *SecretTree) encode(e *encoder) {
	e.u32(uint32(t.leaves))
	nodes := make([]nodeIndex, 0, len(t.nodes))
	for x := range t.nodes {
		nodes = append(nodes, x)
	}
	slices.Sort(nodes)
	e.vector(func(e *encoder) {
		for _, x := range nodes {
			e.u32(uint32(x))
			e.opaque(t.nodes[x].Bytes())
		}
	})
	leaves := make([]leafIndex, 0, len(t.ratchets))
	for l := range t.ratchets {
		leaves = append(leaves, l)
	}
	slices.Sort(leaves)
	e.vector(func(e *encoder) {
		for _, l := range leaves {
			e.u32(uint32(l))
			for _, r := range t.ratchets[l] {
				e.opaque(r.secret.Bytes())
				e.u32(r.next)
				gens := make([]uint32, 0, len(r.skipped))
				for g := range r.skipped {
					gens = append(gens, g)
				}
				slices.Sort(gens)
				e.vector(func(e *encoder) {
					for _, g := range gens {
						e.u32(g)
						e.opaque(r.skipped[g].Key.Bytes())
						e.opaque(r.skipped[g].Nonce.Bytes())
					}
				})
			}
		}
	})
}

func decodeSecretTree(s *CipherSuite, d *decoder) (*SecretTree, error) {
	n := d.u32()
	if d.err != nil {
		return nil, stateErr("%v", d.err)
	}
	if n == 0 || n&(n-1) != 0 || n > 1<<30 {
		return nil, stateErr("secret tree of %d leaves", n)
	}
	t := &SecretTree{suite: s, leaves: leafCount(n), nodes: map[nodeIndex]Secret{}, ratchets: map[leafIndex]*[2]*ratchet{}}
	w := t.leaves.nodeWidth()
	d.vector(func(d *decoder) {
		x := d.u32()
		sec := d.secret()
		if d.err == nil && (x >= w || t.nodes[nodeIndex(x)].p != nil) {
			d.fail("secret tree node %d", x)
		}
		t.nodes[nodeIndex(x)] = sec
	})
	d.vector(func(d *decoder) {
		l := d.u32()
		if d.err == nil && (l >= n || t.ratchets[leafIndex(l)] != nil) {
			d.fail("secret tree leaf %d", l)
			return
		}
		var rs [2]*ratchet
		for i := range rs {
			r := &ratchet{secret: d.secret(), next: d.u32()}
			d.vector(func(d *decoder) {
				g := d.u32()
				kn := KeyNonce{Key: d.secret(), Nonce: d.secret()}
				if d.err != nil {
					return
				}
				if r.skipped == nil {
					r.skipped = map[uint32]KeyNonce{}
				}
				if _, dup := r.skipped[g]; dup || g >= r.next || len(r.skipped) >= maxSkippedKeys {
					d.fail("skipped generation %d", g)
					return
				}
				r.skipped[g] = kn
			})
			rs[i] = r
		}
		t.ratchets[leafIndex(l)] = &rs
	})
	if d.err != nil {
		return nil, stateErr("secret tree: %v", d.err)
	}
	return t, nil
}
