package mls

import (
	"crypto"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	_ "crypto/sha256" // registers crypto.SHA256
	_ "crypto/sha512" // registers crypto.SHA384 and SHA512
	"fmt"
	"log/slog"
	"slices"

	"github.com/cloudflare/circl/hpke"
)

// CipherSuiteID is the uint16 MLS cipher suite identifier (RFC 9420 §17.1).
type CipherSuiteID uint16

// Cipher suites of RFC 9420 §17.1 (all implemented; the project's
// allowlist decides which are accepted).
const (
	MLS128DHKEMX25519AES128GCMSHA256Ed25519        CipherSuiteID = 1
	MLS128DHKEMP256AES128GCMSHA256P256             CipherSuiteID = 2
	MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519 CipherSuiteID = 3
	MLS256DHKEMX448AES256GCMSHA512Ed448            CipherSuiteID = 4
	MLS256DHKEMP521AES256GCMSHA512P521             CipherSuiteID = 5
	MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448     CipherSuiteID = 6
	MLS256DHKEMP384AES256GCMSHA384P384             CipherSuiteID = 7
)

// X-Wing hybrid suites (ML-KEM-768 + X25519, draft-connolly-cfrg-xwing-kem)
// in the private-use range of RFC 9420 §17.1. No X-Wing suite is
// IANA-registered; these are the code points ts-mls 2.0 uses, so the two
// implementations can talk (docs/mls.md "Cipher suites" says why).
const (
	MLS256XWingAES256GCMSHA512Ed25519        CipherSuiteID = 0xF00D
	MLS256XWingChaCha20Poly1305SHA512Ed25519 CipherSuiteID = 0xF00E
)

// CipherSuite provides the hash, KDF, MAC, AEAD, HPKE and signature
// algorithms of one MLS cipher suite, and the labelled operations of
// RFC 9420 §5 built on them. Obtain one with Suite; the value is immutable
// and safe for concurrent use.
type CipherSuite struct {
	id   CipherSuiteID
	hash crypto.Hash
	kem  kemParams
	aead hpke.AEAD
	hpke hpke.Suite
	sig  signatureScheme
}

// suites lists the implemented cipher suites (RFC 9420 §17.1). Adding a
// suite is one entry here: callers only ever see *CipherSuite.
var suites = map[CipherSuiteID]*CipherSuite{
	MLS128DHKEMX25519AES128GCMSHA256Ed25519: newSuite(MLS128DHKEMX25519AES128GCMSHA256Ed25519,
		crypto.SHA256, kemX25519, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES128GCM, ed25519Scheme{}),
	MLS128DHKEMP256AES128GCMSHA256P256: newSuite(MLS128DHKEMP256AES128GCMSHA256P256,
		crypto.SHA256, kemP256, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES128GCM, ecdsaScheme{elliptic.P256(), crypto.SHA256}),
	MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519: newSuite(MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519,
		crypto.SHA256, kemX25519, hpke.KDF_HKDF_SHA256, hpke.AEAD_ChaCha20Poly1305, ed25519Scheme{}),
	MLS256DHKEMX448AES256GCMSHA512Ed448: newSuite(MLS256DHKEMX448AES256GCMSHA512Ed448,
		crypto.SHA512, kemX448, hpke.KDF_HKDF_SHA512, hpke.AEAD_AES256GCM, ed448Scheme{}),
	MLS256DHKEMP521AES256GCMSHA512P521: newSuite(MLS256DHKEMP521AES256GCMSHA512P521,
		crypto.SHA512, kemP521, hpke.KDF_HKDF_SHA512, hpke.AEAD_AES256GCM, ecdsaScheme{elliptic.P521(), crypto.SHA512}),
	MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448: newSuite(MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448,
		crypto.SHA512, kemX448, hpke.KDF_HKDF_SHA512, hpke.AEAD_ChaCha20Poly1305, ed448Scheme{}),
	MLS256DHKEMP384AES256GCMSHA384P384: newSuite(MLS256DHKEMP384AES256GCMSHA384P384,
		crypto.SHA384, kemP384, hpke.KDF_HKDF_SHA384, hpke.AEAD_AES256GCM, ecdsaScheme{elliptic.P384(), crypto.SHA384}),
	MLS256XWingAES256GCMSHA512Ed25519: newSuite(MLS256XWingAES256GCMSHA512Ed25519,
		crypto.SHA512, kemXWing, hpke.KDF_HKDF_SHA512, hpke.AEAD_AES256GCM, ed25519Scheme{}),
	MLS256XWingChaCha20Poly1305SHA512Ed25519: newSuite(MLS256XWingChaCha20Poly1305SHA512Ed25519,
		crypto.SHA512, kemXWing, hpke.KDF_HKDF_SHA512, hpke.AEAD_ChaCha20Poly1305, ed25519Scheme{}),
}

// SuiteIDs returns the implemented suites in ascending order.
func SuiteIDs() []CipherSuiteID {
	ids := make([]CipherSuiteID, 0, len(suites))
	for id := range suites {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// PostQuantum reports whether the suite's KEM resists a quantum attacker
// (the X-Wing hybrids), which is what protects recorded traffic from
// being decrypted later ("harvest now, decrypt later").
func (s *CipherSuite) PostQuantum() bool { return s.kem.generic }

func newSuite(id CipherSuiteID, h crypto.Hash, kem kemParams, kdf hpke.KDF, aead hpke.AEAD, sig signatureScheme) *CipherSuite {
	return &CipherSuite{id: id, hash: h, kem: kem, aead: aead, hpke: hpke.NewSuite(kem.id, kdf, aead), sig: sig}
}

// Suite returns the implementation of cipher suite id, or an error wrapping
// ErrUnsupportedCipherSuite.
func Suite(id CipherSuiteID) (*CipherSuite, error) {
	s, ok := suites[id]
	if !ok {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedCipherSuite, id)
	}
	return s, nil
}

// ID is the suite's identifier.
func (s *CipherSuite) ID() CipherSuiteID { return s.id }

// Nh is the output size of the hash and of KDF.Extract.
func (s *CipherSuite) Nh() int { return s.hash.Size() }

// Nk is the AEAD key size.
func (s *CipherSuite) Nk() int { return int(s.aead.KeySize()) }

// Nn is the AEAD nonce size.
func (s *CipherSuite) Nn() int { return int(s.aead.NonceSize()) }

// Hash returns Hash(data).
func (s *CipherSuite) Hash(data []byte) []byte {
	h := s.hash.New()
	h.Write(data)
	return h.Sum(nil)
}

// MAC returns HMAC(key, data) with the suite's hash (RFC 9420 §5.2).
func (s *CipherSuite) MAC(key, data []byte) []byte {
	m := hmac.New(s.hash.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// VerifyMAC checks mac against MAC(key, data) in constant time.
func (s *CipherSuite) VerifyMAC(key, data, mac []byte) bool {
	return constantTimeEqual(s.MAC(key, data), mac)
}

// Extract is KDF.Extract(salt, ikm) = HMAC(salt, ikm) (RFC 5869; an empty
// salt is the same HMAC key as HashLen zero bytes).
func (s *CipherSuite) Extract(salt, ikm []byte) []byte {
	return s.MAC(salt, ikm)
}

// Expand is KDF.Expand(prk, info, length).
func (s *CipherSuite) Expand(prk, info []byte, length int) ([]byte, error) {
	out, err := hkdf.Expand(s.hash.New, prk, string(info), length)
	if err != nil {
		return nil, fmt.Errorf("%w: expand to %d bytes: %v", ErrInvalidArgument, length, err)
	}
	return out, nil
}

// ExpandWithLabel is RFC 9420 §5.1:
//
//	KDF.Expand(secret, KDFLabel{length, "MLS 1.0 " + label, context}, length)
func (s *CipherSuite) ExpandWithLabel(secret []byte, label string, context []byte, length int) ([]byte, error) {
	if length < 0 || length > 0xffff {
		return nil, fmt.Errorf("%w: ExpandWithLabel length %d", ErrInvalidArgument, length)
	}
	e := &encoder{buf: make([]byte, 0, 2+1+8+len(label)+2+len(context))}
	e.u16(uint16(length))
	e.opaque(labelBytes(label))
	e.opaque(context)
	if e.err != nil {
		return nil, e.err
	}
	return s.Expand(secret, e.buf, length)
}

// DeriveSecret is ExpandWithLabel(secret, label, "", Nh).
func (s *CipherSuite) DeriveSecret(secret []byte, label string) ([]byte, error) {
	return s.ExpandWithLabel(secret, label, nil, s.Nh())
}

// DeriveTreeSecret is ExpandWithLabel(secret, label, uint32 generation, length).
func (s *CipherSuite) DeriveTreeSecret(secret []byte, label string, generation uint32, length int) ([]byte, error) {
	var ctx [4]byte
	ctx[0], ctx[1], ctx[2], ctx[3] = byte(generation>>24), byte(generation>>16), byte(generation>>8), byte(generation)
	return s.ExpandWithLabel(secret, label, ctx[:], length)
}

// RefHash is Hash(RefHashInput{label, value}) (RFC 9420 §5.2). The label is
// used as given (e.g. "MLS 1.0 KeyPackage Reference").
func (s *CipherSuite) RefHash(label string, value []byte) ([]byte, error) {
	e := &encoder{}
	e.opaque([]byte(label))
	e.opaque(value)
	if e.err != nil {
		return nil, e.err
	}
	return s.Hash(e.buf), nil
}

func labelBytes(label string) []byte { return []byte("MLS 1.0 " + label) }

// signContent encodes SignContent{"MLS 1.0 " + label, content}.
func signContent(label string, content []byte) ([]byte, error) {
	e := &encoder{buf: make([]byte, 0, 8+len(label)+len(content)+8)}
	e.opaque(labelBytes(label))
	e.opaque(content)
	return e.buf, e.err
}

// SignWithLabel signs SignContent{"MLS 1.0 " + label, content} (RFC 9420 §5.1.2).
func (s *CipherSuite) SignWithLabel(priv SignaturePrivateKey, label string, content []byte) ([]byte, error) {
	msg, err := signContent(label, content)
	if err != nil {
		return nil, err
	}
	if priv.suite != s.id {
		return nil, fmt.Errorf("%w: signature key of suite %d used with suite %d", ErrInvalidKey, priv.suite, s.id)
	}
	return s.sig.sign(priv.sk.Bytes(), msg)
}

// signWithLabelAt is SignWithLabel(priv, label, buf[at:]) without copying
// the content: it writes the SignContent fields that precede the content
// into buf[:at], overwriting what the caller keeps there. A GroupInfo
// carrying the ratchet tree is megabytes in a large group, signed at
// every commit.
func (s *CipherSuite) signWithLabelAt(priv SignaturePrivateKey, label string, buf []byte, at int) ([]byte, error) {
	n := len(buf) - at
	if n > maxVarint {
		return nil, fmt.Errorf("%w: content of %d bytes exceeds 2^30-1", ErrEncode, n)
	}
	hdr := &encoder{}
	hdr.opaque(labelBytes(label))
	hdr.buf = appendVarint(hdr.buf, uint32(n))
	if hdr.err != nil || len(hdr.buf) > at {
		return s.SignWithLabel(priv, label, buf[at:])
	}
	if priv.suite != s.id {
		return nil, fmt.Errorf("%w: signature key of suite %d used with suite %d", ErrInvalidKey, priv.suite, s.id)
	}
	start := at - len(hdr.buf)
	copy(buf[start:at], hdr.buf)
	return s.sig.sign(priv.sk.Bytes(), buf[start:])
}

// VerifyWithLabel checks a SignWithLabel signature; failure wraps
// ErrInvalidSignature.
func (s *CipherSuite) VerifyWithLabel(pub SignaturePublicKey, label string, content, sig []byte) error {
	msg, err := signContent(label, content)
	if err != nil {
		return err
	}
	if !s.sig.verify(pub, msg, sig) {
		return fmt.Errorf("%w: %s", ErrInvalidSignature, label)
	}
	return nil
}

// encryptContext encodes EncryptContext{"MLS 1.0 " + label, context}.
func encryptContext(label string, context []byte) ([]byte, error) {
	e := &encoder{}
	e.opaque(labelBytes(label))
	e.opaque(context)
	return e.buf, e.err
}

// EncryptWithLabel is HPKE SealBase(pub, EncryptContext{label, context}, "",
// plaintext) (RFC 9420 §5.1.3).
func (s *CipherSuite) EncryptWithLabel(pub HPKEPublicKey, label string, context, plaintext []byte) (HPKECiphertext, error) {
	info, err := encryptContext(label, context)
	if err != nil {
		return HPKECiphertext{}, err
	}
	return s.encryptWithInfo(pub, info, plaintext)
}

// encryptWithInfo is EncryptWithLabel with the EncryptContext already
// encoded (a Welcome encrypts many GroupSecrets under one context).
func (s *CipherSuite) encryptWithInfo(pub HPKEPublicKey, info, plaintext []byte) (HPKECiphertext, error) {
	pk, err := s.kem.id.Scheme().UnmarshalBinaryPublicKey(pub)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: HPKE public key: %v", ErrInvalidKey, err)
	}
	sender, err := s.hpke.NewSender(pk, info)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	enc, sealer, err := sender.Setup(rand.Reader)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	ct, err := sealer.Seal(plaintext, nil)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	return HPKECiphertext{KEMOutput: enc, Ciphertext: ct}, nil
}

// DecryptWithLabel opens an EncryptWithLabel ciphertext; failure wraps
// ErrDecrypt.
func (s *CipherSuite) DecryptWithLabel(priv HPKEPrivateKey, label string, context []byte, ct HPKECiphertext) ([]byte, error) {
	if priv.suite != s.id {
		return nil, fmt.Errorf("%w: HPKE key of suite %d used with suite %d", ErrInvalidKey, priv.suite, s.id)
	}
	info, err := encryptContext(label, context)
	if err != nil {
		return nil, err
	}
	sk, err := s.kem.id.Scheme().UnmarshalBinaryPrivateKey(priv.sk.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%w: HPKE private key: %v", ErrInvalidKey, err)
	}
	recv, err := s.hpke.NewReceiver(sk, info)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	opener, err := recv.Setup(ct.KEMOutput)
	if err != nil {
		return nil, fmt.Errorf("%w: HPKE setup: %v", ErrDecrypt, err)
	}
	pt, err := opener.Open(ct.Ciphertext, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: HPKE open (%s)", ErrDecrypt, label)
	}
	return pt, nil
}

// Seal is AEAD.Seal(key, nonce, aad, plaintext).
func (s *CipherSuite) Seal(key, nonce, aad, plaintext []byte) ([]byte, error) {
	a, err := s.aead.New(key)
	if err != nil {
		return nil, fmt.Errorf("%w: AEAD key: %v", ErrInvalidKey, err)
	}
	if len(nonce) != a.NonceSize() {
		return nil, fmt.Errorf("%w: AEAD nonce of %d bytes", ErrInvalidKey, len(nonce))
	}
	return a.Seal(nil, nonce, plaintext, aad), nil
}

// Open is AEAD.Open(key, nonce, aad, ciphertext); failure wraps ErrDecrypt.
func (s *CipherSuite) Open(key, nonce, aad, ciphertext []byte) ([]byte, error) {
	a, err := s.aead.New(key)
	if err != nil {
		return nil, fmt.Errorf("%w: AEAD key: %v", ErrInvalidKey, err)
	}
	if len(nonce) != a.NonceSize() {
		return nil, fmt.Errorf("%w: AEAD nonce of %d bytes", ErrInvalidKey, len(nonce))
	}
	pt, err := a.Open(nil, nonce, ciphertext, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: AEAD open", ErrDecrypt)
	}
	return pt, nil
}

// GenerateHPKEKey returns a fresh HPKE key pair.
func (s *CipherSuite) GenerateHPKEKey() (HPKEPrivateKey, HPKEPublicKey, error) {
	pk, sk, err := s.kem.id.Scheme().GenerateKeyPair()
	if err != nil {
		return HPKEPrivateKey{}, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return s.hpkePair(sk.MarshalBinary, pk.MarshalBinary)
}

func (s *CipherSuite) hpkePair(skb, pkb func() ([]byte, error)) (HPKEPrivateKey, HPKEPublicKey, error) {
	rawSK, err := skb()
	if err != nil {
		return HPKEPrivateKey{}, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	rawPK, err := pkb()
	if err != nil {
		return HPKEPrivateKey{}, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return HPKEPrivateKey{suite: s.id, sk: adoptSecret(rawSK)}, rawPK, nil
}

// HPKEPrivateKeyFromBytes imports a private key in the KEM's
// SerializePrivateKey form and returns it with its public key.
func (s *CipherSuite) HPKEPrivateKeyFromBytes(raw []byte) (HPKEPrivateKey, HPKEPublicKey, error) {
	sch := s.kem.id.Scheme()
	if s.kem.nist && len(raw) < s.kem.nsk && len(raw) > 0 {
		// Some encoders drop leading zero bytes of the scalar.
		raw = append(make([]byte, s.kem.nsk-len(raw)), raw...)
	}
	sk, err := sch.UnmarshalBinaryPrivateKey(raw)
	if err != nil {
		return HPKEPrivateKey{}, nil, fmt.Errorf("%w: HPKE private key: %v", ErrInvalidKey, err)
	}
	pk := sk.Public()
	return s.hpkePair(sk.MarshalBinary, pk.MarshalBinary)
}

// SignaturePrivateKeyFromBytes imports a private key in the form of the MLS
// test vectors (Ed25519: the 32-byte seed) and returns it with its public key.
func (s *CipherSuite) SignaturePrivateKeyFromBytes(raw []byte) (SignaturePrivateKey, SignaturePublicKey, error) {
	sk, pub, err := s.sig.importPrivate(raw)
	if err != nil {
		return SignaturePrivateKey{}, nil, err
	}
	return SignaturePrivateKey{suite: s.id, sk: adoptSecret(sk)}, pub, nil
}

// GenerateSignatureKey returns a fresh signature key pair.
func (s *CipherSuite) GenerateSignatureKey() (SignaturePrivateKey, SignaturePublicKey, error) {
	sk, pub, err := s.sig.generate(rand.Reader)
	if err != nil {
		return SignaturePrivateKey{}, nil, err
	}
	return SignaturePrivateKey{suite: s.id, sk: adoptSecret(sk)}, pub, nil
}

// HPKEPublicKey is an HPKE public key in the KEM's SerializePublicKey form.
type HPKEPublicKey []byte

// SignaturePublicKey is a signature public key in the suite's encoding.
type SignaturePublicKey []byte

// HPKEPrivateKey is an HPKE private key. It prints as a redaction marker
// and is wiped by Wipe or when garbage collected.
type HPKEPrivateKey struct {
	suite CipherSuiteID
	sk    Secret
}

// Bytes returns the key in SerializePrivateKey form (aliasing the key).
func (k HPKEPrivateKey) Bytes() []byte { return k.sk.Bytes() }

// IsZero reports whether the key is unset.
func (k HPKEPrivateKey) IsZero() bool { return k.sk.Len() == 0 }

// clone returns an independent copy.
func (k HPKEPrivateKey) clone() HPKEPrivateKey {
	return HPKEPrivateKey{suite: k.suite, sk: k.sk.Clone()}
}

// Wipe zeroes the key.
func (k HPKEPrivateKey) Wipe() { k.sk.Wipe() }

// String, GoString, Format and LogValue never print the key.
func (k HPKEPrivateKey) String() string             { return "mls.HPKEPrivateKey" + redacted }
func (k HPKEPrivateKey) GoString() string           { return k.String() }
func (k HPKEPrivateKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }
func (k HPKEPrivateKey) LogValue() slog.Value       { return slog.StringValue(redacted) }

// SignaturePrivateKey is a signature private key. It prints as a redaction
// marker and is wiped by Wipe or when garbage collected.
type SignaturePrivateKey struct {
	suite CipherSuiteID
	sk    Secret
}

// Bytes returns the key in the form SignaturePrivateKeyFromBytes takes
// (a fresh copy for Ed25519).
func (k SignaturePrivateKey) Bytes() []byte {
	s, err := Suite(k.suite)
	if err != nil || k.IsZero() {
		return nil
	}
	return s.sig.exportPrivate(k.sk.Bytes())
}

// IsZero reports whether the key is unset.
func (k SignaturePrivateKey) IsZero() bool { return k.sk.Len() == 0 }

// Wipe zeroes the key.
func (k SignaturePrivateKey) Wipe() { k.sk.Wipe() }

// String, GoString, Format and LogValue never print the key.
func (k SignaturePrivateKey) String() string             { return "mls.SignaturePrivateKey" + redacted }
func (k SignaturePrivateKey) GoString() string           { return k.String() }
func (k SignaturePrivateKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }
func (k SignaturePrivateKey) LogValue() slog.Value       { return slog.StringValue(redacted) }
