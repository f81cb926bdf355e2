package mls

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// The group state machine (RFC 9420 §11, §12): creating a group,
// committing proposals, processing messages, protecting application
// data, and the bookkeeping of epochs. See docs/mls.md, "Group API".

// PSKStore looks up external pre-shared keys by their psk_id.
type PSKStore func(pskID []byte) (Secret, bool)

// Config holds a client's group policy. The zero value is usable.
type Config struct {
	// AllowedSuites is the cipher suite allowlist (default {1}). A
	// Welcome, GroupInfo, KeyPackage or ReInit for another suite is
	// refused, as is a ReInit to a suite weaker than the group's.
	AllowedSuites []CipherSuiteID
	// MaxPastEpochs is how many past epochs are kept to decrypt late
	// application messages (default 3; negative keeps none).
	MaxPastEpochs int
	// PaddingBlock pads PrivateMessage content to a multiple of this
	// many bytes (default 32; negative disables padding).
	PaddingBlock int
	// PublicHandshake sends proposals and commits as PublicMessage
	// (default false: members' handshake messages are PrivateMessages,
	// so the server sees only the framing). External commits and
	// proposals are always public.
	PublicHandshake bool
	// PSKs resolves external pre-shared keys (default: none known).
	PSKs PSKStore
	// Now is the clock for lifetime checks (default time.Now).
	Now func() time.Time
	// SkipLifetimeCheck disables the lifetime check of KeyPackages this
	// client adds (test vectors carry expired ones). Leaves received in a
	// tree or a commit are never refused for their lifetime alone.
	SkipLifetimeCheck bool
	// AllowWeakerReInit lets a ReInit move the group to an allowed suite
	// that ranks below its own (SuiteStrength). RFC 9420 §12.1.5 permits
	// any suite; the product refuses weaker ones as a downgrade, and only
	// the interop harness (whose reinit scripts pick any other suite)
	// turns this on. The allowlist still applies.
	AllowWeakerReInit bool
}

func (c *Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Config) maxPast() int {
	switch {
	case c.MaxPastEpochs < 0:
		return 0
	case c.MaxPastEpochs == 0:
		return 3
	}
	return c.MaxPastEpochs
}

func (c *Config) padding(n int) int {
	b := c.PaddingBlock
	if b < 0 {
		return 0
	}
	if b == 0 {
		b = 32
	}
	return (b - n%b) % b
}

func (c *Config) allowed(id CipherSuiteID) bool {
	return KeyPackagePolicy{AllowedSuites: c.AllowedSuites}.allowed(id)
}

// suiteLevel is the security level of a suite in bits, for the
// downgrade guard. The X-Wing hybrids rank above every classical suite:
// moving from one to a classical suite loses the protection against a
// quantum attacker, whatever the classical strength.
func suiteLevel(id CipherSuiteID) int {
	switch id {
	case 1, 2, 3:
		return 128
	case 4, 5, 6, 7:
		return 256
	case MLS256XWingAES256GCMSHA512Ed25519, MLS256XWingChaCha20Poly1305SHA512Ed25519:
		return 384
	}
	return 0
}

// SuiteStrength ranks suites for downgrade decisions: 128-bit classical
// suites (1-3) < 256-bit classical suites (4-7) < post-quantum hybrids
// (X-Wing). Unknown suites rank 0. A group never changes suite; the rank
// decides what a ReInit may move to and what a policy's minimum admits.
func SuiteStrength(id CipherSuiteID) int { return suiteLevel(id) }

// checkSuiteChange refuses moving from suite from to suite to if to is
// outside the allowlist or weaker.
func (c *Config) checkSuiteChange(from, to CipherSuiteID) error {
	if !c.allowed(to) {
		return fmt.Errorf("%w: suite %d not in the allowlist", ErrDowngrade, to)
	}
	if suiteLevel(to) < suiteLevel(from) && !c.AllowWeakerReInit {
		return fmt.Errorf("%w: suite %d is weaker than %d", ErrDowngrade, to, from)
	}
	return nil
}

// cachedProposal is a proposal seen in the current epoch, kept so a
// commit can include it by reference.
type cachedProposal struct {
	ref      []byte
	proposal Proposal
	sender   Sender
}

// pastEpoch is what a past epoch keeps to decrypt late application
// messages: its context, tree (for sender keys), secret tree and
// sender-data secret.
type pastEpoch struct {
	gc         GroupContext
	tree       *ratchetTree
	st         *SecretTree
	senderData Secret
}

func (p *pastEpoch) wipe() {
	p.st.Wipe()
	p.senderData.Wipe()
}

// resumptionPSK is a past epoch's resumption secret.
type resumptionPSK struct {
	epoch uint64
	psk   Secret
}

// Group is one client's state of an MLS group. It is not safe for
// concurrent use. Methods that change the epoch (ProcessMessage on a
// commit, MergePendingCommit) replace the state atomically: on error the
// group is unchanged.
type Group struct {
	cfg     Config
	suite   *CipherSuite
	gc      GroupContext
	tree    *ratchetTree
	interim []byte
	confTag []byte
	es      *EpochSecrets
	st      *SecretTree
	own     leafIndex
	sigPriv SignaturePrivateKey
	keys    nodeKeys

	proposals  []cachedProposal
	past       []*pastEpoch // oldest first
	resumption []resumptionPSK
	pending    *PendingCommit
	removed    bool
	reinit     *ReInit
	updateKeys []nodeKey
	// ownProposals are the messages of our proposals this epoch (an echo
	// from the server is recognised, not processed).
	ownProposals [][]byte
	// allowUsage and resumptionFrom are set while creating the first
	// commit of a ReInit or branch group.
	allowUsage     ResumptionPSKUsage
	resumptionFrom *Group // private keys of our Update proposals this epoch
}

// GroupOptions tune CreateGroup.
type GroupOptions struct {
	// Extensions are the initial GroupContext extensions.
	Extensions []Extension
	// LeafOptions for the creator's own KeyPackage-like leaf.
	Capabilities   *Capabilities
	LeafExtensions []Extension
	// Lifetime of the creator's leaf (default 30 days).
	Lifetime time.Duration
}

// CreateGroup starts a one-member group (RFC 9420 §11) with the given
// id (qpc uses 32 random bytes; see NewGroupID), suite, BasicCredential
// identity and signature key.
func CreateGroup(cfg Config, groupID []byte, suite CipherSuiteID, identity []byte, sigPriv SignaturePrivateKey, opts GroupOptions) (*Group, error) {
	if !cfg.allowed(suite) {
		return nil, fmt.Errorf("%w: suite %d not in the allowlist", ErrUnsupportedCipherSuite, suite)
	}
	if len(groupID) == 0 {
		return nil, fmt.Errorf("%w: empty group id", ErrInvalidArgument)
	}
	b, err := GenerateKeyPackage(suite, identity, sigPriv, KeyPackageOptions{
		Now: cfg.now(), Lifetime: opts.Lifetime, Capabilities: opts.Capabilities, LeafExtensions: opts.LeafExtensions,
	})
	if err != nil {
		return nil, err
	}
	b.InitPriv.Wipe()
	return createFromLeaf(cfg, groupID, &b.KeyPackage.LeafNode, b.EncryptionPriv, sigPriv, opts.Extensions)
}

// NewGroupID returns 32 random bytes, the group id size qpc uses.
func NewGroupID() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return b
}

func createFromLeaf(cfg Config, groupID []byte, leaf *LeafNode, encPriv HPKEPrivateKey, sigPriv SignaturePrivateKey, ext []Extension) (*Group, error) {
	s, err := Suite(sigPriv.suite)
	if err != nil {
		return nil, err
	}
	g := &Group{
		cfg:     cfg,
		suite:   s,
		tree:    newRatchetTree(s, leaf),
		own:     0,
		sigPriv: sigPriv,
		keys:    nodeKeys{0: {encPriv, leaf.EncryptionKey}},
	}
	g.gc = GroupContext{
		Version: ProtocolVersionMLS10, CipherSuite: s.ID(), GroupID: slices.Clone(groupID), Epoch: 0,
		TreeHash: g.tree.rootHash(), ConfirmedTranscriptHash: nil, Extensions: slices.Clone(ext),
	}
	if err := g.checkExtensionsSupported(g.gc.Extensions, g.tree); err != nil {
		return nil, err
	}
	// Epoch 0: a random init secret and an all-zero commit secret
	// (RFC 9420 §11).
	initSecret := make([]byte, s.Nh())
	_, _ = rand.Read(initSecret)
	js, err := s.JoinerSecret(adoptSecret(initSecret), Secret{}, &g.gc)
	if err != nil {
		return nil, err
	}
	defer js.Wipe()
	if g.es, err = s.EpochSecrets(js, Secret{}, &g.gc); err != nil {
		return nil, err
	}
	g.confTag = s.ConfirmationTag(g.es.ConfirmationKey, g.gc.ConfirmedTranscriptHash)
	if g.interim, err = s.InterimTranscriptHash(g.gc.ConfirmedTranscriptHash, g.confTag); err != nil {
		return nil, err
	}
	if g.st, err = NewSecretTree(s, g.es.EncryptionSecret, uint32(g.tree.leafCount())); err != nil {
		return nil, err
	}
	g.rememberResumption()
	return g, nil
}

// Accessors.

// GroupID returns the group id.
func (g *Group) GroupID() []byte { return slices.Clone(g.gc.GroupID) }

// Epoch returns the current epoch.
func (g *Group) Epoch() uint64 { return g.gc.Epoch }

// CipherSuite returns the group's suite.
func (g *Group) CipherSuite() CipherSuiteID { return g.gc.CipherSuite }

// OwnLeaf returns this client's leaf index.
func (g *Group) OwnLeaf() uint32 { return uint32(g.own) }

// Context returns a copy of the current GroupContext.
func (g *Group) Context() GroupContext {
	c := g.gc
	c.GroupID = slices.Clone(c.GroupID)
	c.TreeHash = slices.Clone(c.TreeHash)
	c.ConfirmedTranscriptHash = slices.Clone(c.ConfirmedTranscriptHash)
	c.Extensions = slices.Clone(c.Extensions)
	return c
}

// Active reports whether this client is still a member (false after a
// commit removed it or a ReInit ended the group).
func (g *Group) Active() bool { return !g.removed && g.reinit == nil }

// PendingReInit returns the ReInit a processed commit applied, if any:
// the group may no longer be used and a member creates the new group.
func (g *Group) PendingReInit() *ReInit { return g.reinit }

// Member is one leaf of the group.
type Member struct {
	Leaf         uint32
	Identity     []byte // BasicCredential identity
	SignatureKey SignaturePublicKey
	LeafNode     *LeafNode
}

// Members lists the current members in leaf order.
func (g *Group) Members() []Member {
	var out []Member
	g.tree.members(func(l leafIndex, ln *LeafNode) {
		out = append(out, Member{Leaf: uint32(l), Identity: ln.Credential.Identity, SignatureKey: ln.SignatureKey, LeafNode: ln})
	})
	return out
}

// RatchetTree returns the public ratchet tree (for the ratchet_tree
// extension or to hand to a joiner out of band).
func (g *Group) RatchetTree() RatchetTree { return g.tree.public() }

// EpochAuthenticator returns the epoch_authenticator of the current
// epoch (RFC 9420 §8.7), for out-of-band comparison between members.
func (g *Group) EpochAuthenticator() []byte { return slices.Clone(g.es.EpochAuthenticator.Bytes()) }

// ExportSecret is MLS-Exporter(label, context, length) (RFC 9420 §8.5).
func (g *Group) ExportSecret(label string, context []byte, length int) (Secret, error) {
	return g.es.Export(label, context, length)
}

// ResumptionPSK returns the resumption secret of the current epoch.
func (g *Group) ResumptionPSK() Secret { return g.es.ResumptionPSK.Clone() }

// rememberResumption keeps the current epoch's resumption PSK (bounded
// like the past epochs).
func (g *Group) rememberResumption() {
	g.resumption = append(g.resumption, resumptionPSK{epoch: g.gc.Epoch, psk: g.es.ResumptionPSK.Clone()})
	if max := g.cfg.maxPast() + 1; len(g.resumption) > max {
		for _, r := range g.resumption[:len(g.resumption)-max] {
			r.psk.Wipe()
		}
		g.resumption = slices.Clone(g.resumption[len(g.resumption)-max:])
	}
}

// clone returns a copy whose tree, keys and lists can be changed without
// touching g (secrets are shared until the copy replaces them).
func (g *Group) clone() *Group { return g.cloneWithTree(g.tree.clone()) }

// cloneWithTree is clone with tree t in place of a copy of g's: a commit
// has already applied its proposals to its own copy, and copying a large
// tree again only to drop it costs a megabyte per commit at 10 000 members.
func (g *Group) cloneWithTree(t *ratchetTree) *Group {
	c := *g
	c.tree = t
	c.keys = g.keys.clone()
	c.gc = g.Context()
	c.proposals = nil
	c.past = slices.Clone(g.past)
	c.resumption = slices.Clone(g.resumption)
	c.pending = nil
	c.ownProposals = nil
	return &c
}

// senderKey returns the signature key of a member or external sender.
func (g *Group) senderKey(tree *ratchetTree, gc *GroupContext, s Sender) (SignaturePublicKey, error) {
	switch s.Type {
	case SenderTypeMember:
		ln := tree.leaf(leafIndex(s.LeafIndex))
		if s.LeafIndex >= uint32(tree.leafCount()) || ln == nil {
			return nil, fmt.Errorf("%w: sender leaf %d", ErrNotMember, s.LeafIndex)
		}
		return ln.SignatureKey, nil
	case SenderTypeExternal:
		es, err := externalSenders(gc.Extensions)
		if err != nil {
			return nil, err
		}
		if int(s.SenderIndex) >= len(es) {
			return nil, fmt.Errorf("%w: external sender %d", ErrNotMember, s.SenderIndex)
		}
		return es[s.SenderIndex].SignatureKey, nil
	}
	return nil, fmt.Errorf("%w: sender type %d", ErrInvalidMessage, s.Type)
}

// ExternalSender is an entry of the external_senders extension.
type ExternalSender struct {
	SignatureKey SignaturePublicKey
	Credential   Credential
}

// ExternalSendersExtension encodes an external_senders extension.
func ExternalSendersExtension(l []ExternalSender) (Extension, error) {
	e := &encoder{}
	e.vector(func(e *encoder) {
		for i := range l {
			e.opaque(l[i].SignatureKey)
			l[i].Credential.encode(e)
		}
	})
	return Extension{Type: ExtensionTypeExternalSenders, Data: e.buf}, e.err
}

func externalSenders(ext []Extension) ([]ExternalSender, error) {
	x := findExtension(ext, ExtensionTypeExternalSenders)
	if x == nil {
		return nil, nil
	}
	var out []ExternalSender
	d := newDecoder(x.Data)
	d.vector(func(d *decoder) {
		var s ExternalSender
		s.SignatureKey = d.opaque()
		s.Credential.decode(d)
		out = append(out, s)
	})
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("external_senders: %w", err)
	}
	return out, nil
}

func findExtension(ext []Extension, t ExtensionType) *Extension {
	for i := range ext {
		if ext[i].Type == t {
			return &ext[i]
		}
	}
	return nil
}

// RequiredCapabilities is the required_capabilities extension (§11.1).
type RequiredCapabilities struct {
	Extensions  []ExtensionType
	Proposals   []ProposalType
	Credentials []CredentialType
}

// Extension encodes r as a required_capabilities extension.
func (r *RequiredCapabilities) Extension() Extension {
	e := &encoder{}
	encodeU16List(e, r.Extensions)
	encodeU16List(e, r.Proposals)
	encodeU16List(e, r.Credentials)
	return Extension{Type: ExtensionTypeRequiredCapabilities, Data: e.buf}
}

func requiredCapabilities(ext []Extension) (*RequiredCapabilities, error) {
	x := findExtension(ext, ExtensionTypeRequiredCapabilities)
	if x == nil {
		return nil, nil
	}
	r := &RequiredCapabilities{}
	d := newDecoder(x.Data)
	r.Extensions = decodeU16List[ExtensionType](d)
	r.Proposals = decodeU16List[ProposalType](d)
	r.Credentials = decodeU16List[CredentialType](d)
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("required_capabilities: %w", err)
	}
	return r, nil
}

// leafSupports checks a leaf against the group's required capabilities
// and extension set.
func leafSupports(ln *LeafNode, gcExt []Extension) error {
	rc, err := requiredCapabilities(gcExt)
	if err != nil {
		return err
	}
	c := &ln.Capabilities
	if rc != nil {
		for _, t := range rc.Extensions {
			if !isDefaultExtension(t) && !slices.Contains(c.Extensions, t) {
				return errLeaf(fmt.Sprintf("leaf lacks required extension %d", t))
			}
		}
		for _, t := range rc.Proposals {
			if !isDefaultProposal(t) && !slices.Contains(c.Proposals, t) {
				return errLeaf(fmt.Sprintf("leaf lacks required proposal %d", t))
			}
		}
		for _, t := range rc.Credentials {
			if !slices.Contains(c.Credentials, t) {
				return errLeaf(fmt.Sprintf("leaf lacks required credential %d", t))
			}
		}
	}
	for _, x := range gcExt {
		if !isDefaultExtension(x.Type) && !slices.Contains(c.Extensions, x.Type) {
			return errLeaf(fmt.Sprintf("leaf lacks group extension %d", x.Type))
		}
	}
	return nil
}

// checkExtensionsSupported checks that every member supports ext.
func (g *Group) checkExtensionsSupported(ext []Extension, t *ratchetTree) error {
	var err error
	t.members(func(l leafIndex, ln *LeafNode) {
		if err == nil {
			if e := leafSupports(ln, ext); e != nil {
				err = fmt.Errorf("%w: member %d: %w", ErrInvalidProposal, l, e)
			}
		}
	})
	return err
}

// memberIndex indexes the members' keys and credential types so that
// validating a leaf against the group (§7.3) is O(1) per leaf, not O(n).
type memberIndex struct {
	sig, enc map[string]leafIndex
	n        int
	supports map[CredentialType]int // members whose capabilities list T
	inUse    map[CredentialType]int // members whose credential is of type T
	dup      error                  // a key seen twice while indexing
}

func newMemberIndex(t *ratchetTree) *memberIndex {
	n := int(t.leafCount())
	m := &memberIndex{sig: make(map[string]leafIndex, n), enc: make(map[string]leafIndex, n), supports: map[CredentialType]int{}, inUse: map[CredentialType]int{}}
	t.members(m.add)
	return m
}

func (m *memberIndex) add(l leafIndex, ln *LeafNode) {
	if o, ok := m.sig[string(ln.SignatureKey)]; ok && o != l && m.dup == nil {
		m.dup = errLeaf(fmt.Sprintf("signature key of leaf %d already used by leaf %d", l, o))
	}
	if o, ok := m.enc[string(ln.EncryptionKey)]; ok && o != l && m.dup == nil {
		m.dup = errLeaf(fmt.Sprintf("encryption key of leaf %d already used by leaf %d", l, o))
	}
	m.sig[string(ln.SignatureKey)] = l
	m.enc[string(ln.EncryptionKey)] = l
	m.n++
	// Each listed type once: a short list (the usual one or two types) is
	// checked in place, a long one (a peer's choice) sorted, not quadratic.
	if creds := ln.Capabilities.Credentials; len(creds) <= 8 {
		for i, c := range creds {
			if !slices.Contains(creds[:i], c) {
				m.supports[c]++
			}
		}
	} else {
		for _, c := range slices.Compact(slices.Sorted(slices.Values(creds))) {
			m.supports[c]++
		}
	}
	m.inUse[ln.Credential.Type]++
}

// validateLeaf is the group-dependent leaf check of §7.3 for a leaf
// entering the tree at l (credential, capabilities, lifetime when
// required, credential type support by all members, unique keys). idx
// indexes the other members (nil: built from t).
func (g *Group) validateLeaf(t *ratchetTree, ln *LeafNode, l leafIndex, gcExt []Extension, checkLifetime bool, idx *memberIndex) error {
	if err := checkLeafCapabilities(ln, g.gc.CipherSuite); err != nil {
		return err
	}
	if err := g.suite.checkLeafKeys(ln); err != nil {
		return err
	}
	if err := leafSupports(ln, gcExt); err != nil {
		return err
	}
	if checkLifetime && ln.Source == LeafNodeSourceKeyPackage {
		now := g.cfg.now().Unix()
		if now < 0 || uint64(now) < ln.Lifetime.NotBefore || uint64(now) > ln.Lifetime.NotAfter {
			return errLeaf("lifetime does not contain now")
		}
	}
	if idx == nil {
		return checkAgainstMembers(t, ln, l)
	}
	if o, ok := idx.sig[string(ln.SignatureKey)]; ok && o != l {
		return errLeaf(fmt.Sprintf("signature key already used by leaf %d", o))
	}
	if o, ok := idx.enc[string(ln.EncryptionKey)]; ok && o != l {
		return errLeaf(fmt.Sprintf("encryption key already used by leaf %d", o))
	}
	self := 0
	if old := t.leaf(l); old != nil && idx.sig[string(old.SignatureKey)] == l {
		self = 1 // the leaf being replaced (or validated) is indexed too
	}
	if idx.supports[ln.Credential.Type] < idx.n-self {
		return errLeaf(fmt.Sprintf("not every member supports credential type %d", ln.Credential.Type))
	}
	for c, k := range idx.inUse {
		if k > 0 && !slices.Contains(ln.Capabilities.Credentials, c) {
			return errLeaf(fmt.Sprintf("leaf does not support credential type %d in use", c))
		}
	}
	return nil
}

func timeUnix(sec uint64) time.Time {
	if sec > 1<<62 {
		sec = 1 << 62
	}
	return time.Unix(int64(sec), 0)
}

// checkAgainstMembers is the linear form of the memberIndex checks, for
// validating one leaf without building an index.
func checkAgainstMembers(t *ratchetTree, ln *LeafNode, l leafIndex) error {
	var err error
	t.members(func(m leafIndex, o *LeafNode) {
		if err != nil || m == l {
			return
		}
		switch {
		case bytes.Equal(o.SignatureKey, ln.SignatureKey):
			err = errLeaf(fmt.Sprintf("signature key already used by leaf %d", m))
		case bytes.Equal(o.EncryptionKey, ln.EncryptionKey):
			err = errLeaf(fmt.Sprintf("encryption key already used by leaf %d", m))
		case !slices.Contains(o.Capabilities.Credentials, ln.Credential.Type):
			err = errLeaf(fmt.Sprintf("leaf %d does not support credential type %d", m, ln.Credential.Type))
		case !slices.Contains(ln.Capabilities.Credentials, o.Credential.Type):
			err = errLeaf(fmt.Sprintf("leaf does not support credential type %d of leaf %d", o.Credential.Type, m))
		}
	})
	return err
}

// forgetEpochSecrets wipes the secrets of a left epoch except its
// sender-data secret, which the kept past epoch still uses (forward
// secrecy: the old init secret and exporter are gone once the next epoch
// is derived).
func (g *Group) forgetEpochSecrets(old *EpochSecrets) {
	if old == nil || old == g.es {
		return
	}
	for _, s := range old.ptrs() {
		if *s != old.SenderDataSecret {
			s.Wipe()
		}
	}
}

// Wipe zeroes every secret and private key the group holds (call it when
// the group is deleted; a Group is unusable afterwards).
func (g *Group) Wipe() {
	if g.es != nil {
		g.es.Wipe()
	}
	if g.st != nil {
		g.st.Wipe()
	}
	for _, p := range g.past {
		p.wipe()
	}
	for _, r := range g.resumption {
		r.psk.Wipe()
	}
	for _, k := range g.keys {
		k.priv.Wipe()
	}
	for _, k := range g.updateKeys {
		k.priv.Wipe()
	}
	g.sigPriv = SignaturePrivateKey{}
	g.pending = nil
}

// String describes the group without any secret.
func (g *Group) String() string {
	return fmt.Sprintf("mls.Group{group=%x epoch=%d leaf=%d members=%d}", g.gc.GroupID, g.gc.Epoch, g.own, len(g.Members()))
}

// LogValue implements slog.LogValuer without any secret.
func (g *Group) LogValue() slog.Value {
	return slog.GroupValue(slog.String("group", fmt.Sprintf("%x", g.gc.GroupID)), slog.Uint64("epoch", g.gc.Epoch), slog.Uint64("leaf", uint64(g.own)))
}
