package mls

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

type messageProtectionCase struct {
	CipherSuite             CipherSuiteID `json:"cipher_suite"`
	GroupID                 hexBytes      `json:"group_id"`
	Epoch                   uint64        `json:"epoch"`
	TreeHash                hexBytes      `json:"tree_hash"`
	ConfirmedTranscriptHash hexBytes      `json:"confirmed_transcript_hash"`
	SignaturePriv           hexBytes      `json:"signature_priv"`
	SignaturePub            hexBytes      `json:"signature_pub"`
	EncryptionSecret        hexBytes      `json:"encryption_secret"`
	SenderDataSecret        hexBytes      `json:"sender_data_secret"`
	MembershipKey           hexBytes      `json:"membership_key"`
	Proposal                hexBytes      `json:"proposal"`
	ProposalPub             hexBytes      `json:"proposal_pub"`
	ProposalPriv            hexBytes      `json:"proposal_priv"`
	Commit                  hexBytes      `json:"commit"`
	CommitPub               hexBytes      `json:"commit_pub"`
	CommitPriv              hexBytes      `json:"commit_priv"`
	Application             hexBytes      `json:"application"`
	ApplicationPriv         hexBytes      `json:"application_priv"`
}

// contentBody re-encodes the select(content_type) part of FramedContent,
// which is what the vector's raw proposal/commit/application fields hold
// (application data without its length prefix).
func contentBody(t *testing.T, c *FramedContent) []byte {
	t.Helper()
	if c.ContentType == ContentTypeApplication {
		return c.ApplicationData
	}
	e := &encoder{}
	c.encodeBody(e)
	mustNoErr(t, e.err, "encode content")
	return e.buf
}

func decodeMLS(t *testing.T, b []byte, wf WireFormat) *MLSMessage {
	t.Helper()
	var m MLSMessage
	mustNoErr(t, m.Unmarshal(b), "decode MLSMessage")
	if m.WireFormat != wf {
		t.Fatalf("wire format %d, want %d", m.WireFormat, wf)
	}
	return &m
}

func TestMessageProtectionVectors(t *testing.T) {
	runVectors(t, "message-protection.json", func(c *messageProtectionCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *messageProtectionCase) {
			gc := &GroupContext{
				Version:                 ProtocolVersionMLS10,
				CipherSuite:             tc.CipherSuite,
				GroupID:                 tc.GroupID,
				Epoch:                   tc.Epoch,
				TreeHash:                tc.TreeHash,
				ConfirmedTranscriptHash: tc.ConfirmedTranscriptHash,
			}
			priv, pub, err := s.SignaturePrivateKeyFromBytes(tc.SignaturePriv)
			mustNoErr(t, err, "signature key")
			mustHex(t, pub, tc.SignaturePub, "signature_pub")
			keys := func(snd Sender) (SignaturePublicKey, error) {
				if snd.Type != SenderTypeMember || snd.LeafIndex != 1 {
					return nil, fmt.Errorf("unexpected sender %+v", snd)
				}
				return pub, nil
			}
			membership := NewSecret(tc.MembershipKey)
			senderData := NewSecret(tc.SenderDataSecret)
			newTree := func() *SecretTree {
				tree, err := NewSecretTree(s, NewSecret(tc.EncryptionSecret), 2)
				mustNoErr(t, err, "NewSecretTree")
				return tree
			}

			content := func(ct ContentType, raw []byte) *FramedContent {
				c := &FramedContent{
					GroupID: tc.GroupID, Epoch: tc.Epoch,
					Sender:      Sender{Type: SenderTypeMember, LeafIndex: 1},
					ContentType: ct,
				}
				d := newDecoder(raw)
				if ct == ContentTypeApplication {
					c.ApplicationData = raw
				} else {
					c.decodeBody(d)
					mustNoErr(t, d.finish(), "decode raw content")
				}
				return c
			}
			sign := func(wf WireFormat, c *FramedContent) *AuthenticatedContent {
				ac, err := s.SignContent(wf, c, gc, priv)
				mustNoErr(t, err, "SignContent")
				if c.ContentType == ContentTypeCommit {
					ac.Auth.ConfirmationTag = s.MAC([]byte("confirmation key"), []byte("transcript"))
				}
				return ac
			}

			for _, k := range []struct {
				name    string
				ct      ContentType
				raw     []byte
				pubMsg  []byte
				privMsg []byte
			}{
				{"proposal", ContentTypeProposal, tc.Proposal, tc.ProposalPub, tc.ProposalPriv},
				{"commit", ContentTypeCommit, tc.Commit, tc.CommitPub, tc.CommitPriv},
				{"application", ContentTypeApplication, tc.Application, nil, tc.ApplicationPriv},
			} {
				t.Run(k.name, func(t *testing.T) {
					if k.pubMsg != nil {
						m := decodeMLS(t, k.pubMsg, WireFormatPublicMessage)
						ac, err := s.UnprotectPublic(m.PublicMessage, gc, membership, keys)
						mustNoErr(t, err, "UnprotectPublic(vector)")
						mustHex(t, contentBody(t, &ac.Content), k.raw, "content of vector PublicMessage")
					}
					// Protect as PublicMessage (refused for application data).
					pm, err := s.ProtectPublic(sign(WireFormatPublicMessage, content(k.ct, k.raw)), gc, membership)
					if k.ct == ContentTypeApplication {
						if !errors.Is(err, ErrInvalidMessage) {
							t.Fatalf("ProtectPublic(application) err = %v, want ErrInvalidMessage", err)
						}
					} else {
						mustNoErr(t, err, "ProtectPublic")
						b, err := (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}).Marshal()
						mustNoErr(t, err, "encode")
						m := decodeMLS(t, b, WireFormatPublicMessage)
						ac, err := s.UnprotectPublic(m.PublicMessage, gc, membership, keys)
						mustNoErr(t, err, "UnprotectPublic(own)")
						mustHex(t, contentBody(t, &ac.Content), k.raw, "content of own PublicMessage")
						m.PublicMessage.MembershipTag[0] ^= 1
						if _, err := s.UnprotectPublic(m.PublicMessage, gc, membership, keys); !errors.Is(err, ErrBadMembershipTag) {
							t.Errorf("tampered membership tag: err = %v", err)
						}
					}

					m := decodeMLS(t, k.privMsg, WireFormatPrivateMessage)
					ac, err := s.UnprotectPrivate(m.PrivateMessage, gc, newTree(), senderData, keys)
					mustNoErr(t, err, "UnprotectPrivate(vector)")
					mustHex(t, contentBody(t, &ac.Content), k.raw, "content of vector PrivateMessage")

					sendTree, recvTree := newTree(), newTree()
					priv, err := s.ProtectPrivate(sign(WireFormatPrivateMessage, content(k.ct, k.raw)), sendTree, senderData, 17)
					mustNoErr(t, err, "ProtectPrivate")
					b, err := (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPrivateMessage, PrivateMessage: priv}).Marshal()
					mustNoErr(t, err, "encode")
					m = decodeMLS(t, b, WireFormatPrivateMessage)
					ac, err = s.UnprotectPrivate(m.PrivateMessage, gc, recvTree, senderData, keys)
					mustNoErr(t, err, "UnprotectPrivate(own)")
					mustHex(t, contentBody(t, &ac.Content), k.raw, "content of own PrivateMessage")
					if _, err := s.UnprotectPrivate(m.PrivateMessage, gc, recvTree, senderData, keys); !errors.Is(err, ErrGeneration) {
						t.Errorf("replayed PrivateMessage: err = %v, want ErrGeneration", err)
					}
					tampered := *m.PrivateMessage
					tampered.Ciphertext = bytes.Clone(tampered.Ciphertext)
					tampered.Ciphertext[len(tampered.Ciphertext)-1] ^= 1
					if _, err := s.UnprotectPrivate(&tampered, gc, newTree(), senderData, keys); !errors.Is(err, ErrDecrypt) {
						t.Errorf("tampered ciphertext: err = %v, want ErrDecrypt", err)
					}
				})
			}
		})
}

func TestPrivateContentPadding(t *testing.T) {
	// application_data<V> = "hi", signature<V> = 2 bytes, then padding.
	body := []byte{0x02, 'h', 'i', 0x02, 0xaa, 0xbb}
	for _, c := range []struct {
		pad  []byte
		want error
	}{{nil, nil}, {[]byte{0, 0, 0}, nil}, {[]byte{0, 1, 0}, ErrDecode}} {
		ac := &AuthenticatedContent{Content: FramedContent{ContentType: ContentTypeApplication}}
		err := decodePrivateContent(append(append([]byte{}, body...), c.pad...), ac)
		if !errors.Is(err, c.want) && !(err == nil && c.want == nil) {
			t.Errorf("padding %x: err = %v, want %v", c.pad, err, c.want)
		}
		if err == nil && string(ac.Content.ApplicationData) != "hi" {
			t.Errorf("padding %x: application data %q", c.pad, ac.Content.ApplicationData)
		}
	}
}

func TestSecretTreeLimits(t *testing.T) {
	s, _ := Suite(MLS128DHKEMX25519AES128GCMSHA256Ed25519)
	if _, err := NewSecretTree(s, NewSecret(make([]byte, 32)), 3); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("3 leaves: err = %v", err)
	}
	tree, err := NewSecretTree(s, NewSecret(make([]byte, 32)), 4)
	mustNoErr(t, err, "NewSecretTree")
	if _, err := tree.Get(0, RatchetApplication, MaxGenerationGap+1); !errors.Is(err, ErrGeneration) {
		t.Errorf("generation beyond the gap: err = %v", err)
	}
	if _, err := tree.Get(4, RatchetApplication, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("leaf outside the tree: err = %v", err)
	}
	g, sent, err := tree.Next(1, RatchetHandshake)
	mustNoErr(t, err, "Next")
	other, err := NewSecretTree(s, NewSecret(make([]byte, 32)), 4)
	mustNoErr(t, err, "NewSecretTree")
	got, err := other.Get(1, RatchetHandshake, g)
	mustNoErr(t, err, "Get")
	if !got.Key.Equal(sent.Key) || !got.Nonce.Equal(sent.Nonce) {
		t.Error("sender and receiver keys differ")
	}
}
