package mls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"

	"github.com/cloudflare/circl/sign/ed448"
)

// signatureScheme is the signature algorithm of a suite. Private keys are
// held in the scheme's signing form (for Ed25519 the 64-byte expanded key);
// the external form is the one of the MLS test vectors (the EdDSA seed, the
// big-endian ECDSA scalar). Public keys are the raw MLS encodings (EdDSA
// keys, uncompressed NIST points); ECDSA signatures are DER.
type signatureScheme interface {
	importPrivate(raw []byte) (sk, pub []byte, err error)
	exportPrivate(sk []byte) []byte
	generate(rnd io.Reader) (sk, pub []byte, err error)
	sign(sk, msg []byte) ([]byte, error)
	verify(pub, msg, sig []byte) bool
}

// ed25519Scheme is pure Ed25519 (RFC 8032), for suites 1 and 3.
type ed25519Scheme struct{}

func (ed25519Scheme) importPrivate(raw []byte) ([]byte, []byte, error) {
	if len(raw) != ed25519.SeedSize {
		return nil, nil, fmt.Errorf("%w: Ed25519 private key of %d bytes, want %d", ErrInvalidKey, len(raw), ed25519.SeedSize)
	}
	sk := ed25519.NewKeyFromSeed(raw)
	return sk, append([]byte(nil), sk[32:]...), nil
}

func (ed25519Scheme) exportPrivate(sk []byte) []byte {
	return append([]byte(nil), ed25519.PrivateKey(sk).Seed()...)
}

func (ed25519Scheme) generate(rnd io.Reader) ([]byte, []byte, error) {
	pub, sk, err := ed25519.GenerateKey(rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return sk, pub, nil
}

func (ed25519Scheme) sign(sk, msg []byte) ([]byte, error) {
	if len(sk) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: Ed25519 signing key unset", ErrInvalidKey)
	}
	return ed25519.Sign(ed25519.PrivateKey(sk), msg), nil
}

func (ed25519Scheme) verify(pub, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize {
		return false
	}
	return ed25519.Verify(ed25519.PublicKey(pub), msg, sig)
}

// ed448Scheme is pure Ed448 (RFC 8032, empty context), for suites 4 and 6.
type ed448Scheme struct{}

func (ed448Scheme) importPrivate(raw []byte) ([]byte, []byte, error) {
	if len(raw) != ed448.SeedSize {
		return nil, nil, fmt.Errorf("%w: Ed448 private key of %d bytes, want %d", ErrInvalidKey, len(raw), ed448.SeedSize)
	}
	sk := ed448.NewKeyFromSeed(raw)
	pub := sk.Public().(ed448.PublicKey)
	return []byte(sk), append([]byte(nil), pub...), nil
}

func (ed448Scheme) exportPrivate(sk []byte) []byte {
	return append([]byte(nil), ed448.PrivateKey(sk).Seed()...)
}

func (ed448Scheme) generate(rnd io.Reader) ([]byte, []byte, error) {
	pub, sk, err := ed448.GenerateKey(rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return []byte(sk), []byte(pub), nil
}

func (ed448Scheme) sign(sk, msg []byte) ([]byte, error) {
	if len(sk) != ed448.PrivateKeySize {
		return nil, fmt.Errorf("%w: Ed448 signing key unset", ErrInvalidKey)
	}
	return ed448.Sign(ed448.PrivateKey(sk), msg, ""), nil
}

func (ed448Scheme) verify(pub, msg, sig []byte) bool {
	if len(pub) != ed448.PublicKeySize || len(sig) != ed448.SignatureSize {
		return false
	}
	return ed448.Verify(ed448.PublicKey(pub), msg, sig, "")
}

// ecdsaScheme is ECDSA over a NIST curve with the suite's hash, for suites
// 2, 5 and 7. Private keys are kept as the raw scalar.
type ecdsaScheme struct {
	curve elliptic.Curve
	hash  crypto.Hash
}

func (e ecdsaScheme) parse(raw []byte) (*ecdsa.PrivateKey, error) {
	// Some encoders drop leading zero bytes of the scalar (the P-521
	// message-protection vector has 65 bytes); left-pad to the field size.
	if size := (e.curve.Params().BitSize + 7) / 8; len(raw) < size && len(raw) > 0 {
		raw = append(make([]byte, size-len(raw)), raw...)
	}
	k, err := ecdsa.ParseRawPrivateKey(e.curve, raw)
	if err != nil {
		return nil, fmt.Errorf("%w: ECDSA private key: %v", ErrInvalidKey, err)
	}
	return k, nil
}

func (e ecdsaScheme) importPrivate(raw []byte) ([]byte, []byte, error) {
	k, err := e.parse(raw)
	if err != nil {
		return nil, nil, err
	}
	pub, err := k.PublicKey.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	sk, err := k.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return sk, pub, nil
}

func (ecdsaScheme) exportPrivate(sk []byte) []byte { return append([]byte(nil), sk...) }

func (e ecdsaScheme) generate(rnd io.Reader) ([]byte, []byte, error) {
	k, err := ecdsa.GenerateKey(e.curve, rnd)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	sk, err := k.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	pub, err := k.PublicKey.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return sk, pub, nil
}

func (e ecdsaScheme) digest(msg []byte) []byte {
	h := e.hash.New()
	h.Write(msg)
	return h.Sum(nil)
}

func (e ecdsaScheme) sign(sk, msg []byte) ([]byte, error) {
	k, err := e.parse(sk)
	if err != nil {
		return nil, err
	}
	sig, err := ecdsa.SignASN1(rand.Reader, k, e.digest(msg))
	if err != nil {
		return nil, fmt.Errorf("%w: ECDSA sign: %v", ErrInvalidKey, err)
	}
	return sig, nil
}

func (e ecdsaScheme) verify(pub, msg, sig []byte) bool {
	k, err := ecdsa.ParseUncompressedPublicKey(e.curve, pub)
	if err != nil {
		return false
	}
	return ecdsa.VerifyASN1(k, e.digest(msg), sig)
}
