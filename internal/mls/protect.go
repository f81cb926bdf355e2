package mls

import (
	"bytes"
	"crypto/rand"
	"fmt"
)

// Message protection (RFC 9420 §6): signing FramedContent, the
// PublicMessage membership tag, and PrivateMessage encryption with the
// secret tree and sender-data encryption.

// SenderKeyFunc returns the signature public key of a message's sender; the
// group state (the ratchet tree, external_senders) supplies it.
type SenderKeyFunc func(Sender) (SignaturePublicKey, error)

// framedContentTBS encodes FramedContentTBS: the signed part of a message.
func framedContentTBS(e *encoder, wf WireFormat, c *FramedContent, gc *GroupContext) {
	e.u16(uint16(ProtocolVersionMLS10))
	e.u16(uint16(wf))
	c.encode(e)
	switch c.Sender.Type {
	case SenderTypeMember, SenderTypeNewMemberCommit:
		if gc == nil {
			e.fail("sender type %d needs the group context", c.Sender.Type)
			return
		}
		gc.encode(e)
	}
}

// SignContent signs content as sent in wire format wf and returns it as
// AuthenticatedContent. gc is the group's current context (used for member
// and new_member_commit senders). For a commit the caller fills in
// Auth.ConfirmationTag afterwards, since it covers the signature.
func (s *CipherSuite) SignContent(wf WireFormat, content *FramedContent, gc *GroupContext, priv SignaturePrivateKey) (*AuthenticatedContent, error) {
	e := &encoder{}
	framedContentTBS(e, wf, content, gc)
	if e.err != nil {
		return nil, e.err
	}
	sig, err := s.SignWithLabel(priv, "FramedContentTBS", e.buf)
	if err != nil {
		return nil, err
	}
	return &AuthenticatedContent{WireFormat: wf, Content: *content, Auth: FramedContentAuthData{Signature: sig}}, nil
}

// VerifyContent checks the signature of ac against pub; failure wraps
// ErrInvalidSignature.
func (s *CipherSuite) VerifyContent(ac *AuthenticatedContent, gc *GroupContext, pub SignaturePublicKey) error {
	e := &encoder{}
	framedContentTBS(e, ac.WireFormat, &ac.Content, gc)
	if e.err != nil {
		return e.err
	}
	return s.VerifyWithLabel(pub, "FramedContentTBS", e.buf, ac.Auth.Signature)
}

// membershipTag is MAC(membership_key, AuthenticatedContentTBM).
func (s *CipherSuite) membershipTag(ac *AuthenticatedContent, gc *GroupContext, membershipKey Secret) ([]byte, error) {
	e := &encoder{}
	framedContentTBS(e, WireFormatPublicMessage, &ac.Content, gc)
	ac.Auth.encode(e, ac.Content.ContentType)
	if e.err != nil {
		return nil, e.err
	}
	return s.MAC(membershipKey.Bytes(), e.buf), nil
}

// checkEpoch refuses content addressed to another group or epoch.
func checkEpoch(groupID []byte, epoch uint64, gc *GroupContext) error {
	if !bytes.Equal(groupID, gc.GroupID) || epoch != gc.Epoch {
		return fmt.Errorf("%w: message for epoch %d of another group or epoch (group is at %d)", ErrInvalidMessage, epoch, gc.Epoch)
	}
	return nil
}

// ProtectPublic frames signed content as a PublicMessage, adding the
// membership tag for member senders. Application data may not be sent as a
// PublicMessage (RFC 9420 §6.2).
func (s *CipherSuite) ProtectPublic(ac *AuthenticatedContent, gc *GroupContext, membershipKey Secret) (*PublicMessage, error) {
	if ac.WireFormat != WireFormatPublicMessage {
		return nil, fmt.Errorf("%w: content signed for wire format %d, not public_message", ErrInvalidMessage, ac.WireFormat)
	}
	if ac.Content.ContentType == ContentTypeApplication {
		return nil, fmt.Errorf("%w: application data cannot be sent as a PublicMessage", ErrInvalidMessage)
	}
	m := &PublicMessage{Content: ac.Content, Auth: ac.Auth}
	if ac.Content.Sender.Type == SenderTypeMember {
		tag, err := s.membershipTag(ac, gc, membershipKey)
		if err != nil {
			return nil, err
		}
		m.MembershipTag = tag
	}
	return m, nil
}

// UnprotectPublic checks a PublicMessage for the group context gc: group
// and epoch, content type, membership tag (member senders) and signature.
func (s *CipherSuite) UnprotectPublic(m *PublicMessage, gc *GroupContext, membershipKey Secret, keys SenderKeyFunc) (*AuthenticatedContent, error) {
	if err := checkEpoch(m.Content.GroupID, m.Content.Epoch, gc); err != nil {
		return nil, err
	}
	if m.Content.ContentType == ContentTypeApplication {
		return nil, fmt.Errorf("%w: application data in a PublicMessage", ErrInvalidMessage)
	}
	ac := &AuthenticatedContent{WireFormat: WireFormatPublicMessage, Content: m.Content, Auth: m.Auth}
	if m.Content.Sender.Type == SenderTypeMember {
		tag, err := s.membershipTag(ac, gc, membershipKey)
		if err != nil {
			return nil, err
		}
		if !constantTimeEqual(tag, m.MembershipTag) {
			return nil, ErrBadMembershipTag
		}
	}
	pub, err := keys(m.Content.Sender)
	if err != nil {
		return nil, err
	}
	if err := s.VerifyContent(ac, gc, pub); err != nil {
		return nil, err
	}
	return ac, nil
}

// senderDataAAD encodes SenderDataAAD.
func senderDataAAD(groupID []byte, epoch uint64, ct ContentType) ([]byte, error) {
	e := &encoder{}
	e.opaque(groupID)
	e.u64(epoch)
	e.u8(uint8(ct))
	return e.buf, e.err
}

// privateContentAAD encodes PrivateContentAAD.
func privateContentAAD(m *PrivateMessage) ([]byte, error) {
	e := &encoder{}
	e.opaque(m.GroupID)
	e.u64(m.Epoch)
	e.u8(uint8(m.ContentType))
	e.opaque(m.AuthenticatedData)
	return e.buf, e.err
}

// applyReuseGuard XORs the reuse guard into the first four nonce bytes.
func applyReuseGuard(nonce []byte, guard [4]byte) []byte {
	n := append([]byte(nil), nonce...)
	for i := range guard {
		n[i] ^= guard[i]
	}
	return n
}

// ratchetTypeOf picks the ratchet for a content type.
func ratchetTypeOf(ct ContentType) RatchetType {
	if ct == ContentTypeApplication {
		return RatchetApplication
	}
	return RatchetHandshake
}

// ProtectPrivate encrypts signed content (wire format private_message,
// member sender) as a PrivateMessage, taking the next key of the sender's
// ratchet from tree and appending padding zero bytes.
func (s *CipherSuite) ProtectPrivate(ac *AuthenticatedContent, tree *SecretTree, senderDataSecret Secret, padding int) (*PrivateMessage, error) {
	c := &ac.Content
	if ac.WireFormat != WireFormatPrivateMessage {
		return nil, fmt.Errorf("%w: content signed for wire format %d, not private_message", ErrInvalidMessage, ac.WireFormat)
	}
	if c.Sender.Type != SenderTypeMember {
		return nil, fmt.Errorf("%w: PrivateMessage from sender type %d", ErrInvalidMessage, c.Sender.Type)
	}
	if padding < 0 || padding > maxVarint {
		return nil, fmt.Errorf("%w: padding %d", ErrInvalidArgument, padding)
	}
	// PrivateMessageContent: content, auth, zero padding.
	pe := &encoder{}
	c.encodeBody(pe)
	ac.Auth.encode(pe, c.ContentType)
	pe.raw(make([]byte, padding))
	if pe.err != nil {
		return nil, pe.err
	}
	m := &PrivateMessage{GroupID: c.GroupID, Epoch: c.Epoch, ContentType: c.ContentType, AuthenticatedData: c.AuthenticatedData}
	aad, err := privateContentAAD(m)
	if err != nil {
		return nil, err
	}
	generation, kn, err := tree.Next(c.Sender.LeafIndex, ratchetTypeOf(c.ContentType))
	if err != nil {
		return nil, err
	}
	defer kn.Wipe()
	var guard [4]byte
	_, _ = rand.Read(guard[:]) // never fails (Go 1.24+ crashes instead)
	nonce := applyReuseGuard(kn.Nonce.Bytes(), guard)
	m.Ciphertext, err = s.Seal(kn.Key.Bytes(), nonce, aad, pe.buf)
	clear(pe.buf)
	if err != nil {
		return nil, err
	}
	// SenderData, encrypted under keys derived from the ciphertext sample.
	sd := &encoder{}
	sd.u32(c.Sender.LeafIndex)
	sd.u32(generation)
	sd.raw(guard[:])
	sdAAD, err := senderDataAAD(m.GroupID, m.Epoch, m.ContentType)
	if err != nil {
		return nil, err
	}
	sdKN, err := s.SenderDataKeyNonce(senderDataSecret, m.Ciphertext)
	if err != nil {
		return nil, err
	}
	defer sdKN.Wipe()
	m.EncryptedSenderData, err = s.Seal(sdKN.Key.Bytes(), sdKN.Nonce.Bytes(), sdAAD, sd.buf)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// UnprotectPrivate decrypts a PrivateMessage for group context gc with the
// epoch's secret tree and sender_data_secret, then verifies the sender's
// signature with the key keys returns. The message key is consumed from
// the tree.
func (s *CipherSuite) UnprotectPrivate(m *PrivateMessage, gc *GroupContext, tree *SecretTree, senderDataSecret Secret, keys SenderKeyFunc) (*AuthenticatedContent, error) {
	if err := checkEpoch(m.GroupID, m.Epoch, gc); err != nil {
		return nil, err
	}
	sdKN, err := s.SenderDataKeyNonce(senderDataSecret, m.Ciphertext)
	if err != nil {
		return nil, err
	}
	defer sdKN.Wipe()
	sdAAD, err := senderDataAAD(m.GroupID, m.Epoch, m.ContentType)
	if err != nil {
		return nil, err
	}
	sdPlain, err := s.Open(sdKN.Key.Bytes(), sdKN.Nonce.Bytes(), sdAAD, m.EncryptedSenderData)
	if err != nil {
		return nil, fmt.Errorf("sender data: %w", err)
	}
	d := newDecoder(sdPlain)
	leaf, generation := d.u32(), d.u32()
	var guard [4]byte
	copy(guard[:], d.fixed(4))
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("sender data: %w", err)
	}
	kn, err := tree.Get(leaf, ratchetTypeOf(m.ContentType), generation)
	if err != nil {
		return nil, err
	}
	defer kn.Wipe()
	aad, err := privateContentAAD(m)
	if err != nil {
		return nil, err
	}
	plain, err := s.Open(kn.Key.Bytes(), applyReuseGuard(kn.Nonce.Bytes(), guard), aad, m.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	defer clear(plain)
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPrivateMessage,
		Content: FramedContent{
			GroupID:           m.GroupID,
			Epoch:             m.Epoch,
			Sender:            Sender{Type: SenderTypeMember, LeafIndex: leaf},
			AuthenticatedData: m.AuthenticatedData,
			ContentType:       m.ContentType,
		},
	}
	if err := decodePrivateContent(plain, ac); err != nil {
		return nil, err
	}
	pub, err := keys(ac.Content.Sender)
	if err != nil {
		return nil, err
	}
	if err := s.VerifyContent(ac, gc, pub); err != nil {
		return nil, err
	}
	return ac, nil
}

// decodePrivateContent decodes PrivateMessageContent into ac: the content
// for ac's content type, the auth data, then padding that must be zero.
func decodePrivateContent(b []byte, ac *AuthenticatedContent) error {
	d := newDecoder(b)
	ac.Content.decodeBody(d)
	ac.Auth.decode(d, ac.Content.ContentType)
	if d.err != nil {
		return d.err
	}
	for _, c := range d.s {
		if c != 0 {
			return fmt.Errorf("%w: non-zero padding in PrivateMessageContent", ErrDecode)
		}
	}
	return nil
}
