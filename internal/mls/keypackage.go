package mls

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// KeyPackage, LeafNode and the structs they contain (RFC 9420 §5.3, §7.2,
// §10).

// ProtocolVersion is the MLS protocol version (RFC 9420 §6).
type ProtocolVersion uint16

// ProtocolVersionMLS10 is MLS 1.0, the only version defined.
const ProtocolVersionMLS10 ProtocolVersion = 1

// CredentialType identifies a credential format (RFC 9420 §5.3).
type CredentialType uint16

// Credential types.
const (
	CredentialTypeBasic CredentialType = 1
	CredentialTypeX509  CredentialType = 2
)

// ExtensionType identifies an extension (RFC 9420 §17.3).
type ExtensionType uint16

// Extension types of RFC 9420.
const (
	ExtensionTypeApplicationID        ExtensionType = 1
	ExtensionTypeRatchetTree          ExtensionType = 2
	ExtensionTypeRequiredCapabilities ExtensionType = 3
	ExtensionTypeExternalPub          ExtensionType = 4
	ExtensionTypeExternalSenders      ExtensionType = 5
)

// LeafNodeSource says where a LeafNode came from (RFC 9420 §7.2).
type LeafNodeSource uint8

// Leaf node sources.
const (
	LeafNodeSourceKeyPackage LeafNodeSource = 1
	LeafNodeSourceUpdate     LeafNodeSource = 2
	LeafNodeSourceCommit     LeafNodeSource = 3
)

// Credential binds an identity to a signature key (RFC 9420 §5.3).
// Identity is set for basic credentials, Certificates for X.509 ones.
type Credential struct {
	Type         CredentialType
	Identity     []byte
	Certificates [][]byte
}

func (c *Credential) encode(e *encoder) {
	e.u16(uint16(c.Type))
	switch c.Type {
	case CredentialTypeBasic:
		e.opaque(c.Identity)
	case CredentialTypeX509:
		encodeBytesList(e, c.Certificates)
	default:
		e.fail("unknown credential type %d", c.Type)
	}
}

func (c *Credential) decode(d *decoder) {
	c.Type = CredentialType(d.u16())
	switch c.Type {
	case CredentialTypeBasic:
		c.Identity = d.opaque()
	case CredentialTypeX509:
		c.Certificates = decodeBytesList(d)
	default:
		d.fail("unknown credential type %d", c.Type)
	}
}

// Capabilities lists what a client supports (RFC 9420 §7.2).
type Capabilities struct {
	Versions     []ProtocolVersion
	CipherSuites []CipherSuiteID
	Extensions   []ExtensionType
	Proposals    []ProposalType
	Credentials  []CredentialType
}

func encodeU16List[T ~uint16](e *encoder, l []T) {
	e.vector(func(e *encoder) {
		for _, v := range l {
			e.u16(uint16(v))
		}
	})
}

func decodeU16List[T ~uint16](d *decoder) []T {
	var l []T
	d.vector(func(d *decoder) { l = append(l, T(d.u16())) })
	return l
}

func (c *Capabilities) encode(e *encoder) {
	encodeU16List(e, c.Versions)
	encodeU16List(e, c.CipherSuites)
	encodeU16List(e, c.Extensions)
	encodeU16List(e, c.Proposals)
	encodeU16List(e, c.Credentials)
}

func (c *Capabilities) decode(d *decoder) {
	c.Versions = decodeU16List[ProtocolVersion](d)
	c.CipherSuites = decodeU16List[CipherSuiteID](d)
	c.Extensions = decodeU16List[ExtensionType](d)
	c.Proposals = decodeU16List[ProposalType](d)
	c.Credentials = decodeU16List[CredentialType](d)
}

// Lifetime bounds a KeyPackage's validity, in seconds since the Unix epoch.
type Lifetime struct {
	NotBefore uint64
	NotAfter  uint64
}

func (l *Lifetime) encode(e *encoder) { e.u64(l.NotBefore); e.u64(l.NotAfter) }
func (l *Lifetime) decode(d *decoder) { l.NotBefore = d.u64(); l.NotAfter = d.u64() }

// Extension is one entry of an extension list (RFC 9420 §13).
type Extension struct {
	Type ExtensionType
	Data []byte
}

func encodeExtensions(e *encoder, l []Extension) {
	// With the length known up front the header is written first, where
	// vector would shift the body into place: a GroupInfo's ratchet_tree
	// extension is megabytes in a large group.
	size := 0
	for i := range l {
		if len(l[i].Data) > maxVarint {
			size = -1
			break
		}
		size += 2 + varintLen(len(l[i].Data)) + len(l[i].Data)
	}
	if size >= 0 && size <= maxVarint {
		e.buf = slices.Grow(e.buf, varintLen(size)+size)
		e.buf = appendVarint(e.buf, uint32(size))
		for i := range l {
			e.u16(uint16(l[i].Type))
			e.opaque(l[i].Data)
		}
		return
	}
	e.vector(func(e *encoder) { // reports the oversized vector
		for i := range l {
			e.u16(uint16(l[i].Type))
			e.opaque(l[i].Data)
		}
	})
}

func decodeExtensions(d *decoder) []Extension {
	var l []Extension
	d.vector(func(d *decoder) {
		t := ExtensionType(d.u16())
		l = append(l, Extension{Type: t, Data: d.opaque()})
	})
	return l
}

// HPKECiphertext is an HPKE encapsulation and ciphertext (RFC 9420 §7.6).
type HPKECiphertext struct {
	KEMOutput  []byte
	Ciphertext []byte
}

func (c *HPKECiphertext) encode(e *encoder) { e.opaque(c.KEMOutput); e.opaque(c.Ciphertext) }
func (c *HPKECiphertext) decode(d *decoder) { c.KEMOutput = d.opaque(); c.Ciphertext = d.opaque() }

// LeafNode is a member's leaf in the ratchet tree (RFC 9420 §7.2).
// Lifetime is set for Source == LeafNodeSourceKeyPackage, ParentHash for
// Source == LeafNodeSourceCommit.
type LeafNode struct {
	EncryptionKey HPKEPublicKey
	SignatureKey  SignaturePublicKey
	Credential    Credential
	Capabilities  Capabilities
	Source        LeafNodeSource
	Lifetime      Lifetime
	ParentHash    []byte
	Extensions    []Extension
	Signature     []byte
}

// encodeContent writes every field before the signature.
func (n *LeafNode) encodeContent(e *encoder) {
	e.opaque(n.EncryptionKey)
	e.opaque(n.SignatureKey)
	n.Credential.encode(e)
	n.Capabilities.encode(e)
	e.u8(uint8(n.Source))
	switch n.Source {
	case LeafNodeSourceKeyPackage:
		n.Lifetime.encode(e)
	case LeafNodeSourceUpdate:
	case LeafNodeSourceCommit:
		e.opaque(n.ParentHash)
	default:
		e.fail("unknown leaf node source %d", n.Source)
	}
	encodeExtensions(e, n.Extensions)
}

func (n *LeafNode) encode(e *encoder) {
	n.encodeContent(e)
	e.opaque(n.Signature)
}

func (n *LeafNode) decode(d *decoder) {
	n.EncryptionKey = d.opaque()
	n.SignatureKey = d.opaque()
	n.Credential.decode(d)
	n.Capabilities.decode(d)
	n.Source = LeafNodeSource(d.u8())
	switch n.Source {
	case LeafNodeSourceKeyPackage:
		n.Lifetime.decode(d)
	case LeafNodeSourceUpdate:
	case LeafNodeSourceCommit:
		n.ParentHash = d.opaque()
	default:
		d.fail("unknown leaf node source %d", n.Source)
	}
	n.Extensions = decodeExtensions(d)
	n.Signature = d.opaque()
}

// TBS returns LeafNodeTBS (RFC 9420 §7.2). groupID and leaf are used for
// the update and commit sources only.
func (n *LeafNode) TBS(groupID []byte, leaf uint32) ([]byte, error) {
	e := &encoder{}
	n.encodeContent(e)
	switch n.Source {
	case LeafNodeSourceUpdate, LeafNodeSourceCommit:
		e.opaque(groupID)
		e.u32(leaf)
	}
	return e.buf, e.err
}

// KeyPackage advertises a client's keys for being added to groups
// (RFC 9420 §10).
type KeyPackage struct {
	Version     ProtocolVersion
	CipherSuite CipherSuiteID
	InitKey     HPKEPublicKey
	LeafNode    LeafNode
	Extensions  []Extension
	Signature   []byte
}

func (k *KeyPackage) encodeContent(e *encoder) {
	e.u16(uint16(k.Version))
	e.u16(uint16(k.CipherSuite))
	e.opaque(k.InitKey)
	k.LeafNode.encode(e)
	encodeExtensions(e, k.Extensions)
}

func (k *KeyPackage) encode(e *encoder) {
	k.encodeContent(e)
	e.opaque(k.Signature)
}

func (k *KeyPackage) decode(d *decoder) {
	k.Version = ProtocolVersion(d.u16())
	k.CipherSuite = CipherSuiteID(d.u16())
	k.InitKey = d.opaque()
	k.LeafNode.decode(d)
	k.Extensions = decodeExtensions(d)
	k.Signature = d.opaque()
}

// TBS returns KeyPackageTBS, the signed part of the KeyPackage.
func (k *KeyPackage) TBS() ([]byte, error) {
	e := &encoder{}
	k.encodeContent(e)
	return e.buf, e.err
}

// Ref returns KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", kp).
func (k *KeyPackage) Ref(s *CipherSuite) ([]byte, error) {
	b, err := k.Marshal()
	if err != nil {
		return nil, err
	}
	return s.RefHash("MLS 1.0 KeyPackage Reference", b)
}

// SignLeafNode sets n.Signature: SignWithLabel(., "LeafNodeTBS",
// LeafNodeTBS). groupID and leaf are used for the update and commit
// sources only.
func (s *CipherSuite) SignLeafNode(n *LeafNode, groupID []byte, leaf uint32, priv SignaturePrivateKey) error {
	tbs, err := n.TBS(groupID, leaf)
	if err != nil {
		return err
	}
	sig, err := s.SignWithLabel(priv, "LeafNodeTBS", tbs)
	if err != nil {
		return err
	}
	n.Signature = sig
	return nil
}

// VerifyLeafNodeSignature checks n's signature with its own signature key;
// failure wraps ErrInvalidSignature.
func (s *CipherSuite) VerifyLeafNodeSignature(n *LeafNode, groupID []byte, leaf uint32) error {
	tbs, err := n.TBS(groupID, leaf)
	if err != nil {
		return err
	}
	return s.VerifyWithLabel(n.SignatureKey, "LeafNodeTBS", tbs, n.Signature)
}

// SignKeyPackage sets kp.Signature: SignWithLabel(., "KeyPackageTBS",
// KeyPackageTBS). The leaf node must already be signed.
func (s *CipherSuite) SignKeyPackage(kp *KeyPackage, priv SignaturePrivateKey) error {
	tbs, err := kp.TBS()
	if err != nil {
		return err
	}
	sig, err := s.SignWithLabel(priv, "KeyPackageTBS", tbs)
	if err != nil {
		return err
	}
	kp.Signature = sig
	return nil
}

// VerifyKeyPackage runs the checks of RFC 9420 §10.1 that need no group:
// protocol version and cipher suite (this suite), a leaf node of source
// key_package whose lifetime contains now, both signatures (by the leaf's
// signature key), and an init key different from the leaf's encryption
// key. Checks against a group (its required capabilities, credential
// policy) are the caller's. Signature failures wrap ErrInvalidSignature,
// the others ErrInvalidKeyPackage.
func (s *CipherSuite) VerifyKeyPackage(kp *KeyPackage, now time.Time) error {
	ln := &kp.LeafNode
	switch {
	case kp.Version != ProtocolVersionMLS10:
		return fmt.Errorf("%w: protocol version %d", ErrInvalidKeyPackage, kp.Version)
	case kp.CipherSuite != s.id:
		return fmt.Errorf("%w: cipher suite %d, want %d", ErrInvalidKeyPackage, kp.CipherSuite, s.id)
	case ln.Source != LeafNodeSourceKeyPackage:
		return fmt.Errorf("%w: leaf node source %d, want key_package", ErrInvalidKeyPackage, ln.Source)
	case bytes.Equal(kp.InitKey, ln.EncryptionKey):
		return fmt.Errorf("%w: init key equals the leaf encryption key", ErrInvalidKeyPackage)
	}
	if t := now.Unix(); t < 0 || uint64(t) < ln.Lifetime.NotBefore || uint64(t) > ln.Lifetime.NotAfter {
		return fmt.Errorf("%w: lifetime [%d, %d] does not contain %d", ErrInvalidKeyPackage, ln.Lifetime.NotBefore, ln.Lifetime.NotAfter, t)
	}
	if err := s.VerifyLeafNodeSignature(ln, nil, 0); err != nil {
		return fmt.Errorf("leaf node: %w", err)
	}
	tbs, err := kp.TBS()
	if err != nil {
		return err
	}
	if err := s.VerifyWithLabel(ln.SignatureKey, "KeyPackageTBS", tbs, kp.Signature); err != nil {
		return fmt.Errorf("key package: %w", err)
	}
	return nil
}
