package mls

import (
	"bytes"
	"fmt"
	"slices"
)

// Receiving and sending messages in a group.

// MessageKind says what ProcessMessage found.
type MessageKind uint8

// Message kinds.
const (
	KindApplication MessageKind = iota + 1
	KindProposal
	KindCommit
)

// Processed is the result of ProcessMessage.
type Processed struct {
	Kind MessageKind
	// Epoch the message was sent in.
	Epoch uint64
	// Sender of the message.
	Sender Sender
	// SenderIdentity is the sender's credential identity (members).
	SenderIdentity []byte
	// AuthenticatedData is the message's unencrypted associated data.
	AuthenticatedData []byte
	// ApplicationData is the plaintext of an application message.
	ApplicationData []byte
	// Proposal is the content of a proposal message (now cached for the
	// next commit).
	Proposal *Proposal
	// For commits: the members added (by Add proposals, and the joiner
	// of an external commit), removed and updated (leaf indices), and
	// whether this client was removed.
	Added, Removed, Updated []uint32
	SelfRemoved             bool
	// OwnCommit is set when the message was this client's pending commit
	// (echoed by the server), now merged.
	OwnCommit bool
}

// Protect encrypts application data as a PrivateMessage MLSMessage with
// the next key of this member's application ratchet.
func (g *Group) Protect(plaintext, authenticatedData []byte) ([]byte, error) {
	if !g.Active() {
		return nil, fmt.Errorf("%w: group is no longer active", ErrNotMember)
	}
	content := &FramedContent{
		GroupID: g.gc.GroupID, Epoch: g.gc.Epoch, Sender: Sender{Type: SenderTypeMember, LeafIndex: uint32(g.own)},
		AuthenticatedData: authenticatedData, ContentType: ContentTypeApplication, ApplicationData: plaintext,
	}
	ac, err := g.suite.SignContent(WireFormatPrivateMessage, content, &g.gc, g.sigPriv)
	if err != nil {
		return nil, err
	}
	return g.frame(ac)
}

// Propose sends a proposal (for an Update of our own leaf, see
// UpdateProposal) and caches it so a later commit, by anyone, can include
// it by reference.
func (g *Group) Propose(p *Proposal, authenticatedData []byte) ([]byte, error) {
	if !g.Active() {
		return nil, fmt.Errorf("%w: group is no longer active", ErrNotMember)
	}
	wf := WireFormatPrivateMessage
	if g.cfg.PublicHandshake {
		wf = WireFormatPublicMessage
	}
	self := Sender{Type: SenderTypeMember, LeafIndex: uint32(g.own)}
	if p == nil || p.variant(false) == nil {
		return nil, fmt.Errorf("%w: proposal without content", ErrInvalidArgument)
	}
	content := &FramedContent{GroupID: g.gc.GroupID, Epoch: g.gc.Epoch, Sender: self, AuthenticatedData: authenticatedData,
		ContentType: ContentTypeProposal, Proposal: p}
	ac, err := g.suite.SignContent(wf, content, &g.gc, g.sigPriv)
	if err != nil {
		return nil, err
	}
	if err := g.cacheProposal(ac); err != nil {
		return nil, err
	}
	msg, err := g.frame(ac)
	if err != nil {
		return nil, err
	}
	g.ownProposals = append(g.ownProposals, msg)
	return msg, nil
}

// UpdateProposal returns an Update proposal replacing this member's leaf
// with a fresh encryption key. The new private key is kept until the
// epoch changes.
func (g *Group) UpdateProposal() (*Proposal, error) {
	priv, pub, err := g.suite.GenerateHPKEKey()
	if err != nil {
		return nil, err
	}
	ln := *g.tree.leaf(g.own)
	ln.EncryptionKey = pub
	ln.Source = LeafNodeSourceUpdate
	ln.Lifetime = Lifetime{}
	ln.ParentHash = nil
	if err := g.suite.SignLeafNode(&ln, g.gc.GroupID, uint32(g.own), g.sigPriv); err != nil {
		return nil, err
	}
	g.updateKeys = append(g.updateKeys, nodeKey{priv, pub})
	return &Proposal{Type: ProposalTypeUpdate, Update: &Update{LeafNode: ln}}, nil
}

// cacheProposal validates what can be checked of a proposal alone and
// remembers it for commits by reference.
func (g *Group) cacheProposal(ac *AuthenticatedContent) error {
	p := ac.Content.Proposal
	switch p.Type {
	case ProposalTypeExternalInit:
		return fmt.Errorf("%w: ExternalInit sent as a proposal", ErrInvalidProposal)
	case ProposalTypeUpdate:
		if ac.Content.Sender.Type != SenderTypeMember {
			return fmt.Errorf("%w: Update from a non-member", ErrInvalidProposal)
		}
		if err := g.checkUpdateLeaf(g.tree, leafIndex(ac.Content.Sender.LeafIndex), &p.Update.LeafNode, g.gc.Extensions); err != nil {
			return err
		}
	case ProposalTypeAdd:
		if err := g.checkAddKeyPackage(&p.Add.KeyPackage, false); err != nil {
			return err
		}
	case ProposalTypeReInit:
		if err := g.cfg.checkSuiteChange(g.gc.CipherSuite, p.ReInit.CipherSuite); err != nil {
			return err
		}
	}
	ref, err := g.suite.ProposalRef(ac)
	if err != nil {
		return err
	}
	g.proposals = append(g.proposals, cachedProposal{ref: ref, proposal: *p, sender: ac.Content.Sender})
	return nil
}

// ProcessMessage handles a received MLSMessage: an application message
// (current or a kept past epoch), a proposal (cached for the next
// commit) or a commit (the group moves to the next epoch; on any error it
// is unchanged). Messages of other groups fail with ErrWrongGroup, of
// dropped epochs with ErrStaleEpoch, of later epochs with ErrFutureEpoch.
func (g *Group) ProcessMessage(raw []byte) (*Processed, error) {
	if g.pending != nil && bytes.Equal(raw, g.pending.Message) {
		p := g.pending
		if err := g.MergePendingCommit(p); err != nil {
			return nil, err
		}
		return &Processed{Kind: KindCommit, Epoch: p.base, Sender: Sender{Type: SenderTypeMember, LeafIndex: uint32(g.own)}, OwnCommit: true, Added: p.Added}, nil
	}
	for _, o := range g.ownProposals {
		if bytes.Equal(o, raw) {
			return &Processed{Kind: KindProposal, Epoch: g.gc.Epoch, Sender: Sender{Type: SenderTypeMember, LeafIndex: uint32(g.own)}}, nil
		}
	}
	var m MLSMessage
	if err := m.Unmarshal(raw); err != nil {
		return nil, err
	}
	var groupID []byte
	var epoch uint64
	switch m.WireFormat {
	case WireFormatPublicMessage:
		groupID, epoch = m.PublicMessage.Content.GroupID, m.PublicMessage.Content.Epoch
	case WireFormatPrivateMessage:
		groupID, epoch = m.PrivateMessage.GroupID, m.PrivateMessage.Epoch
	default:
		return nil, fmt.Errorf("%w: wire format %d is not a group message", ErrInvalidMessage, m.WireFormat)
	}
	if !bytes.Equal(groupID, g.gc.GroupID) {
		return nil, ErrWrongGroup
	}
	switch {
	case epoch > g.gc.Epoch:
		return nil, fmt.Errorf("%w: message for epoch %d, group at %d", ErrFutureEpoch, epoch, g.gc.Epoch)
	case epoch < g.gc.Epoch:
		return g.processPast(&m, epoch)
	}
	var ac *AuthenticatedContent
	var err error
	if m.WireFormat == WireFormatPrivateMessage {
		ac, err = g.suite.UnprotectPrivate(m.PrivateMessage, &g.gc, g.st, g.es.SenderDataSecret, func(s Sender) (SignaturePublicKey, error) {
			return g.senderKey(g.tree, &g.gc, s)
		})
	} else {
		pm := m.PublicMessage
		ac, err = g.suite.UnprotectPublic(pm, &g.gc, g.es.MembershipKey, func(s Sender) (SignaturePublicKey, error) {
			switch s.Type {
			case SenderTypeNewMemberCommit:
				if pm.Content.ContentType != ContentTypeCommit || pm.Content.Commit.Path == nil {
					return nil, fmt.Errorf("%w: new_member_commit without a path", ErrInvalidMessage)
				}
				return pm.Content.Commit.Path.LeafNode.SignatureKey, nil
			case SenderTypeNewMemberProposal:
				if pm.Content.ContentType != ContentTypeProposal || pm.Content.Proposal.Type != ProposalTypeAdd {
					return nil, fmt.Errorf("%w: new_member_proposal that is not an Add", ErrInvalidMessage)
				}
				return pm.Content.Proposal.Add.KeyPackage.LeafNode.SignatureKey, nil
			}
			return g.senderKey(g.tree, &g.gc, s)
		})
	}
	if err != nil {
		return nil, err
	}
	out := &Processed{Epoch: epoch, Sender: ac.Content.Sender, AuthenticatedData: ac.Content.AuthenticatedData}
	if ac.Content.Sender.Type == SenderTypeMember {
		if ln := g.tree.leaf(leafIndex(ac.Content.Sender.LeafIndex)); ln != nil {
			out.SenderIdentity = ln.Credential.Identity
		}
	}
	switch ac.Content.ContentType {
	case ContentTypeApplication:
		out.Kind = KindApplication
		out.ApplicationData = ac.Content.ApplicationData
		return out, nil
	case ContentTypeProposal:
		if ac.Content.Sender.Type == SenderTypeMember && ac.Content.Sender.LeafIndex == uint32(g.own) {
			return nil, fmt.Errorf("%w: own proposal echoed", ErrInvalidMessage)
		}
		if err := g.cacheProposal(ac); err != nil {
			return nil, err
		}
		out.Kind = KindProposal
		out.Proposal = ac.Content.Proposal
		return out, nil
	}
	out.Kind = KindCommit
	if ac.Content.Sender.Type == SenderTypeMember && ac.Content.Sender.LeafIndex == uint32(g.own) {
		return nil, fmt.Errorf("%w: own commit that is not pending here", ErrInvalidCommit)
	}
	next, a, err := g.processCommit(ac)
	if err != nil {
		return nil, err
	}
	for _, m := range a.added {
		out.Added = append(out.Added, uint32(m.leaf))
	}
	if a.joined {
		// An external joiner is a new member too, though no Add names it.
		out.Added = append(out.Added, uint32(a.joiner))
	}
	for _, l := range a.removed {
		out.Removed = append(out.Removed, uint32(l))
	}
	for _, l := range a.updated {
		out.Updated = append(out.Updated, uint32(l))
	}
	out.SelfRemoved = a.ownGone
	old := g.es
	*g = *next
	g.forgetEpochSecrets(old)
	return out, nil
}

// processPast decrypts a late application message of a kept past epoch.
func (g *Group) processPast(m *MLSMessage, epoch uint64) (*Processed, error) {
	if m.WireFormat != WireFormatPrivateMessage || m.PrivateMessage.ContentType != ContentTypeApplication {
		return nil, fmt.Errorf("%w: handshake message for past epoch %d", ErrStaleEpoch, epoch)
	}
	for _, p := range g.past {
		if p.gc.Epoch != epoch {
			continue
		}
		ac, err := g.suite.UnprotectPrivate(m.PrivateMessage, &p.gc, p.st, p.senderData, func(s Sender) (SignaturePublicKey, error) {
			return g.senderKey(p.tree, &p.gc, s)
		})
		if err != nil {
			return nil, err
		}
		out := &Processed{Kind: KindApplication, Epoch: epoch, Sender: ac.Content.Sender, AuthenticatedData: ac.Content.AuthenticatedData,
			ApplicationData: ac.Content.ApplicationData}
		if ln := p.tree.leaf(leafIndex(ac.Content.Sender.LeafIndex)); ln != nil {
			out.SenderIdentity = ln.Credential.Identity
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: epoch %d no longer kept (group at %d)", ErrStaleEpoch, epoch, g.gc.Epoch)
}

// processCommit validates and applies a commit from another member or
// an external joiner (§12.4.2) and returns the next state.
func (g *Group) processCommit(ac *AuthenticatedContent) (*Group, *applied, error) {
	c := ac.Content.Commit
	sender := ac.Content.Sender
	external := sender.Type == SenderTypeNewMemberCommit
	if !external && sender.Type != SenderTypeMember {
		return nil, nil, fmt.Errorf("%w: commit from sender type %d", ErrInvalidCommit, sender.Type)
	}
	if external && ac.WireFormat != WireFormatPublicMessage {
		return nil, nil, fmt.Errorf("%w: external commit not in a PublicMessage", ErrInvalidCommit)
	}
	if external {
		for i := range c.Proposals {
			if c.Proposals[i].Type != ProposalOrRefTypeProposal {
				return nil, nil, fmt.Errorf("%w: external commit with a proposal by reference", ErrInvalidCommit)
			}
		}
	}
	ps, err := g.resolveProposals(c, sender)
	if err != nil {
		return nil, nil, err
	}
	var ownUpdate *nodeKey
	for _, p := range ps {
		if p.sender.Type == SenderTypeMember && p.sender.LeafIndex == uint32(g.own) && p.p.Type == ProposalTypeUpdate {
			// Our own Update is committed: its private key becomes our leaf key.
			for i, k := range g.updateKeys {
				if bytes.Equal(k.pub, p.p.Update.LeafNode.EncryptionKey) {
					ownUpdate = &g.updateKeys[i]
				}
			}
			if ownUpdate == nil {
				return nil, nil, fmt.Errorf("%w: commit of an Update of ours whose key we lack", ErrInvalidCommit)
			}
		}
	}
	a, err := g.validateAndApply(ps, sender, external)
	if err != nil {
		return nil, nil, err
	}
	if pathRequired(ps) && c.Path == nil {
		return nil, nil, fmt.Errorf("%w: path required", ErrInvalidCommit)
	}
	next := g.cloneWithTree(a.tree)
	next.updateKeys = nil
	if ownUpdate != nil {
		next.keys[g.own.node()] = *ownUpdate
	}
	newGC := next.gc
	newGC.Epoch = g.gc.Epoch + 1
	newGC.Extensions = a.ext
	committer := leafIndex(sender.LeafIndex)
	if external {
		committer = next.tree.leftmostBlankLeaf()
		if uint32(committer) >= uint32(next.tree.leafCount()) {
			next.tree.extend()
		}
		a.joiner, a.joined = committer, true
		if c.Path == nil {
			return nil, nil, fmt.Errorf("%w: external commit without path", ErrInvalidCommit)
		}
		if len(a.removed) == 1 {
			if prior := g.tree.leaf(a.removed[0]); prior == nil || !bytes.Equal(prior.Credential.Identity, c.Path.LeafNode.Credential.Identity) {
				return nil, nil, fmt.Errorf("%w: external commit removes another client", ErrInvalidCommit)
			}
		}
		// The joiner's leaf is its path leaf; merge needs an old leaf.
		next.tree.setLeaf(committer, &c.Path.LeafNode)
		if err := g.validateLeaf(next.tree, &c.Path.LeafNode, committer, a.ext, false, nil); err != nil {
			return nil, nil, fmt.Errorf("%w: external joiner leaf: %w", ErrInvalidCommit, err)
		}
		tmp := c.Path.LeafNode
		tmp.EncryptionKey = nil
		next.tree.setLeaf(committer, &tmp)
	}
	var exclude []leafIndex
	for _, m := range a.added {
		exclude = append(exclude, m.leaf)
	}
	var commitSecret Secret
	if c.Path != nil {
		if !external {
			if err := g.validateLeaf(next.tree, &c.Path.LeafNode, committer, a.ext, false, nil); err != nil {
				return nil, nil, fmt.Errorf("%w: path leaf: %w", ErrInvalidCommit, err)
			}
		}
		fdp, err := next.tree.mergeUpdatePath(committer, c.Path, g.gc.GroupID, exclude)
		if err != nil {
			return nil, nil, err
		}
		newGC.TreeHash = next.tree.rootHash()
		if !a.ownGone {
			gcb, err := newGC.Marshal()
			if err != nil {
				return nil, nil, err
			}
			_, cs, keys, err := next.tree.decryptPath(committer, g.own, fdp, c.Path, gcb, next.keys, exclude)
			if err != nil {
				return nil, nil, err
			}
			commitSecret = cs
			for x, k := range keys {
				next.keys[x] = k
			}
		}
	} else {
		newGC.TreeHash = next.tree.rootHash()
	}
	next.keys.prune(next.tree)
	if a.ownGone {
		// We cannot derive the next epoch; keep the old one readable.
		next = g.clone()
		next.removed = true
		next.proposals = g.proposals
		return next, a, nil
	}
	psks, err := g.resolvePSKs(a.psks, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	var initSecret *Secret
	if external {
		is, err := g.externalInitSecret(a.extInit)
		if err != nil {
			return nil, nil, err
		}
		initSecret = &is
	}
	joiner, _, err := next.advance(g, ac, &newGC, commitSecret, psks, initSecret)
	if err != nil {
		return nil, nil, err
	}
	joiner.Wipe()
	next.finishEpoch(g, a)
	next.reinit = a.reinit
	return next, a, nil
}

// externalInitSecret recovers the init secret of an external commit
// from its ExternalInit with the epoch's external private key (§8.3).
func (g *Group) externalInitSecret(ei *ExternalInit) (Secret, error) {
	priv, _, err := g.es.ExternalKeyPair()
	if err != nil {
		return Secret{}, err
	}
	defer priv.Wipe()
	return g.suite.hpkeExportReceive(priv, ei.KEMOutput)
}

// memberIndexByIdentity finds a member leaf by credential identity.
func (g *Group) memberIndexByIdentity(id []byte) (uint32, bool) {
	var out uint32
	ok := false
	g.tree.members(func(l leafIndex, ln *LeafNode) {
		if !ok && bytes.Equal(ln.Credential.Identity, id) {
			out, ok = uint32(l), true
		}
	})
	return out, ok
}

// MemberByIdentity returns the leaf index of the member with this
// credential identity.
func (g *Group) MemberByIdentity(id []byte) (uint32, bool) {
	return g.memberIndexByIdentity(slices.Clone(id))
}

// PendingProposals is the number of proposals received (or sent) in this
// epoch and not yet committed. RFC 9420 §12.4: a member that has seen
// valid proposals should commit them before sending application data.
func (g *Group) PendingProposals() int { return len(g.proposals) }
