package mls

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"slices"
)

// Proposals and commits: resolving a commit's proposal list, validating
// it (RFC 9420 §12.1, §12.2), applying it (§12.3), creating and
// processing commits (§12.4.1, §12.4.2).

// ProposalRef returns RefHash("MLS 1.0 Proposal Reference", ac).
func (s *CipherSuite) ProposalRef(ac *AuthenticatedContent) ([]byte, error) {
	b, err := ac.Marshal()
	if err != nil {
		return nil, err
	}
	return s.RefHash("MLS 1.0 Proposal Reference", b)
}

// committedProposal is a proposal of a commit with its sender.
type committedProposal struct {
	p      *Proposal
	sender Sender
}

// resolveProposals turns a commit's ProposalOrRef list into proposals
// with senders, looking references up in the epoch's cache.
func (g *Group) resolveProposals(c *Commit, committer Sender) ([]committedProposal, error) {
	out := make([]committedProposal, 0, len(c.Proposals))
	for i := range c.Proposals {
		por := &c.Proposals[i]
		switch por.Type {
		case ProposalOrRefTypeProposal:
			if por.Proposal == nil || por.Proposal.variant(false) == nil {
				return nil, fmt.Errorf("%w: proposal without content", ErrInvalidProposal)
			}
			out = append(out, committedProposal{p: por.Proposal, sender: committer})
		case ProposalOrRefTypeReference:
			found := false
			for j := range g.proposals {
				if constantTimeEqual(g.proposals[j].ref, por.Reference) {
					out = append(out, committedProposal{p: &g.proposals[j].proposal, sender: g.proposals[j].sender})
					found = true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("%w: unknown proposal reference %x", ErrInvalidProposal, por.Reference)
			}
		default:
			return nil, fmt.Errorf("%w: proposal-or-ref type %d", ErrInvalidProposal, por.Type)
		}
	}
	return out, nil
}

// pathRequired is §12.4: no proposals, or any of update, remove,
// external_init, group_context_extensions.
func pathRequired(ps []committedProposal) bool {
	if len(ps) == 0 {
		return true
	}
	for _, p := range ps {
		switch p.p.Type {
		case ProposalTypeUpdate, ProposalTypeRemove, ProposalTypeExternalInit, ProposalTypeGroupContextExtensions:
			return true
		}
	}
	return false
}

// applied is the result of applying a proposal list.
type applied struct {
	tree     *ratchetTree
	ext      []Extension
	added    []addedMember
	psks     []PreSharedKeyID
	extInit  *ExternalInit
	reinit   *ReInit
	removed  []leafIndex
	ownGone  bool
	updated  []leafIndex
	extended bool
	// joiner is the leaf an external commit's sender takes (set by
	// processCommit when joined).
	joiner leafIndex
	joined bool
}

type addedMember struct {
	leaf leafIndex
	kp   *KeyPackage
}

// validateAndApply checks the proposal list (§12.1, §12.2) for a commit
// by committer (external if ext) and applies it to a copy of the tree
// (§12.3).
func (g *Group) validateAndApply(ps []committedProposal, committer Sender, external bool) (*applied, error) {
	s := g.suite
	a := &applied{tree: g.tree.clone(), ext: g.gc.Extensions}
	var (
		gce      *GroupContextExtensions
		touched  = map[leafIndex]bool{}
		addKeys  = map[string]bool{}
		pskSeen  [][]byte
		nExtInit int
		nRemove  int
	)
	committerLeaf := leafIndex(committer.LeafIndex)
	for _, cp := range ps {
		p := cp.p
		if external {
			switch p.Type {
			case ProposalTypeExternalInit, ProposalTypeRemove, ProposalTypePSK:
			default:
				return nil, fmt.Errorf("%w: proposal type %d in an external commit", ErrInvalidProposal, p.Type)
			}
		}
		if p.Type == ProposalTypeReInit && len(ps) != 1 {
			return nil, fmt.Errorf("%w: ReInit with other proposals", ErrInvalidProposal)
		}
		switch p.Type {
		case ProposalTypeGroupContextExtensions:
			if gce != nil {
				return nil, fmt.Errorf("%w: several GroupContextExtensions", ErrInvalidProposal)
			}
			gce = p.GroupContextExtensions
		case ProposalTypeUpdate:
			if cp.sender.Type != SenderTypeMember {
				return nil, fmt.Errorf("%w: Update from a non-member", ErrInvalidProposal)
			}
			if !external && cp.sender.LeafIndex == committer.LeafIndex {
				return nil, fmt.Errorf("%w: Update by the committer", ErrInvalidProposal)
			}
			l := leafIndex(cp.sender.LeafIndex)
			if touched[l] {
				return nil, fmt.Errorf("%w: several Update/Remove for leaf %d", ErrInvalidProposal, l)
			}
			touched[l] = true
		case ProposalTypeRemove:
			l := leafIndex(p.Remove.Removed)
			if !external && l == committerLeaf {
				return nil, fmt.Errorf("%w: Remove of the committer", ErrInvalidProposal)
			}
			if uint32(l) >= uint32(a.tree.leafCount()) || a.tree.leaf(l) == nil {
				return nil, fmt.Errorf("%w: Remove of blank leaf %d", ErrInvalidProposal, l)
			}
			if touched[l] {
				return nil, fmt.Errorf("%w: several Update/Remove for leaf %d", ErrInvalidProposal, l)
			}
			touched[l] = true
			nRemove++
		case ProposalTypeAdd:
			k := string(p.Add.KeyPackage.LeafNode.SignatureKey)
			if addKeys[k] {
				return nil, fmt.Errorf("%w: two Adds of the same client", ErrInvalidProposal)
			}
			addKeys[k] = true
		case ProposalTypePSK:
			id := &p.PreSharedKey.PSK
			raw, err := id.Marshal()
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalidProposal, err)
			}
			for _, o := range pskSeen {
				if bytes.Equal(o, raw) {
					return nil, fmt.Errorf("%w: PSK proposed twice", ErrInvalidProposal)
				}
			}
			pskSeen = append(pskSeen, raw)
			if id.Type == PSKTypeResumption && id.Usage != ResumptionPSKUsageApplication && id.Usage != g.allowUsage {
				return nil, fmt.Errorf("%w: resumption PSK of usage %d in a proposal", ErrInvalidProposal, id.Usage)
			}
			if len(id.PSKNonce) != s.Nh() {
				return nil, fmt.Errorf("%w: PSK nonce of %d bytes", ErrInvalidProposal, len(id.PSKNonce))
			}
			a.psks = append(a.psks, *id)
		case ProposalTypeReInit:
			r := p.ReInit
			if r.Version < g.gc.Version {
				return nil, fmt.Errorf("%w: ReInit to version %d", ErrDowngrade, r.Version)
			}
			if err := g.cfg.checkSuiteChange(g.gc.CipherSuite, r.CipherSuite); err != nil {
				return nil, err
			}
			a.reinit = r
		case ProposalTypeExternalInit:
			if !external {
				return nil, fmt.Errorf("%w: ExternalInit in a member commit", ErrInvalidProposal)
			}
			nExtInit++
			a.extInit = p.ExternalInit
		default:
			return nil, fmt.Errorf("%w: proposal type %d", ErrInvalidProposal, p.Type)
		}
	}
	if external && (nExtInit != 1 || nRemove > 1) {
		return nil, fmt.Errorf("%w: external commit needs one ExternalInit and at most one Remove", ErrInvalidProposal)
	}
	// Apply in the order of §12.3: extensions, updates, removes, adds.
	if gce != nil {
		a.ext = gce.Extensions
		if err := checkExtensionList(a.ext); err != nil {
			return nil, err
		}
	}
	for _, cp := range ps {
		if cp.p.Type != ProposalTypeUpdate {
			continue
		}
		l := leafIndex(cp.sender.LeafIndex)
		ln := &cp.p.Update.LeafNode
		if err := g.checkUpdateLeaf(a.tree, l, ln, a.ext); err != nil {
			return nil, err
		}
		a.tree.updateLeaf(l, ln)
		a.updated = append(a.updated, l)
	}
	for _, cp := range ps {
		if cp.p.Type != ProposalTypeRemove {
			continue
		}
		l := leafIndex(cp.p.Remove.Removed)
		a.tree.removeLeaf(l)
		a.removed = append(a.removed, l)
		if l == g.own && !external {
			a.ownGone = true
		}
	}
	if len(a.removed) > 0 {
		a.tree.truncate()
	}
	var idx *memberIndex
	for _, cp := range ps {
		if cp.p.Type != ProposalTypeAdd {
			continue
		}
		if idx == nil {
			idx = newMemberIndex(a.tree)
		}
		kp := &cp.p.Add.KeyPackage
		own := !external && committer.Type == SenderTypeMember && committer.LeafIndex == uint32(g.own)
		if err := g.checkAddKeyPackage(kp, own); err != nil {
			return nil, err
		}
		w := a.tree.leafCount()
		l := a.tree.addLeaf(&kp.LeafNode)
		if a.tree.leafCount() != w {
			a.extended = true
		}
		if err := g.validateLeaf(a.tree, &kp.LeafNode, l, a.ext, false, idx); err != nil {
			return nil, fmt.Errorf("%w: Add: %w", ErrInvalidProposal, err)
		}
		idx.add(l, &kp.LeafNode)
		a.added = append(a.added, addedMember{leaf: l, kp: kp})
	}
	if gce != nil {
		if err := g.checkExtensionsSupported(a.ext, a.tree); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// checkExtensionList refuses duplicate extension types.
func checkExtensionList(ext []Extension) error {
	for i := range ext {
		for j := i + 1; j < len(ext); j++ {
			if ext[i].Type == ext[j].Type {
				return fmt.Errorf("%w: duplicate extension %d", ErrInvalidProposal, ext[i].Type)
			}
		}
	}
	if _, err := requiredCapabilities(ext); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidProposal, err)
	}
	if _, err := externalSenders(ext); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidProposal, err)
	}
	return nil
}

// checkUpdateLeaf validates an Update's leaf for leaf l (§12.1.2, §7.3).
func (g *Group) checkUpdateLeaf(t *ratchetTree, l leafIndex, ln *LeafNode, ext []Extension) error {
	old := t.leaf(l)
	if old == nil {
		return fmt.Errorf("%w: Update of blank leaf %d", ErrInvalidProposal, l)
	}
	if ln.Source != LeafNodeSourceUpdate {
		return fmt.Errorf("%w: Update leaf source %d", ErrInvalidProposal, ln.Source)
	}
	if bytes.Equal(ln.EncryptionKey, old.EncryptionKey) {
		return fmt.Errorf("%w: Update reuses the encryption key", ErrInvalidProposal)
	}
	if err := g.suite.VerifyLeafNodeSignature(ln, g.gc.GroupID, uint32(l)); err != nil {
		return fmt.Errorf("%w: Update leaf: %w", ErrInvalidProposal, err)
	}
	if err := g.validateLeaf(t, ln, l, ext, false, nil); err != nil {
		return fmt.Errorf("%w: Update leaf: %w", ErrInvalidProposal, err)
	}
	return nil
}

// checkAddKeyPackage validates an Add's KeyPackage (§12.1.1): the
// group's suite and version, signatures, source, capabilities. The
// lifetime is checked when this client commits the Add (checkLifetime);
// a received commit is not refused because a KeyPackage expired between
// its sending and its processing (RFC 9420 §7.3 only recommends the
// check, and an offline member would otherwise fall out of the group).
func (g *Group) checkAddKeyPackage(kp *KeyPackage, checkLifetime bool) error {
	if kp.CipherSuite != g.gc.CipherSuite || kp.Version != g.gc.Version {
		return fmt.Errorf("%w: KeyPackage for suite %d version %d in a group of suite %d", ErrDowngrade, kp.CipherSuite, kp.Version, g.gc.CipherSuite)
	}
	now := g.cfg.now()
	if !checkLifetime || g.cfg.SkipLifetimeCheck {
		now = timeUnix(kp.LeafNode.Lifetime.NotBefore)
	}
	if err := g.suite.VerifyKeyPackage(kp, now); err != nil {
		return fmt.Errorf("%w: Add: %w", ErrInvalidProposal, err)
	}
	if err := checkLeafCapabilities(&kp.LeafNode, kp.CipherSuite); err != nil {
		return fmt.Errorf("%w: Add: %w", ErrInvalidProposal, err)
	}
	return nil
}

// resolvePSKs looks up every PSK and returns them with their ids.
func (g *Group) resolvePSKs(ids []PreSharedKeyID, extra []resumptionPSK, extraGroup []byte) ([]PSKWithID, error) {
	out := make([]PSKWithID, 0, len(ids))
	for _, id := range ids {
		var psk Secret
		ok := false
		switch id.Type {
		case PSKTypeExternal:
			if g.cfg.PSKs != nil {
				psk, ok = g.cfg.PSKs(id.PSKID)
			}
		case PSKTypeResumption:
			var list []resumptionPSK
			if extraGroup != nil && bytes.Equal(id.PSKGroupID, extraGroup) {
				list = extra
			} else if bytes.Equal(id.PSKGroupID, g.gc.GroupID) {
				list = g.resumption
			}
			for _, r := range list {
				if r.epoch == id.PSKEpoch {
					psk, ok = r.psk, true
				}
			}
		}
		if !ok {
			return nil, fmt.Errorf("%w: type %d id %x epoch %d", ErrPSKNotFound, id.Type, id.PSKID, id.PSKEpoch)
		}
		out = append(out, PSKWithID{ID: id, PSK: psk})
	}
	return out, nil
}

// CommitOptions tune Commit.
type CommitOptions struct {
	// Add, Remove (leaf indices), PSKs, GroupContextExtensions and ReInit
	// are proposals the commit carries by value.
	Add                    []*KeyPackage
	Remove                 []uint32
	PSKs                   []PreSharedKeyID
	GroupContextExtensions *[]Extension
	ReInit                 *ReInit
	// Proposals are further proposals by value.
	Proposals []Proposal
	// SkipPending leaves out the proposals received this epoch (by
	// default all of them are committed by reference, a Remove or Update
	// of a leaf that a by-value proposal touches being dropped).
	SkipPending bool
	// NoPath omits the UpdatePath when the proposals allow it (§12.4);
	// by default every commit carries one.
	NoPath bool
	// RatchetTreeInWelcome puts the ratchet_tree extension in the
	// Welcome's GroupInfo (default true through Commit; set
	// OmitRatchetTree to hand the tree over out of band).
	OmitRatchetTree bool
	// ExternalPub adds the external_pub extension to the returned
	// GroupInfo so that others can join by external commit (default:
	// GroupInfo always carries it).
	NoExternalPub bool
	// AuthenticatedData is sent in the clear with the commit.
	AuthenticatedData []byte
	// PendingReInit commits the first ReInit proposal received this
	// epoch, alone, by reference (other pending proposals are left out).
	PendingReInit bool
	// SeparateTree leaves the ratchet_tree extension out of the returned
	// GroupInfo and returns the encoded tree in PendingCommit.Tree
	// instead, for a server that keeps the two side by side (RFC 9420
	// §12.4.3.3 lets the tree travel by other means; the tree_hash in the
	// signed GroupContext authenticates it). The Welcome is unaffected.
	// A 10 000-member tree is megabytes that the GroupInfo's signature
	// would otherwise hash.
	SeparateTree bool
	// SeparateTreeIf, when not zero, limits SeparateTree to a new epoch
	// whose every member lists this extension type in its leaf's
	// capabilities (clients that can join from a separate tree); otherwise
	// the tree stays in the GroupInfo. The answer is cached in the tree,
	// not recomputed per commit.
	SeparateTreeIf ExtensionType
}

// PendingCommit is a commit created by this client that the server has
// not yet accepted. Send Message (and Welcome to the added members);
// once the server accepts the commit call Group.MergePendingCommit; if it
// is refused (STALE_EPOCH: another commit won) drop it with
// Group.ClearPendingCommit, process the winner, and commit again.
type PendingCommit struct {
	// Message is the MLSMessage carrying the Commit.
	Message []byte
	// Welcome is the MLSMessage Welcome for added members (nil if none).
	Welcome []byte
	// GroupInfo is the signed MLSMessage GroupInfo of the new epoch
	// (with external_pub, and the ratchet tree unless Tree is set), for
	// the server to keep for external joins.
	GroupInfo []byte
	// Tree is the new epoch's ratchet tree, encoded as the ratchet_tree
	// extension's data, when CommitOptions.SeparateTree took effect (the
	// GroupInfo then lacks the extension); nil otherwise. Tree and
	// GroupInfo share memory with the group's tree encoding cache: do not
	// modify them.
	Tree []byte
	// Epoch is the epoch the commit moves to.
	Epoch uint64
	// Added lists the new members' leaf indices.
	Added []uint32

	base uint64
	next *Group
}

// pskNonce returns a fresh Nh-byte PSK nonce.
func (g *Group) pskNonce() []byte {
	n := make([]byte, g.suite.Nh())
	_, _ = rand.Read(n)
	return n
}

// ExternalPSK returns a PreSharedKeyID for an external PSK with a fresh
// nonce.
func (g *Group) ExternalPSK(id []byte) PreSharedKeyID {
	return PreSharedKeyID{Type: PSKTypeExternal, PSKID: slices.Clone(id), PSKNonce: g.pskNonce()}
}

// ResumptionPSKID returns a PreSharedKeyID for this group's resumption
// PSK of epoch, usage application, with a fresh nonce.
func (g *Group) ResumptionPSKID(epoch uint64) PreSharedKeyID {
	return PreSharedKeyID{Type: PSKTypeResumption, Usage: ResumptionPSKUsageApplication, PSKGroupID: g.GroupID(), PSKEpoch: epoch, PSKNonce: g.pskNonce()}
}

// Commit creates a commit of the pending proposals and those in opts
// (§12.4.1) and returns it with the Welcome for new members and the
// state the group moves to. The group itself is unchanged until
// MergePendingCommit.
func (g *Group) Commit(opts CommitOptions) (*PendingCommit, error) {
	return g.commit(opts, ResumptionPSKUsageApplication)
}

// commit is Commit allowing resumption PSKs of the given usage (reinit
// and branch for the first commit of a new group).
func (g *Group) commit(opts CommitOptions, pskUsage ResumptionPSKUsage) (*PendingCommit, error) {
	if !g.Active() {
		return nil, fmt.Errorf("%w: group is no longer active", ErrNotMember)
	}
	s := g.suite
	self := Sender{Type: SenderTypeMember, LeafIndex: uint32(g.own)}
	var byValue []Proposal
	for _, kp := range opts.Add {
		byValue = append(byValue, Proposal{Type: ProposalTypeAdd, Add: &Add{KeyPackage: *kp}})
	}
	for _, r := range opts.Remove {
		byValue = append(byValue, Proposal{Type: ProposalTypeRemove, Remove: &Remove{Removed: r}})
	}
	for i := range opts.PSKs {
		byValue = append(byValue, Proposal{Type: ProposalTypePSK, PreSharedKey: &PreSharedKey{PSK: opts.PSKs[i]}})
	}
	if opts.GroupContextExtensions != nil {
		byValue = append(byValue, Proposal{Type: ProposalTypeGroupContextExtensions, GroupContextExtensions: &GroupContextExtensions{Extensions: *opts.GroupContextExtensions}})
	}
	if opts.ReInit != nil {
		byValue = append(byValue, Proposal{Type: ProposalTypeReInit, ReInit: opts.ReInit})
	}
	byValue = append(byValue, opts.Proposals...)
	commit := &Commit{}
	touched := map[uint32]bool{}
	for i := range byValue {
		if byValue[i].Type == ProposalTypeRemove {
			touched[byValue[i].Remove.Removed] = true
		}
	}
	if opts.PendingReInit {
		for _, cp := range g.proposals {
			if cp.proposal.Type == ProposalTypeReInit {
				commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeReference, Reference: cp.ref})
				break
			}
		}
		if len(commit.Proposals) == 0 {
			return nil, fmt.Errorf("%w: no ReInit proposal pending", ErrInvalidArgument)
		}
	} else if !opts.SkipPending && opts.ReInit == nil {
		for _, cp := range g.proposals {
			var l uint32
			switch cp.proposal.Type {
			case ProposalTypeRemove:
				l = cp.proposal.Remove.Removed
			case ProposalTypeUpdate:
				l = cp.sender.LeafIndex
				if l == uint32(g.own) {
					continue // our own Update: the path replaces it
				}
			case ProposalTypeReInit, ProposalTypeExternalInit:
				continue
			case ProposalTypeAdd:
				// Leave out an Add that is no longer valid (expired
				// KeyPackage) rather than failing the whole commit.
				if g.checkAddKeyPackage(&cp.proposal.Add.KeyPackage, true) != nil {
					continue
				}
				commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeReference, Reference: cp.ref})
				continue
			default:
				commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeReference, Reference: cp.ref})
				continue
			}
			if touched[l] || l == uint32(g.own) {
				continue
			}
			touched[l] = true
			commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeReference, Reference: cp.ref})
		}
	}
	for i := range byValue {
		commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalOrRefTypeProposal, Proposal: &byValue[i]})
	}
	ps, err := g.resolveProposals(commit, self)
	if err != nil {
		return nil, err
	}
	g.allowUsage = pskUsage
	a, err := g.validateAndApply(ps, self, false)
	g.allowUsage = 0
	if err != nil {
		return nil, err
	}
	next := g.cloneWithTree(a.tree)
	newGC := next.gc
	newGC.Epoch = g.gc.Epoch + 1
	newGC.Extensions = a.ext
	var (
		commitSecret Secret
		pathSecrets  map[nodeIndex]Secret
		exclude      []leafIndex
	)
	for _, m := range a.added {
		exclude = append(exclude, m.leaf)
	}
	usePath := pathRequired(ps) || !opts.NoPath
	if usePath {
		tmpl := *g.tree.leaf(g.own)
		res, err := next.tree.createUpdatePath(g.own, &tmpl, g.gc.GroupID, g.sigPriv, func(th []byte) (*GroupContext, error) {
			c := newGC
			c.TreeHash = th
			return &c, nil
		}, exclude)
		if err != nil {
			return nil, err
		}
		commit.Path = res.path
		commitSecret, pathSecrets = res.commitSecret, res.pathSecrets
		for x, k := range res.keys {
			next.keys[x] = k
		}
	}
	next.keys.prune(next.tree)
	newGC.TreeHash = next.tree.rootHash()

	// Sign the commit with the old context, then derive the new epoch.
	wf := WireFormatPrivateMessage
	if g.cfg.PublicHandshake {
		wf = WireFormatPublicMessage
	}
	content := &FramedContent{
		GroupID: g.gc.GroupID, Epoch: g.gc.Epoch, Sender: self, AuthenticatedData: opts.AuthenticatedData,
		ContentType: ContentTypeCommit, Commit: commit,
	}
	ac, err := s.SignContent(wf, content, &g.gc, g.sigPriv)
	if err != nil {
		return nil, err
	}
	var extra []resumptionPSK
	var extraGroup []byte
	if rg := g.resumptionFrom; rg != nil {
		extra, extraGroup = rg.resumption, rg.gc.GroupID
	}
	psks, err := g.resolvePSKs(a.psks, extra, extraGroup)
	if err != nil {
		return nil, err
	}
	joiner, pskSecret, err := next.advance(g, ac, &newGC, commitSecret, psks, nil)
	if err != nil {
		return nil, err
	}
	defer joiner.Wipe()
	ac.Auth.ConfirmationTag = next.confTag
	next.finishEpoch(g, a)

	// Protect with the old epoch's keys.
	msg, err := g.frame(ac)
	if err != nil {
		return nil, err
	}
	pc := &PendingCommit{Message: msg, Epoch: newGC.Epoch, base: g.gc.Epoch, next: next}
	// GroupInfo and Welcome.
	// One signed GroupInfo (external_pub, and the tree unless it goes
	// separately) serves the server and, when it is what the Welcome
	// needs, the Welcome: the tree encoding and the signature over it
	// dominate a large group's commit.
	separate := opts.SeparateTree && (opts.SeparateTreeIf == 0 || next.tree.allSupport(opts.SeparateTreeIf))
	giAll, giMsg, err := next.groupInfoMsg(!separate, true)
	if err != nil {
		return nil, err
	}
	if separate {
		if pc.Tree, err = next.tree.encodedPublic(); err != nil {
			return nil, err
		}
	}
	// The new tree's encoding serves this group's next encoding too (a
	// commit redone after another won): nearly every node is the same.
	g.tree.pub = next.tree.pub
	gi := giAll
	if len(a.added) > 0 && (opts.OmitRatchetTree == !separate || opts.NoExternalPub) {
		if gi, err = next.groupInfo(!opts.OmitRatchetTree, !opts.NoExternalPub); err != nil {
			return nil, err
		}
	}
	pc.GroupInfo = giMsg
	if len(a.added) > 0 {
		w, err := next.welcome(gi, a.added, joiner, pskSecret, pathSecrets, a.psks)
		if err != nil {
			return nil, err
		}
		if pc.Welcome, err = (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatWelcome, Welcome: w}).Marshal(); err != nil {
			return nil, err
		}
		for _, m := range a.added {
			pc.Added = append(pc.Added, uint32(m.leaf))
		}
	}
	if a.reinit != nil {
		next.reinit = a.reinit
	}
	g.pending = pc
	return pc, nil
}

// advance derives the new epoch into g (already holding the new tree)
// from the old state, the signed commit and the provisional context: the
// transcript hashes, key schedule, confirmation tag (computed, or checked
// when ac carries one) and secret tree. initSecret overrides the old
// epoch's init secret (external commits). It returns the joiner secret
// and psk secret for a Welcome.
func (g *Group) advance(old *Group, ac *AuthenticatedContent, newGC *GroupContext, commitSecret Secret, psks []PSKWithID, initSecret *Secret) (Secret, Secret, error) {
	s := g.suite
	confirmed, err := s.ConfirmedTranscriptHash(old.interim, ac)
	if err != nil {
		return Secret{}, Secret{}, err
	}
	newGC.ConfirmedTranscriptHash = confirmed
	pskSecret, err := s.PSKSecret(psks)
	if err != nil {
		return Secret{}, Secret{}, err
	}
	var init Secret
	switch {
	case initSecret != nil:
		init = *initSecret
	case old.es != nil:
		init = old.es.InitSecret
	default:
		return Secret{}, Secret{}, fmt.Errorf("%w: no init secret", ErrInvalidArgument)
	}
	joiner, err := s.JoinerSecret(init, commitSecret, newGC)
	if err != nil {
		return Secret{}, Secret{}, err
	}
	es, err := s.EpochSecrets(joiner, pskSecret, newGC)
	if err != nil {
		joiner.Wipe()
		return Secret{}, Secret{}, err
	}
	tag := s.ConfirmationTag(es.ConfirmationKey, confirmed)
	if ac.Auth.ConfirmationTag != nil && !constantTimeEqual(tag, ac.Auth.ConfirmationTag) {
		es.Wipe()
		joiner.Wipe()
		return Secret{}, Secret{}, ErrBadConfirmationTag
	}
	interim, err := s.InterimTranscriptHash(confirmed, tag)
	if err != nil {
		es.Wipe()
		joiner.Wipe()
		return Secret{}, Secret{}, err
	}
	st, err := NewSecretTree(s, es.EncryptionSecret, uint32(g.tree.leafCount()))
	if err != nil {
		es.Wipe()
		joiner.Wipe()
		return Secret{}, Secret{}, err
	}
	g.gc = *newGC
	g.es, g.st, g.confTag, g.interim = es, st, tag, interim
	return joiner, pskSecret, nil
}

// finishEpoch records the old epoch as a past epoch of g (bounded) and
// the new epoch's resumption secret.
func (g *Group) finishEpoch(old *Group, a *applied) {
	g.past = append(g.past, &pastEpoch{gc: old.gc, tree: old.tree, st: old.st, senderData: old.es.SenderDataSecret})
	if max := g.cfg.maxPast(); len(g.past) > max {
		for _, p := range g.past[:len(g.past)-max] {
			p.wipe()
		}
		g.past = slices.Clone(g.past[len(g.past)-max:])
	}
	g.rememberResumption()
	g.proposals = nil
	g.updateKeys = nil
	g.ownProposals = nil
	if a != nil && a.ownGone {
		g.removed = true
	}
}

// frame signs nothing: it protects already signed content as the wire
// format it was signed for, with the current epoch's keys, and returns
// the MLSMessage encoding.
func (g *Group) frame(ac *AuthenticatedContent) ([]byte, error) {
	m := &MLSMessage{Version: ProtocolVersionMLS10, WireFormat: ac.WireFormat}
	switch ac.WireFormat {
	case WireFormatPublicMessage:
		pm, err := g.suite.ProtectPublic(ac, &g.gc, g.es.MembershipKey)
		if err != nil {
			return nil, err
		}
		m.PublicMessage = pm
	case WireFormatPrivateMessage:
		size := 0
		if ac.Content.ContentType == ContentTypeApplication {
			size = len(ac.Content.ApplicationData)
		}
		pm, err := g.suite.ProtectPrivate(ac, g.st, g.es.SenderDataSecret, g.cfg.padding(size+len(ac.Auth.Signature)+4))
		if err != nil {
			return nil, err
		}
		m.PrivateMessage = pm
	default:
		return nil, fmt.Errorf("%w: wire format %d", ErrInvalidArgument, ac.WireFormat)
	}
	return m.Marshal()
}

// groupInfo builds and signs the GroupInfo of the current epoch.
func (g *Group) groupInfo(withTree, withExternalPub bool) (*GroupInfo, error) {
	gi, _, err := g.groupInfoMsg(withTree, withExternalPub)
	return gi, err
}

// groupInfoMsg builds and signs the GroupInfo and returns it with its
// MLSMessage encoding, encoding the (possibly large) tree only once.
func (g *Group) groupInfoMsg(withTree, withExternalPub bool) (*GroupInfo, []byte, error) {
	gi := &GroupInfo{GroupContext: g.Context(), ConfirmationTag: slices.Clone(g.confTag), Signer: uint32(g.own)}
	treeSize, treeExt := 0, -1
	if withTree {
		// Written straight into the message below (encodeContentWithTree).
		treeSize, treeExt = g.tree.publicLen(), len(gi.Extensions)
		gi.Extensions = append(gi.Extensions, Extension{Type: ExtensionTypeRatchetTree})
	}
	if withExternalPub {
		_, pub, err := g.es.ExternalKeyPair()
		if err != nil {
			return nil, nil, err
		}
		e := &encoder{}
		e.opaque(pub)
		gi.Extensions = append(gi.Extensions, Extension{Type: ExtensionTypeExternalPub, Data: e.buf})
	}
	// The message is encoded after signRoom scratch bytes, where the
	// signature's SignContent header goes in front of GroupInfoTBS, so the
	// (possibly megabytes of) TBS is signed where it lies, not copied.
	const signRoom = 64
	e := &encoder{buf: make([]byte, signRoom, signRoom+treeSize+1024)}
	e.u16(uint16(ProtocolVersionMLS10))
	e.u16(uint16(WireFormatGroupInfo))
	if treeExt >= 0 {
		gi.encodeContentWithTree(e, treeExt, g.tree, treeSize)
	} else {
		gi.encodeContent(e)
	}
	if e.err != nil {
		return nil, nil, e.err
	}
	msgHeader := [4]byte(e.buf[signRoom : signRoom+4])
	sig, err := g.suite.signWithLabelAt(g.sigPriv, "GroupInfoTBS", e.buf, signRoom+4)
	if err != nil {
		return nil, nil, err
	}
	copy(e.buf[signRoom:], msgHeader[:]) // the header overwrote it
	gi.Signature = sig
	e.opaque(sig)
	return gi, e.buf[signRoom:], e.err
}

// GroupInfo returns the signed MLSMessage GroupInfo of the current epoch
// (ratchet tree and external_pub included), for external joiners. It
// shares memory with the tree's encoding cache: do not modify it.
func (g *Group) GroupInfo() ([]byte, error) {
	_, msg, err := g.groupInfoMsg(true, true)
	return msg, err
}

// GroupInfoSeparateTree returns the signed MLSMessage GroupInfo of the
// current epoch (external_pub included) and, when every member lists
// extension type cond in its capabilities (or cond is 0), the ratchet
// tree encoded separately, the GroupInfo then lacking the ratchet_tree
// extension (as CommitOptions.SeparateTree). Otherwise tree is nil and
// the GroupInfo carries the tree. Both share memory with the tree's
// encoding cache: do not modify them.
func (g *Group) GroupInfoSeparateTree(cond ExtensionType) (groupInfo, tree []byte, err error) {
	if cond != 0 && !g.tree.allSupport(cond) {
		groupInfo, err = g.GroupInfo()
		return groupInfo, nil, err
	}
	if _, groupInfo, err = g.groupInfoMsg(false, true); err != nil {
		return nil, nil, err
	}
	if tree, err = g.tree.encodedPublic(); err != nil {
		return nil, nil, err
	}
	return groupInfo, tree, nil
}

// AllMembersSupport reports whether every member's leaf lists extension
// type t in its capabilities (cached; see CommitOptions.SeparateTreeIf).
func (g *Group) AllMembersSupport(t ExtensionType) bool { return g.tree.allSupport(t) }

// lca returns the lowest common ancestor of two leaves.
func lca(a, b leafIndex) nodeIndex {
	k := uint(0)
	for a != b {
		a >>= 1
		b >>= 1
		k++
	}
	return nodeIndex((uint32(a) << (k + 1)) | (1<<k - 1))
}

// welcome encrypts gi and the group secrets to the added members.
func (g *Group) welcome(gi *GroupInfo, added []addedMember, joiner, pskSecret Secret, pathSecrets map[nodeIndex]Secret, psks []PreSharedKeyID) (*Welcome, error) {
	s := g.suite
	ws, err := s.WelcomeSecret(joiner, pskSecret)
	if err != nil {
		return nil, err
	}
	defer ws.Wipe()
	egi, err := s.EncryptGroupInfo(gi, ws)
	if err != nil {
		return nil, err
	}
	w := &Welcome{CipherSuite: s.ID(), EncryptedGroupInfo: egi}
	info, err := encryptContext("Welcome", egi)
	if err != nil {
		return nil, err
	}
	sealer := s.newWelcomeSealer(info)
	for _, m := range added {
		gs := &GroupSecrets{JoinerSecret: joiner, PSKs: psks}
		if pathSecrets != nil {
			if ps, ok := pathSecrets[lca(g.own, m.leaf)]; ok {
				gs.PathSecret = &PathSecret{PathSecret: ps}
			}
		}
		egs, err := s.encryptGroupSecrets(m.kp, gs, sealer)
		if err != nil {
			return nil, err
		}
		w.Secrets = append(w.Secrets, egs)
	}
	return w, nil
}

// MergePendingCommit moves the group to the epoch of its pending commit,
// once the server accepted it. p must be the group's latest Commit result
// created in the current epoch.
func (g *Group) MergePendingCommit(p *PendingCommit) error {
	if p == nil || p.next == nil || g.pending != p {
		return fmt.Errorf("%w: not this group's pending commit", ErrInvalidArgument)
	}
	if p.base != g.gc.Epoch {
		return fmt.Errorf("%w: pending commit for epoch %d, group at %d", ErrStaleEpoch, p.base, g.gc.Epoch)
	}
	old := g.es
	*g = *p.next
	g.pending = nil
	g.forgetEpochSecrets(old)
	return nil
}

// ClearPendingCommit drops the pending commit (the server refused it).
func (g *Group) ClearPendingCommit() { g.pending = nil }

// Pending returns the pending commit, if any.
func (g *Group) Pending() *PendingCommit { return g.pending }
