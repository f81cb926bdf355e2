package mls

// Proposals and Commit (RFC 9420 §12).

// ProposalType identifies a proposal (RFC 9420 §17.4).
type ProposalType uint16

// Proposal types of RFC 9420.
const (
	ProposalTypeAdd                    ProposalType = 1
	ProposalTypeUpdate                 ProposalType = 2
	ProposalTypeRemove                 ProposalType = 3
	ProposalTypePSK                    ProposalType = 4
	ProposalTypeReInit                 ProposalType = 5
	ProposalTypeExternalInit           ProposalType = 6
	ProposalTypeGroupContextExtensions ProposalType = 7
)

// PSKType says where a pre-shared key comes from (RFC 9420 §8.4).
type PSKType uint8

// PSK types.
const (
	PSKTypeExternal   PSKType = 1
	PSKTypeResumption PSKType = 2
)

// ResumptionPSKUsage says what a resumption PSK is used for.
type ResumptionPSKUsage uint8

// Resumption PSK usages.
const (
	ResumptionPSKUsageApplication ResumptionPSKUsage = 1
	ResumptionPSKUsageReInit      ResumptionPSKUsage = 2
	ResumptionPSKUsageBranch      ResumptionPSKUsage = 3
)

// PreSharedKeyID names a PSK (RFC 9420 §8.4). PSKID is set for external
// PSKs; Usage, PSKGroupID and PSKEpoch for resumption PSKs.
type PreSharedKeyID struct {
	Type       PSKType
	PSKID      []byte
	Usage      ResumptionPSKUsage
	PSKGroupID []byte
	PSKEpoch   uint64
	PSKNonce   []byte
}

func (p *PreSharedKeyID) encode(e *encoder) {
	e.u8(uint8(p.Type))
	switch p.Type {
	case PSKTypeExternal:
		e.opaque(p.PSKID)
	case PSKTypeResumption:
		e.u8(uint8(p.Usage))
		e.opaque(p.PSKGroupID)
		e.u64(p.PSKEpoch)
	default:
		e.fail("unknown PSK type %d", p.Type)
	}
	e.opaque(p.PSKNonce)
}

func (p *PreSharedKeyID) decode(d *decoder) {
	p.Type = PSKType(d.u8())
	switch p.Type {
	case PSKTypeExternal:
		p.PSKID = d.opaque()
	case PSKTypeResumption:
		p.Usage = ResumptionPSKUsage(d.u8())
		p.PSKGroupID = d.opaque()
		p.PSKEpoch = d.u64()
	default:
		d.fail("unknown PSK type %d", p.Type)
	}
	p.PSKNonce = d.opaque()
}

// Add proposes adding the KeyPackage's owner.
type Add struct{ KeyPackage KeyPackage }

// Update proposes replacing the sender's leaf.
type Update struct{ LeafNode LeafNode }

// Remove proposes removing the member at leaf index Removed.
type Remove struct{ Removed uint32 }

// PreSharedKey proposes injecting a PSK into the next epoch.
type PreSharedKey struct{ PSK PreSharedKeyID }

// ReInit proposes re-initializing the group with new parameters.
type ReInit struct {
	GroupID     []byte
	Version     ProtocolVersion
	CipherSuite CipherSuiteID
	Extensions  []Extension
}

// ExternalInit carries the KEM output of an external joiner.
type ExternalInit struct{ KEMOutput []byte }

// GroupContextExtensions proposes new group context extensions.
type GroupContextExtensions struct{ Extensions []Extension }

func (p *Add) encode(e *encoder)          { p.KeyPackage.encode(e) }
func (p *Add) decode(d *decoder)          { p.KeyPackage.decode(d) }
func (p *Update) encode(e *encoder)       { p.LeafNode.encode(e) }
func (p *Update) decode(d *decoder)       { p.LeafNode.decode(d) }
func (p *Remove) encode(e *encoder)       { e.u32(p.Removed) }
func (p *Remove) decode(d *decoder)       { p.Removed = d.u32() }
func (p *PreSharedKey) encode(e *encoder) { p.PSK.encode(e) }
func (p *PreSharedKey) decode(d *decoder) { p.PSK.decode(d) }
func (p *ExternalInit) encode(e *encoder) { e.opaque(p.KEMOutput) }
func (p *ExternalInit) decode(d *decoder) { p.KEMOutput = d.opaque() }

func (p *ReInit) encode(e *encoder) {
	e.opaque(p.GroupID)
	e.u16(uint16(p.Version))
	e.u16(uint16(p.CipherSuite))
	encodeExtensions(e, p.Extensions)
}

func (p *ReInit) decode(d *decoder) {
	p.GroupID = d.opaque()
	p.Version = ProtocolVersion(d.u16())
	p.CipherSuite = CipherSuiteID(d.u16())
	p.Extensions = decodeExtensions(d)
}

func (p *GroupContextExtensions) encode(e *encoder) { encodeExtensions(e, p.Extensions) }
func (p *GroupContextExtensions) decode(d *decoder) { p.Extensions = decodeExtensions(d) }

// Proposal is one proposal; the field matching Type is set.
type Proposal struct {
	Type                   ProposalType
	Add                    *Add
	Update                 *Update
	Remove                 *Remove
	PreSharedKey           *PreSharedKey
	ReInit                 *ReInit
	ExternalInit           *ExternalInit
	GroupContextExtensions *GroupContextExtensions
}

// variant returns the content struct for p.Type: the one set, or, if
// alloc is true and none is set, a new one stored in p. It returns nil for
// an unknown type or (alloc false) a missing variant.
func (p *Proposal) variant(alloc bool) interface {
	encodable
	decodable
} {
	switch p.Type {
	case ProposalTypeAdd:
		if p.Add == nil && alloc {
			p.Add = new(Add)
		}
		if p.Add != nil {
			return p.Add
		}
	case ProposalTypeUpdate:
		if p.Update == nil && alloc {
			p.Update = new(Update)
		}
		if p.Update != nil {
			return p.Update
		}
	case ProposalTypeRemove:
		if p.Remove == nil && alloc {
			p.Remove = new(Remove)
		}
		if p.Remove != nil {
			return p.Remove
		}
	case ProposalTypePSK:
		if p.PreSharedKey == nil && alloc {
			p.PreSharedKey = new(PreSharedKey)
		}
		if p.PreSharedKey != nil {
			return p.PreSharedKey
		}
	case ProposalTypeReInit:
		if p.ReInit == nil && alloc {
			p.ReInit = new(ReInit)
		}
		if p.ReInit != nil {
			return p.ReInit
		}
	case ProposalTypeExternalInit:
		if p.ExternalInit == nil && alloc {
			p.ExternalInit = new(ExternalInit)
		}
		if p.ExternalInit != nil {
			return p.ExternalInit
		}
	case ProposalTypeGroupContextExtensions:
		if p.GroupContextExtensions == nil && alloc {
			p.GroupContextExtensions = new(GroupContextExtensions)
		}
		if p.GroupContextExtensions != nil {
			return p.GroupContextExtensions
		}
	}
	return nil
}

func (p *Proposal) encode(e *encoder) {
	e.u16(uint16(p.Type))
	v := p.variant(false)
	if v == nil {
		e.fail("proposal type %d without matching content", p.Type)
		return
	}
	v.encode(e)
}

func (p *Proposal) decode(d *decoder) {
	p.Type = ProposalType(d.u16())
	if d.err != nil {
		return
	}
	v := p.variant(true)
	if v == nil {
		d.fail("unknown proposal type %d", p.Type)
		return
	}
	v.decode(d)
}

// ProposalOrRefType says whether a Commit carries a proposal or a reference.
type ProposalOrRefType uint8

// ProposalOrRef types.
const (
	ProposalOrRefTypeProposal  ProposalOrRefType = 1
	ProposalOrRefTypeReference ProposalOrRefType = 2
)

// ProposalOrRef is a proposal inline in a Commit, or a ProposalRef.
type ProposalOrRef struct {
	Type      ProposalOrRefType
	Proposal  *Proposal
	Reference []byte
}

func (p *ProposalOrRef) encode(e *encoder) {
	e.u8(uint8(p.Type))
	switch {
	case p.Type == ProposalOrRefTypeProposal && p.Proposal != nil:
		p.Proposal.encode(e)
	case p.Type == ProposalOrRefTypeReference:
		e.opaque(p.Reference)
	default:
		e.fail("proposal-or-ref type %d without matching content", p.Type)
	}
}

func (p *ProposalOrRef) decode(d *decoder) {
	p.Type = ProposalOrRefType(d.u8())
	switch p.Type {
	case ProposalOrRefTypeProposal:
		p.Proposal = new(Proposal)
		p.Proposal.decode(d)
	case ProposalOrRefTypeReference:
		p.Reference = d.opaque()
	default:
		d.fail("unknown proposal-or-ref type %d", p.Type)
	}
}

// Commit applies proposals and optionally updates the committer's path
// (RFC 9420 §12.4).
type Commit struct {
	Proposals []ProposalOrRef
	Path      *UpdatePath
}

func (c *Commit) encode(e *encoder) {
	e.vector(func(e *encoder) {
		for i := range c.Proposals {
			c.Proposals[i].encode(e)
		}
	})
	e.optional(c.Path != nil, func(e *encoder) { c.Path.encode(e) })
}

func (c *Commit) decode(d *decoder) {
	d.vector(func(d *decoder) {
		var p ProposalOrRef
		p.decode(d)
		c.Proposals = append(c.Proposals, p)
	})
	if d.optional() {
		c.Path = new(UpdatePath)
		c.Path.decode(d)
	}
}
