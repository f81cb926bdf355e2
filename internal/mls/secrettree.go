package mls

import (
	"fmt"
)

// The secret tree and its hash ratchets (RFC 9420 §9).
//
// The root secret is the epoch's encryption_secret; each parent derives its
// children with ExpandWithLabel(secret, "tree", "left"/"right", Nh), and
// each leaf starts a handshake and an application ratchet. A node's secret
// is wiped as soon as both its children are derived; a ratchet's key and
// nonce for a generation are handed out once and then forgotten.

// RatchetType selects one of a leaf's two ratchets.
type RatchetType uint8

// Ratchet types.
const (
	RatchetHandshake   RatchetType = 0
	RatchetApplication RatchetType = 1
)

// ratchetLabel is the label that starts each ratchet from the leaf secret.
var ratchetLabel = [2]string{RatchetHandshake: "handshake", RatchetApplication: "application"}

// Limits on out-of-order delivery: how far ahead of the ratchet a message's
// generation may be, and how many skipped keys one ratchet keeps.
const (
	MaxGenerationGap = 1024
	maxSkippedKeys   = 1024
)

// KeyNonce is one generation's AEAD key and nonce.
type KeyNonce struct {
	Key   Secret
	Nonce Secret
}

// Wipe zeroes the key and nonce.
func (k KeyNonce) Wipe() { k.Key.Wipe(); k.Nonce.Wipe() }

// ratchet is one hash ratchet: the secret for generation next, and keys of
// earlier generations that were skipped but not yet used.
type ratchet struct {
	secret  Secret
	next    uint32
	skipped map[uint32]KeyNonce
}

// SecretTree derives per-sender message keys for one epoch. It is not safe
// for concurrent use.
type SecretTree struct {
	suite    *CipherSuite
	leaves   leafCount
	nodes    map[nodeIndex]Secret
	ratchets map[leafIndex]*[2]*ratchet
}

// NewSecretTree starts a secret tree for a group of leaves members slots
// (a power of two) from the epoch's encryption_secret. The tree takes its
// own copy of the secret.
func NewSecretTree(s *CipherSuite, encryptionSecret Secret, leaves uint32) (*SecretTree, error) {
	if leaves == 0 || leaves&(leaves-1) != 0 {
		return nil, fmt.Errorf("%w: secret tree of %d leaves (want a power of two)", ErrInvalidArgument, leaves)
	}
	n := leafCount(leaves)
	return &SecretTree{
		suite:    s,
		leaves:   n,
		nodes:    map[nodeIndex]Secret{n.root(): encryptionSecret.Clone()},
		ratchets: map[leafIndex]*[2]*ratchet{},
	}, nil
}

// Wipe zeroes every secret the tree still holds.
func (t *SecretTree) Wipe() {
	for _, s := range t.nodes {
		s.Wipe()
	}
	for _, rs := range t.ratchets {
		for _, r := range rs {
			if r == nil {
				continue
			}
			r.secret.Wipe()
			for _, k := range r.skipped {
				k.Wipe()
			}
		}
	}
}

// leafSecret derives (once) and removes the tree secret of leaf l.
func (t *SecretTree) leafSecret(l leafIndex) (Secret, error) {
	target := l.node()
	// Walk up until a node whose secret is still held.
	path := []nodeIndex{target}
	for {
		if _, ok := t.nodes[path[len(path)-1]]; ok {
			break
		}
		p, ok := path[len(path)-1].parent(t.leaves)
		if !ok {
			return Secret{}, fmt.Errorf("%w: leaf %d secret already consumed", ErrGeneration, l)
		}
		path = append(path, p)
	}
	// Derive down, wiping each parent once both children exist.
	for i := len(path) - 1; i > 0; i-- {
		x := path[i]
		sec := t.nodes[x]
		left, _ := x.left()
		right, _ := x.right()
		ls, err := t.suite.ExpandWithLabel(sec.Bytes(), "tree", []byte("left"), t.suite.Nh())
		if err != nil {
			return Secret{}, err
		}
		rs, err := t.suite.ExpandWithLabel(sec.Bytes(), "tree", []byte("right"), t.suite.Nh())
		if err != nil {
			return Secret{}, err
		}
		t.nodes[left], t.nodes[right] = adoptSecret(ls), adoptSecret(rs)
		sec.Wipe()
		delete(t.nodes, x)
	}
	s := t.nodes[target]
	delete(t.nodes, target)
	return s, nil
}

// ratchetFor returns leaf l's ratchet of type typ, starting both ratchets
// of the leaf on first use.
func (t *SecretTree) ratchetFor(leaf uint32, typ RatchetType) (*ratchet, error) {
	if typ > RatchetApplication {
		return nil, fmt.Errorf("%w: ratchet type %d", ErrInvalidArgument, typ)
	}
	if leaf >= uint32(t.leaves) {
		return nil, fmt.Errorf("%w: leaf %d outside a tree of %d leaves", ErrInvalidArgument, leaf, t.leaves)
	}
	l := leafIndex(leaf)
	if rs, ok := t.ratchets[l]; ok {
		return rs[typ], nil
	}
	ls, err := t.leafSecret(l)
	if err != nil {
		return nil, err
	}
	defer ls.Wipe()
	var rs [2]*ratchet
	for i, label := range ratchetLabel {
		sec, err := t.suite.ExpandWithLabel(ls.Bytes(), label, nil, t.suite.Nh())
		if err != nil {
			return nil, err
		}
		rs[i] = &ratchet{secret: adoptSecret(sec)}
	}
	t.ratchets[l] = &rs
	return rs[typ], nil
}

// step derives the key and nonce of generation r.next and advances.
func (t *SecretTree) step(r *ratchet) (KeyNonce, error) {
	s, g := t.suite, r.next
	if g == ^uint32(0) {
		return KeyNonce{}, fmt.Errorf("%w: ratchet exhausted", ErrGeneration)
	}
	key, err := s.DeriveTreeSecret(r.secret.Bytes(), "key", g, s.Nk())
	if err != nil {
		return KeyNonce{}, err
	}
	nonce, err := s.DeriveTreeSecret(r.secret.Bytes(), "nonce", g, s.Nn())
	if err != nil {
		return KeyNonce{}, err
	}
	next, err := s.DeriveTreeSecret(r.secret.Bytes(), "secret", g, s.Nh())
	if err != nil {
		return KeyNonce{}, err
	}
	r.secret.Wipe()
	r.secret = adoptSecret(next)
	r.next++
	return KeyNonce{Key: adoptSecret(key), Nonce: adoptSecret(nonce)}, nil
}

// Next returns the key and nonce for the sender's next message on the
// given ratchet, with their generation.
func (t *SecretTree) Next(leaf uint32, typ RatchetType) (uint32, KeyNonce, error) {
	r, err := t.ratchetFor(leaf, typ)
	if err != nil {
		return 0, KeyNonce{}, err
	}
	g := r.next
	kn, err := t.step(r)
	return g, kn, err
}

// Get returns the key and nonce of a received message's generation and
// forgets them. Generations behind the ratchet are available once if they
// were skipped; generations more than MaxGenerationGap ahead are refused.
func (t *SecretTree) Get(leaf uint32, typ RatchetType, generation uint32) (KeyNonce, error) {
	r, err := t.ratchetFor(leaf, typ)
	if err != nil {
		return KeyNonce{}, err
	}
	if generation < r.next {
		kn, ok := r.skipped[generation]
		if !ok {
			return KeyNonce{}, fmt.Errorf("%w: generation %d of leaf %d already used or dropped", ErrGeneration, generation, leaf)
		}
		delete(r.skipped, generation)
		return kn, nil
	}
	if generation-r.next > MaxGenerationGap {
		return KeyNonce{}, fmt.Errorf("%w: generation %d is more than %d ahead of %d", ErrGeneration, generation, MaxGenerationGap, r.next)
	}
	for r.next < generation {
		g := r.next
		kn, err := t.step(r)
		if err != nil {
			return KeyNonce{}, err
		}
		if r.skipped == nil {
			r.skipped = map[uint32]KeyNonce{}
		}
		r.skipped[g] = kn
		if len(r.skipped) > maxSkippedKeys {
			t.dropOldest(r)
		}
	}
	return t.step(r)
}

// dropOldest forgets the lowest skipped generation.
func (t *SecretTree) dropOldest(r *ratchet) {
	first := true
	var min uint32
	for g := range r.skipped {
		if first || g < min {
			min, first = g, false
		}
	}
	r.skipped[min].Wipe()
	delete(r.skipped, min)
}

// SenderDataKeyNonce derives the key and nonce that protect a
// PrivateMessage's SenderData (RFC 9420 §6.3.2) from the first Nh bytes of
// its ciphertext.
func (s *CipherSuite) SenderDataKeyNonce(senderDataSecret Secret, ciphertext []byte) (KeyNonce, error) {
	sample := ciphertext
	if len(sample) > s.Nh() {
		sample = sample[:s.Nh()]
	}
	key, err := s.ExpandWithLabel(senderDataSecret.Bytes(), "key", sample, s.Nk())
	if err != nil {
		return KeyNonce{}, err
	}
	nonce, err := s.ExpandWithLabel(senderDataSecret.Bytes(), "nonce", sample, s.Nn())
	if err != nil {
		return KeyNonce{}, err
	}
	return KeyNonce{Key: adoptSecret(key), Nonce: adoptSecret(nonce)}, nil
}
