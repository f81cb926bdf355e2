package mls

import (
	"bytes"
	"fmt"
	"slices"
)

// External joins (RFC 9420 §12.4.3.2), external proposals (§12.1.8),
// and the groups that continue another: ReInit (§11.2) and branches
// (§11.3).

// ExternalJoinOptions tune JoinExternal.
type ExternalJoinOptions struct {
	// RatchetTree is the tree if the GroupInfo lacks the extension.
	RatchetTree RatchetTree
	// EncodedTree is the same given as the ratchet_tree extension's data
	// (as a server keeps it beside the GroupInfo; PendingCommit.Tree),
	// used when RatchetTree is empty. Either is checked against the
	// GroupContext's tree hash (ErrTreeHashMismatch).
	EncodedTree []byte
	// RemovePrior removes the member with the same credential identity
	// (a device rejoining after losing its state).
	RemovePrior bool
	// PSKs are external PSK ids to inject (looked up in Config.PSKs).
	PSKs [][]byte
	// KeyPackage options for the joiner's leaf (capabilities, extensions).
	Leaf KeyPackageOptions
	// AuthenticatedData is sent with the commit.
	AuthenticatedData []byte
}

func decodeGroupInfo(raw []byte) (*GroupInfo, error) {
	var m MLSMessage
	if err := m.Unmarshal(raw); err == nil {
		if m.WireFormat != WireFormatGroupInfo {
			return nil, fmt.Errorf("%w: wire format %d, want GroupInfo", ErrInvalidMessage, m.WireFormat)
		}
		return m.GroupInfo, nil
	}
	gi := new(GroupInfo)
	if err := gi.Unmarshal(raw); err != nil {
		return nil, err
	}
	return gi, nil
}

// JoinExternal joins a group by external commit from its GroupInfo
// (which must carry external_pub). It returns the new member's group
// state and the commit (an MLSMessage PublicMessage) to send; if the
// server refuses the commit, discard the state and retry with a fresh
// GroupInfo.
func JoinExternal(cfg Config, groupInfo []byte, identity []byte, sigPriv SignaturePrivateKey, opts ExternalJoinOptions) (*Group, []byte, error) {
	gi, err := decodeGroupInfo(groupInfo)
	if err != nil {
		return nil, nil, err
	}
	suite := gi.GroupContext.CipherSuite
	if !cfg.allowed(suite) {
		return nil, nil, fmt.Errorf("%w: GroupInfo for suite %d outside the allowlist", ErrDowngrade, suite)
	}
	s, err := Suite(suite)
	if err != nil {
		return nil, nil, err
	}
	if sigPriv.suite != suite {
		return nil, nil, fmt.Errorf("%w: signature key of suite %d for a group of suite %d", ErrInvalidKey, sigPriv.suite, suite)
	}
	xp := findExtension(gi.Extensions, ExtensionTypeExternalPub)
	if xp == nil {
		return nil, nil, fmt.Errorf("%w: GroupInfo without external_pub", ErrInvalidMessage)
	}
	d := newDecoder(xp.Data)
	extPub := d.opaque()
	if err := d.finish(); err != nil {
		return nil, nil, fmt.Errorf("external_pub: %w", err)
	}
	old := &Group{cfg: cfg, suite: s, sigPriv: sigPriv}
	supplied := opts.RatchetTree
	if len(supplied) == 0 && len(opts.EncodedTree) > 0 && findExtension(gi.Extensions, ExtensionTypeRatchetTree) == nil {
		if err := supplied.Unmarshal(opts.EncodedTree); err != nil {
			return nil, nil, fmt.Errorf("ratchet tree given beside the GroupInfo: %w", err)
		}
	}
	tree, err := old.joinTree(gi, supplied)
	if err != nil {
		return nil, nil, err
	}
	old.tree = tree
	old.gc = gi.GroupContext
	if old.interim, err = s.InterimTranscriptHash(gi.GroupContext.ConfirmedTranscriptHash, gi.ConfirmationTag); err != nil {
		return nil, nil, err
	}
	old.keys = nodeKeys{}
	kemOutput, initSecret, err := s.hpkeExportSend(extPub)
	if err != nil {
		return nil, nil, err
	}
	defer initSecret.Wipe()
	props := []Proposal{{Type: ProposalTypeExternalInit, ExternalInit: &ExternalInit{KEMOutput: kemOutput}}}
	if opts.RemovePrior {
		if l, ok := old.memberIndexByIdentity(identity); ok {
			props = append(props, Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: l}})
		}
	}
	for _, id := range opts.PSKs {
		props = append(props, Proposal{Type: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: old.ExternalPSK(id)}})
	}
	commit := &Commit{}
	ps := make([]committedProposal, len(props))
	self := Sender{Type: SenderTypeNewMemberCommit}
	for i := range props {
		commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeProposal, Proposal: &props[i]})
		ps[i] = committedProposal{p: &props[i], sender: self}
	}
	a, err := old.validateAndApply(ps, self, true)
	if err != nil {
		return nil, nil, err
	}
	lo := opts.Leaf
	lo.Now = cfg.now()
	b, err := GenerateKeyPackage(suite, identity, sigPriv, lo)
	if err != nil {
		return nil, nil, err
	}
	b.InitPriv.Wipe()
	b.EncryptionPriv.Wipe()
	next := old.clone()
	next.tree = a.tree
	own := next.tree.leftmostBlankLeaf()
	if uint32(own) >= uint32(next.tree.leafCount()) {
		next.tree.extend()
	}
	next.own = own
	newGC := next.gc
	newGC.Epoch++
	newGC.Extensions = a.ext
	tmpl := b.KeyPackage.LeafNode
	res, err := next.tree.createUpdatePath(own, &tmpl, gi.GroupContext.GroupID, sigPriv, func(th []byte) (*GroupContext, error) {
		c := newGC
		c.TreeHash = th
		return &c, nil
	}, nil)
	if err != nil {
		return nil, nil, err
	}
	commit.Path = res.path
	next.keys = res.keys
	newGC.TreeHash = next.tree.rootHash()
	content := &FramedContent{GroupID: gi.GroupContext.GroupID, Epoch: gi.GroupContext.Epoch, Sender: self,
		AuthenticatedData: opts.AuthenticatedData, ContentType: ContentTypeCommit, Commit: commit}
	ac, err := s.SignContent(WireFormatPublicMessage, content, &old.gc, sigPriv)
	if err != nil {
		return nil, nil, err
	}
	psks, err := old.resolvePSKs(a.psks, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	joiner, _, err := next.advance(old, ac, &newGC, res.commitSecret, psks, &initSecret)
	if err != nil {
		return nil, nil, err
	}
	joiner.Wipe()
	ac.Auth.ConfirmationTag = next.confTag
	next.past = nil
	next.resumption = nil
	next.rememberResumption()
	pm, err := s.ProtectPublic(ac, &old.gc, Secret{})
	if err != nil {
		return nil, nil, err
	}
	msg, err := (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}).Marshal()
	if err != nil {
		return nil, nil, err
	}
	return next, msg, nil
}

// NewMemberAddProposal returns an MLSMessage PublicMessage in which the
// owner of bundle proposes its own addition (sender new_member_proposal)
// to the group of a GroupInfo.
func NewMemberAddProposal(groupInfo []byte, bundle *KeyPackageBundle) ([]byte, error) {
	gi, err := decodeGroupInfo(groupInfo)
	if err != nil {
		return nil, err
	}
	p := &Proposal{Type: ProposalTypeAdd, Add: &Add{KeyPackage: bundle.KeyPackage}}
	return signExternal(&gi.GroupContext, Sender{Type: SenderTypeNewMemberProposal}, p, bundle.SignaturePriv)
}

// ExternalProposal returns an MLSMessage PublicMessage with proposal p
// signed by the external sender at index senderIndex of the group's
// external_senders extension (gc is the group's current context, e.g.
// from its GroupInfo).
func ExternalProposal(gc *GroupContext, senderIndex uint32, p *Proposal, sigPriv SignaturePrivateKey) ([]byte, error) {
	return signExternal(gc, Sender{Type: SenderTypeExternal, SenderIndex: senderIndex}, p, sigPriv)
}

func signExternal(gc *GroupContext, sender Sender, p *Proposal, sigPriv SignaturePrivateKey) ([]byte, error) {
	s, err := Suite(gc.CipherSuite)
	if err != nil {
		return nil, err
	}
	content := &FramedContent{GroupID: gc.GroupID, Epoch: gc.Epoch, Sender: sender, ContentType: ContentTypeProposal, Proposal: p}
	ac, err := s.SignContent(WireFormatPublicMessage, content, gc, sigPriv)
	if err != nil {
		return nil, err
	}
	pm, err := s.ProtectPublic(ac, gc, Secret{})
	if err != nil {
		return nil, err
	}
	return (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}).Marshal()
}

// GroupInfoContext decodes a GroupInfo MLSMessage and returns its
// GroupContext (unverified).
func GroupInfoContext(groupInfo []byte) (*GroupContext, error) {
	gi, err := decodeGroupInfo(groupInfo)
	if err != nil {
		return nil, err
	}
	return &gi.GroupContext, nil
}

// SubgroupOptions tune ReInitGroup and Branch.
type SubgroupOptions struct {
	// NoPath omits the UpdatePath from the new group's first commit.
	NoPath bool
	// OmitRatchetTree leaves the ratchet_tree extension out of the Welcome.
	OmitRatchetTree bool
}

// ReInitGroup creates the group that replaces g after a commit with a
// ReInit (§11.2): the ReInit's id, suite and extensions, this client's
// new signature key for that suite (sigPriv, same suite as g if
// unchanged), the other members' KeyPackages for the new suite, and a
// resumption PSK of usage reinit binding it to g's last epoch. It returns
// the new group and the Welcome.
func (g *Group) ReInitGroup(sigPriv SignaturePrivateKey, kps []*KeyPackage, opts SubgroupOptions) (*Group, []byte, error) {
	r := g.reinit
	if r == nil {
		return nil, nil, fmt.Errorf("%w: no ReInit was committed", ErrInvalidArgument)
	}
	if err := g.cfg.checkSuiteChange(g.gc.CipherSuite, r.CipherSuite); err != nil {
		return nil, nil, err
	}
	return g.subgroup(r.GroupID, r.CipherSuite, r.Extensions, ResumptionPSKUsageReInit, sigPriv, kps, opts)
}

// Branch creates a new group with some of g's members (§11.3), linked to
// g's current epoch by a resumption PSK of usage branch.
func (g *Group) Branch(groupID []byte, ext []Extension, kps []*KeyPackage, opts SubgroupOptions) (*Group, []byte, error) {
	return g.subgroup(groupID, g.gc.CipherSuite, ext, ResumptionPSKUsageBranch, g.sigPriv, kps, opts)
}

func (g *Group) subgroup(groupID []byte, suite CipherSuiteID, ext []Extension, usage ResumptionPSKUsage, sigPriv SignaturePrivateKey, kps []*KeyPackage, opts SubgroupOptions) (*Group, []byte, error) {
	own := g.tree.leaf(g.own)
	caps := own.Capabilities
	if !slices.Contains(caps.CipherSuites, suite) {
		caps.CipherSuites = append(slices.Clone(caps.CipherSuites), suite)
	}
	ng, err := CreateGroup(g.cfg, groupID, suite, own.Credential.Identity, sigPriv, GroupOptions{Extensions: ext, Capabilities: &caps, LeafExtensions: own.Extensions})
	if err != nil {
		return nil, nil, err
	}
	// The new group may look up g's resumption PSKs.
	ng.resumptionFrom = g
	psk := PreSharedKeyID{Type: PSKTypeResumption, Usage: usage, PSKGroupID: g.GroupID(), PSKEpoch: g.gc.Epoch, PSKNonce: ng.pskNonce()}
	pc, err := ng.commit(CommitOptions{Add: kps, NoPath: opts.NoPath, OmitRatchetTree: opts.OmitRatchetTree,
		Proposals: []Proposal{{Type: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: psk}}}}, usage)
	if err != nil {
		return nil, nil, err
	}
	if err := ng.MergePendingCommit(pc); err != nil {
		return nil, nil, err
	}
	ng.resumptionFrom = nil
	return ng, pc.Welcome, nil
}

// JoinSubgroup joins a group created by ReInitGroup or Branch from old:
// it checks the Welcome names old's resumption PSK, that the suite is not
// a downgrade, and (for a branch) that every member was a member of old.
func JoinSubgroup(old *Group, welcome []byte, bundle *KeyPackageBundle, opts JoinOptions) (*Group, error) {
	opts.ResumptionGroup = old
	g, err := JoinFromWelcome(old.cfg, welcome, bundle, opts)
	if err != nil {
		return nil, err
	}
	if g.gc.Epoch != 1 {
		return nil, fmt.Errorf("%w: subgroup Welcome at epoch %d, want 1", ErrInvalidMessage, g.gc.Epoch)
	}
	if err := old.cfg.checkSuiteChange(old.gc.CipherSuite, g.gc.CipherSuite); err != nil {
		return nil, err
	}
	if old.reinit == nil {
		var bad error
		g.tree.members(func(l leafIndex, ln *LeafNode) {
			if _, ok := old.memberIndexByIdentity(ln.Credential.Identity); !ok && bad == nil {
				bad = fmt.Errorf("%w: branch member %q not in the old group", ErrInvalidMessage, ln.Credential.Identity)
			}
		})
		if bad != nil {
			return nil, bad
		}
		if g.gc.CipherSuite != old.gc.CipherSuite {
			return nil, fmt.Errorf("%w: branch changes the suite", ErrInvalidMessage)
		}
	} else if !bytes.Equal(g.gc.GroupID, old.reinit.GroupID) || g.gc.CipherSuite != old.reinit.CipherSuite {
		return nil, fmt.Errorf("%w: Welcome does not match the ReInit", ErrInvalidMessage)
	}
	return g, nil
}

func (s *ExternalSender) encode(e *encoder) {
	e.opaque(s.SignatureKey)
	s.Credential.encode(e)
}

func (s *ExternalSender) decode(d *decoder) {
	s.SignatureKey = d.opaque()
	s.Credential.decode(d)
}

// Marshal returns the TLS encoding of one ExternalSender.
func (s *ExternalSender) Marshal() ([]byte, error) { return marshal(s) }

// Unmarshal decodes b as one ExternalSender.
func (s *ExternalSender) Unmarshal(b []byte) error { return unmarshal(b, s) }

// ExternalSenders returns the external_senders of the group's context.
func (g *Group) ExternalSenders() ([]ExternalSender, error) { return externalSenders(g.gc.Extensions) }

// GroupInfoWithOptions returns the signed MLSMessage GroupInfo with or
// without the ratchet_tree extension (external_pub always included).
func (g *Group) GroupInfoWithOptions(withTree bool) ([]byte, error) {
	gi, err := g.groupInfo(withTree, true)
	if err != nil {
		return nil, err
	}
	return (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatGroupInfo, GroupInfo: gi}).Marshal()
}

// RatchetTree returns the ratchet tree of the epoch the commit moves to.
func (p *PendingCommit) RatchetTree() RatchetTree { return p.next.RatchetTree() }

// EpochAuthenticator returns the epoch authenticator of the epoch the
// commit moves to.
func (p *PendingCommit) EpochAuthenticator() []byte { return p.next.EpochAuthenticator() }
