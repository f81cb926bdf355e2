package mls

import (
	"testing"
)

// Benchmarks of the MLS primitives for suite 1; figures are recorded in
// docs/benchmarks.md ("MLS primitives").

func benchSuite(b *testing.B) *CipherSuite {
	b.Helper()
	s, err := Suite(MLS128DHKEMX25519AES128GCMSHA256Ed25519)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkSignWithLabel(b *testing.B) {
	s := benchSuite(b)
	priv, _, err := s.GenerateSignatureKey()
	if err != nil {
		b.Fatal(err)
	}
	content := make([]byte, 256)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.SignWithLabel(priv, "FramedContentTBS", content); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyWithLabel(b *testing.B) {
	s := benchSuite(b)
	priv, pub, err := s.GenerateSignatureKey()
	if err != nil {
		b.Fatal(err)
	}
	content := make([]byte, 256)
	sig, err := s.SignWithLabel(priv, "FramedContentTBS", content)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.VerifyWithLabel(pub, "FramedContentTBS", content, sig); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHPKESeal(b *testing.B) {
	s := benchSuite(b)
	_, pub, err := s.GenerateHPKEKey()
	if err != nil {
		b.Fatal(err)
	}
	pt := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.EncryptWithLabel(pub, "UpdatePathNode", []byte("context"), pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHPKEOpen(b *testing.B) {
	s := benchSuite(b)
	priv, pub, err := s.GenerateHPKEKey()
	if err != nil {
		b.Fatal(err)
	}
	ct, err := s.EncryptWithLabel(pub, "UpdatePathNode", []byte("context"), make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.DecryptWithLabel(priv, "UpdatePathNode", []byte("context"), ct); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExpandWithLabel(b *testing.B) {
	s := benchSuite(b)
	secret := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.ExpandWithLabel(secret, "key", []byte("context"), 16); err != nil {
			b.Fatal(err)
		}
	}
}

// privateBench sets up a two-member group epoch for PrivateMessage
// benchmarks: member 1 sends 1 KiB application messages.
type privateBench struct {
	s          *CipherSuite
	gc         *GroupContext
	priv       SignaturePrivateKey
	keys       SenderKeyFunc
	encryption Secret
	senderData Secret
	content    *FramedContent
}

func newPrivateBench(b *testing.B) *privateBench {
	s := benchSuite(b)
	priv, pub, err := s.GenerateSignatureKey()
	if err != nil {
		b.Fatal(err)
	}
	gid := make([]byte, 32)
	return &privateBench{
		s:          s,
		gc:         &GroupContext{Version: ProtocolVersionMLS10, CipherSuite: s.ID(), GroupID: gid, Epoch: 7, TreeHash: make([]byte, 32), ConfirmedTranscriptHash: make([]byte, 32)},
		priv:       priv,
		keys:       func(Sender) (SignaturePublicKey, error) { return pub, nil },
		encryption: NewSecret(make([]byte, 32)),
		senderData: NewSecret(make([]byte, 32)),
		content: &FramedContent{GroupID: gid, Epoch: 7, Sender: Sender{Type: SenderTypeMember, LeafIndex: 1},
			ContentType: ContentTypeApplication, ApplicationData: make([]byte, 1024)},
	}
}

func (p *privateBench) tree(b *testing.B) *SecretTree {
	t, err := NewSecretTree(p.s, p.encryption, 2)
	if err != nil {
		b.Fatal(err)
	}
	return t
}

// protect signs and encrypts one message (what a sender does per message).
func (p *privateBench) protect(b *testing.B, tree *SecretTree) *PrivateMessage {
	ac, err := p.s.SignContent(WireFormatPrivateMessage, p.content, p.gc, p.priv)
	if err != nil {
		b.Fatal(err)
	}
	m, err := p.s.ProtectPrivate(ac, tree, p.senderData, 0)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

func BenchmarkPrivateMessageProtect1KiB(b *testing.B) {
	p := newPrivateBench(b)
	tree := p.tree(b)
	b.ReportAllocs()
	b.SetBytes(1024)
	for b.Loop() {
		p.protect(b, tree)
	}
}

func BenchmarkPrivateMessageUnprotect1KiB(b *testing.B) {
	p := newPrivateBench(b)
	send, recv := p.tree(b), p.tree(b)
	msgs := make([]*PrivateMessage, b.N)
	for i := range msgs {
		msgs[i] = p.protect(b, send)
	}
	b.ReportAllocs()
	b.SetBytes(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.s.UnprotectPrivate(msgs[i], p.gc, recv, p.senderData, p.keys); err != nil {
			b.Fatal(err)
		}
	}
}
