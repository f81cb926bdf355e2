package keylog

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// KeyIDSize is the size of a log key id.
const KeyIDSize = 8

// KeyID names a log key: the first 8 bytes of SHA-256 of its public key.
type KeyID [KeyIDSize]byte

func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// KeyIDOf derives a public key's id.
func KeyIDOf(pub ed25519.PublicKey) KeyID {
	sum := sha256.Sum256(pub)
	var id KeyID
	copy(id[:], sum[:KeyIDSize])
	return id
}

// HeadSize is the size of an encoded signed tree head.
const HeadSize = 1 + KeyIDSize + 8 + HashSize + 8 + ed25519.SignatureSize

const headVersion = 1

// headContext prefixes the signed bytes so no other qpc signature can be
// taken for a tree head.
const headContext = "qpc-keylog-head-v1\x00"

// Head is a signed tree head.
//
//	version (1) = 1
//	log_key_id (8)
//	tree_size (8)
//	root_hash (32)
//	timestamp_unix_ms (8)
//	signature (64) = Ed25519(log key, "qpc-keylog-head-v1" || 0x00 || the 57 bytes above)
type Head struct {
	KeyID     KeyID
	Size      uint64
	Root      Hash
	Time      time.Time // millisecond precision
	Signature [ed25519.SignatureSize]byte
}

func (h *Head) tbs() []byte {
	b := make([]byte, 0, len(headContext)+HeadSize-ed25519.SignatureSize)
	b = append(b, headContext...)
	b = append(b, headVersion)
	b = append(b, h.KeyID[:]...)
	b = binary.BigEndian.AppendUint64(b, h.Size)
	b = append(b, h.Root[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.Time.UnixMilli()))
	return b
}

// Marshal encodes the head (HeadSize bytes).
func (h *Head) Marshal() []byte {
	b := h.tbs()[len(headContext):]
	return append(b, h.Signature[:]...)
}

// ParseHead decodes a head without verifying it (Verify does).
func ParseHead(raw []byte) (*Head, error) {
	if len(raw) != HeadSize {
		return nil, fmt.Errorf("%w: tree head of %d bytes, want %d", ErrMalformed, len(raw), HeadSize)
	}
	if raw[0] != headVersion {
		return nil, fmt.Errorf("%w: tree head version %d", ErrMalformed, raw[0])
	}
	h := &Head{}
	p := raw[1:]
	copy(h.KeyID[:], p)
	p = p[KeyIDSize:]
	h.Size = binary.BigEndian.Uint64(p)
	p = p[8:]
	copy(h.Root[:], p)
	p = p[HashSize:]
	ms := binary.BigEndian.Uint64(p)
	if ms > 1<<62 {
		return nil, fmt.Errorf("%w: tree head time", ErrMalformed)
	}
	h.Time = time.UnixMilli(int64(ms))
	copy(h.Signature[:], p[8:])
	return h, nil
}

// Verify checks the head's signature under pub, which must be the key the
// head names.
func (h *Head) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: log key of %d bytes", ErrMalformed, len(pub))
	}
	if id := KeyIDOf(pub); subtle.ConstantTimeCompare(id[:], h.KeyID[:]) != 1 {
		return fmt.Errorf("%w: head names key %s, pinned key is %s", ErrWrongLogKey, h.KeyID, id)
	}
	if !ed25519.Verify(pub, h.tbs(), h.Signature[:]) {
		return ErrBadSignature
	}
	return nil
}

// SameView reports whether two heads of one size commit to the same tree.
func (h *Head) SameView(o *Head) bool {
	return h.Size == o.Size && subtle.ConstantTimeCompare(h.Root[:], o.Root[:]) == 1
}

// String is a short description for messages and logs.
func (h *Head) String() string {
	return fmt.Sprintf("head{size %d, root %x, %s, key %s}", h.Size, h.Root[:8], h.Time.UTC().Format(time.RFC3339), h.KeyID)
}

// Signer signs tree heads with a log key.
type Signer struct {
	id   KeyID
	pub  ed25519.PublicKey
	seed secret.Bytes
}

// NewSigner wraps a 32-byte Ed25519 seed (copied).
func NewSigner(seed []byte) (*Signer, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("keylog: log key seed of %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	defer secret.Wipe(priv)
	pub := append(ed25519.PublicKey(nil), priv[32:]...)
	return &Signer{id: KeyIDOf(pub), pub: pub, seed: secret.New(append([]byte(nil), seed...))}, nil
}

// KeyID is the signer's key id.
func (s *Signer) KeyID() KeyID { return s.id }

// Public is the log public key clients pin.
func (s *Signer) Public() ed25519.PublicKey { return append(ed25519.PublicKey(nil), s.pub...) }

// Sign makes the signed head of a tree of size with root at t.
func (s *Signer) Sign(size uint64, root Hash, t time.Time) *Head {
	h := &Head{KeyID: s.id, Size: size, Root: root, Time: time.UnixMilli(t.UnixMilli())}
	priv := ed25519.NewKeyFromSeed(s.seed.Reveal())
	defer secret.Wipe(priv)
	copy(h.Signature[:], ed25519.Sign(priv, h.tbs()))
	return h
}

// String never prints the key.
func (s *Signer) String() string { return "keylog signer " + s.id.String() }
