package mls

// Message framing (RFC 9420 §6): MLSMessage and the structs of
// PublicMessage and PrivateMessage, plus GroupContext (§8.1).

// WireFormat identifies the kind of MLSMessage (RFC 9420 §17.2).
type WireFormat uint16

// Wire formats.
const (
	WireFormatPublicMessage  WireFormat = 1
	WireFormatPrivateMessage WireFormat = 2
	WireFormatWelcome        WireFormat = 3
	WireFormatGroupInfo      WireFormat = 4
	WireFormatKeyPackage     WireFormat = 5
)

// ContentType is the type of a FramedContent's content.
type ContentType uint8

// Content types.
const (
	ContentTypeApplication ContentType = 1
	ContentTypeProposal    ContentType = 2
	ContentTypeCommit      ContentType = 3
)

// SenderType says who sent a message (RFC 9420 §6).
type SenderType uint8

// Sender types.
const (
	SenderTypeMember            SenderType = 1
	SenderTypeExternal          SenderType = 2
	SenderTypeNewMemberProposal SenderType = 3
	SenderTypeNewMemberCommit   SenderType = 4
)

// Sender identifies a message's sender: LeafIndex for members, SenderIndex
// (into the external_senders extension) for external senders.
type Sender struct {
	Type        SenderType
	LeafIndex   uint32
	SenderIndex uint32
}

func (s *Sender) encode(e *encoder) {
	e.u8(uint8(s.Type))
	switch s.Type {
	case SenderTypeMember:
		e.u32(s.LeafIndex)
	case SenderTypeExternal:
		e.u32(s.SenderIndex)
	case SenderTypeNewMemberProposal, SenderTypeNewMemberCommit:
	default:
		e.fail("unknown sender type %d", s.Type)
	}
}

func (s *Sender) decode(d *decoder) {
	s.Type = SenderType(d.u8())
	switch s.Type {
	case SenderTypeMember:
		s.LeafIndex = d.u32()
	case SenderTypeExternal:
		s.SenderIndex = d.u32()
	case SenderTypeNewMemberProposal, SenderTypeNewMemberCommit:
	default:
		d.fail("unknown sender type %d", s.Type)
	}
}

// GroupContext is the group state summary every epoch's keys are bound to
// (RFC 9420 §8.1).
type GroupContext struct {
	Version                 ProtocolVersion
	CipherSuite             CipherSuiteID
	GroupID                 []byte
	Epoch                   uint64
	TreeHash                []byte
	ConfirmedTranscriptHash []byte
	Extensions              []Extension
}

func (g *GroupContext) encode(e *encoder) {
	e.u16(uint16(g.Version))
	e.u16(uint16(g.CipherSuite))
	e.opaque(g.GroupID)
	e.u64(g.Epoch)
	e.opaque(g.TreeHash)
	e.opaque(g.ConfirmedTranscriptHash)
	encodeExtensions(e, g.Extensions)
}

func (g *GroupContext) decode(d *decoder) {
	g.Version = ProtocolVersion(d.u16())
	g.CipherSuite = CipherSuiteID(d.u16())
	g.GroupID = d.opaque()
	g.Epoch = d.u64()
	g.TreeHash = d.opaque()
	g.ConfirmedTranscriptHash = d.opaque()
	g.Extensions = decodeExtensions(d)
}

// FramedContent is the content of a handshake or application message
// (RFC 9420 §6). The field matching ContentType is set.
type FramedContent struct {
	GroupID           []byte
	Epoch             uint64
	Sender            Sender
	AuthenticatedData []byte
	ContentType       ContentType
	ApplicationData   []byte
	Proposal          *Proposal
	Commit            *Commit
}

func (c *FramedContent) encode(e *encoder) {
	e.opaque(c.GroupID)
	e.u64(c.Epoch)
	c.Sender.encode(e)
	e.opaque(c.AuthenticatedData)
	e.u8(uint8(c.ContentType))
	c.encodeBody(e)
}

// encodeBody writes the select(content_type) part.
func (c *FramedContent) encodeBody(e *encoder) {
	switch {
	case c.ContentType == ContentTypeApplication:
		e.opaque(c.ApplicationData)
	case c.ContentType == ContentTypeProposal && c.Proposal != nil:
		c.Proposal.encode(e)
	case c.ContentType == ContentTypeCommit && c.Commit != nil:
		c.Commit.encode(e)
	default:
		e.fail("content type %d without matching content", c.ContentType)
	}
}

func (c *FramedContent) decode(d *decoder) {
	c.GroupID = d.opaque()
	c.Epoch = d.u64()
	c.Sender.decode(d)
	c.AuthenticatedData = d.opaque()
	c.ContentType = ContentType(d.u8())
	c.decodeBody(d)
}

func (c *FramedContent) decodeBody(d *decoder) {
	if d.err != nil {
		return
	}
	switch c.ContentType {
	case ContentTypeApplication:
		c.ApplicationData = d.opaque()
	case ContentTypeProposal:
		c.Proposal = new(Proposal)
		c.Proposal.decode(d)
	case ContentTypeCommit:
		c.Commit = new(Commit)
		c.Commit.decode(d)
	default:
		d.fail("unknown content type %d", c.ContentType)
	}
}

// FramedContentAuthData is the signature and, for commits, the
// confirmation tag (RFC 9420 §6.1). Its encoding depends on the content
// type, so it is encoded with that type.
type FramedContentAuthData struct {
	Signature       []byte
	ConfirmationTag []byte
}

func (a *FramedContentAuthData) encode(e *encoder, ct ContentType) {
	e.opaque(a.Signature)
	if ct == ContentTypeCommit {
		e.opaque(a.ConfirmationTag)
	}
}

func (a *FramedContentAuthData) decode(d *decoder, ct ContentType) {
	a.Signature = d.opaque()
	if ct == ContentTypeCommit {
		a.ConfirmationTag = d.opaque()
	}
}

// AuthenticatedContent is FramedContent with its wire format and
// authentication data (RFC 9420 §6.1).
type AuthenticatedContent struct {
	WireFormat WireFormat
	Content    FramedContent
	Auth       FramedContentAuthData
}

func (a *AuthenticatedContent) encode(e *encoder) {
	e.u16(uint16(a.WireFormat))
	a.Content.encode(e)
	a.Auth.encode(e, a.Content.ContentType)
}

func (a *AuthenticatedContent) decode(d *decoder) {
	a.WireFormat = WireFormat(d.u16())
	a.Content.decode(d)
	a.Auth.decode(d, a.Content.ContentType)
}

// PublicMessage is a signed, unencrypted message (RFC 9420 §6.2).
// MembershipTag is present for member senders only.
type PublicMessage struct {
	Content       FramedContent
	Auth          FramedContentAuthData
	MembershipTag []byte
}

func (m *PublicMessage) encode(e *encoder) {
	m.Content.encode(e)
	m.Auth.encode(e, m.Content.ContentType)
	if m.Content.Sender.Type == SenderTypeMember {
		e.opaque(m.MembershipTag)
	}
}

func (m *PublicMessage) decode(d *decoder) {
	m.Content.decode(d)
	m.Auth.decode(d, m.Content.ContentType)
	if m.Content.Sender.Type == SenderTypeMember {
		m.MembershipTag = d.opaque()
	}
}

// PrivateMessage is an encrypted message (RFC 9420 §6.3).
type PrivateMessage struct {
	GroupID             []byte
	Epoch               uint64
	ContentType         ContentType
	AuthenticatedData   []byte
	EncryptedSenderData []byte
	Ciphertext          []byte
}

func (m *PrivateMessage) encode(e *encoder) {
	e.opaque(m.GroupID)
	e.u64(m.Epoch)
	e.u8(uint8(m.ContentType))
	e.opaque(m.AuthenticatedData)
	e.opaque(m.EncryptedSenderData)
	e.opaque(m.Ciphertext)
}

func (m *PrivateMessage) decode(d *decoder) {
	m.GroupID = d.opaque()
	m.Epoch = d.u64()
	m.ContentType = ContentType(d.u8())
	switch m.ContentType {
	case ContentTypeApplication, ContentTypeProposal, ContentTypeCommit:
	default:
		d.fail("unknown content type %d", m.ContentType)
	}
	m.AuthenticatedData = d.opaque()
	m.EncryptedSenderData = d.opaque()
	m.Ciphertext = d.opaque()
}

// MLSMessage is the top-level message (RFC 9420 §6). The field matching
// WireFormat is set. Version is always ProtocolVersionMLS10 once decoded.
type MLSMessage struct {
	Version        ProtocolVersion
	WireFormat     WireFormat
	PublicMessage  *PublicMessage
	PrivateMessage *PrivateMessage
	Welcome        *Welcome
	GroupInfo      *GroupInfo
	KeyPackage     *KeyPackage
}

func (m *MLSMessage) encode(e *encoder) {
	e.u16(uint16(m.Version))
	e.u16(uint16(m.WireFormat))
	switch {
	case m.WireFormat == WireFormatPublicMessage && m.PublicMessage != nil:
		m.PublicMessage.encode(e)
	case m.WireFormat == WireFormatPrivateMessage && m.PrivateMessage != nil:
		m.PrivateMessage.encode(e)
	case m.WireFormat == WireFormatWelcome && m.Welcome != nil:
		m.Welcome.encode(e)
	case m.WireFormat == WireFormatGroupInfo && m.GroupInfo != nil:
		m.GroupInfo.encode(e)
	case m.WireFormat == WireFormatKeyPackage && m.KeyPackage != nil:
		m.KeyPackage.encode(e)
	default:
		e.fail("wire format %d without matching content", m.WireFormat)
	}
}

func (m *MLSMessage) decode(d *decoder) {
	m.Version = ProtocolVersion(d.u16())
	if d.err == nil && m.Version != ProtocolVersionMLS10 {
		d.fail("unsupported protocol version %d", m.Version)
		return
	}
	m.WireFormat = WireFormat(d.u16())
	if d.err != nil {
		return
	}
	switch m.WireFormat {
	case WireFormatPublicMessage:
		m.PublicMessage = new(PublicMessage)
		m.PublicMessage.decode(d)
	case WireFormatPrivateMessage:
		m.PrivateMessage = new(PrivateMessage)
		m.PrivateMessage.decode(d)
	case WireFormatWelcome:
		m.Welcome = new(Welcome)
		m.Welcome.decode(d)
	case WireFormatGroupInfo:
		m.GroupInfo = new(GroupInfo)
		m.GroupInfo.decode(d)
	case WireFormatKeyPackage:
		m.KeyPackage = new(KeyPackage)
		m.KeyPackage.decode(d)
	default:
		d.fail("unknown wire format %d", m.WireFormat)
	}
}
