package mls

import (
	"crypto"
	"crypto/hkdf"
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"github.com/cloudflare/circl/hpke"
)

// kemParams are what DeriveKeyPair (RFC 9180 §7.1.3) needs of a DHKEM:
// its KDF hash, private key size Nsk and, for the NIST curves, the bit mask
// applied to each candidate scalar's first byte. generic marks a KEM that is
// not a DHKEM (X-Wing): it derives keys its own way.
type kemParams struct {
	id      hpke.KEM
	hash    crypto.Hash
	nsk     int
	nist    bool
	bitmask byte
	generic bool
}

var (
	kemX25519 = kemParams{id: hpke.KEM_X25519_HKDF_SHA256, hash: crypto.SHA256, nsk: 32}
	kemX448   = kemParams{id: hpke.KEM_X448_HKDF_SHA512, hash: crypto.SHA512, nsk: 56}
	kemP256   = kemParams{id: hpke.KEM_P256_HKDF_SHA256, hash: crypto.SHA256, nsk: 32, nist: true, bitmask: 0xff}
	kemP384   = kemParams{id: hpke.KEM_P384_HKDF_SHA384, hash: crypto.SHA384, nsk: 48, nist: true, bitmask: 0xff}
	kemP521   = kemParams{id: hpke.KEM_P521_HKDF_SHA512, hash: crypto.SHA512, nsk: 66, nist: true, bitmask: 0x01}
	// kemXWing is X-Wing (HPKE KEM id 0x647a): private keys are the
	// 32-byte seed, public keys 1216 bytes, encapsulations 1120 bytes.
	kemXWing = kemParams{id: hpke.KEM_XWING, nsk: 32, generic: true}
)

// labeledExtract and labeledExpand are RFC 9180 §4 with suite_id
// "KEM" || I2OSP(kem_id, 2).
func (k kemParams) labeledExtract(salt []byte, label string, ikm []byte) ([]byte, error) {
	in := append(k.labelPrefix(), label...)
	in = append(in, ikm...)
	return hkdf.Extract(k.hash.New, in, salt)
}

func (k kemParams) labeledExpand(prk []byte, label string, info []byte, length int) ([]byte, error) {
	in := binary.BigEndian.AppendUint16(nil, uint16(length))
	in = append(in, k.labelPrefix()...)
	in = append(in, label...)
	in = append(in, info...)
	return hkdf.Expand(k.hash.New, prk, string(in), length)
}

func (k kemParams) labelPrefix() []byte {
	return []byte{'H', 'P', 'K', 'E', '-', 'v', '1', 'K', 'E', 'M', byte(k.id >> 8), byte(k.id)}
}

// DeriveKeyPair is the HPKE KEM.DeriveKeyPair(ikm) of RFC 9180 §7.1.3,
// used for external_pub and for TreeKEM node keys. It accepts ikm of any
// length (circl's own DeriveKeyPair insists on exactly its seed size and
// panics otherwise).
func (s *CipherSuite) DeriveKeyPair(ikm []byte) (HPKEPrivateKey, HPKEPublicKey, error) {
	k := s.kem
	sch := k.id.Scheme()
	if k.generic {
		return s.deriveGenericKeyPair(ikm)
	}
	prk, err := k.labeledExtract(nil, "dkp_prk", ikm)
	if err != nil {
		return HPKEPrivateKey{}, nil, fmt.Errorf("%w: DeriveKeyPair: %v", ErrInvalidArgument, err)
	}
	defer clear(prk)
	if !k.nist {
		raw, err := k.labeledExpand(prk, "sk", nil, k.nsk)
		if err != nil {
			return HPKEPrivateKey{}, nil, fmt.Errorf("%w: DeriveKeyPair: %v", ErrInvalidArgument, err)
		}
		defer clear(raw)
		return s.HPKEPrivateKeyFromBytes(raw)
	}
	for counter := 0; counter <= 255; counter++ {
		raw, err := k.labeledExpand(prk, "candidate", []byte{byte(counter)}, k.nsk)
		if err != nil {
			return HPKEPrivateKey{}, nil, fmt.Errorf("%w: DeriveKeyPair: %v", ErrInvalidArgument, err)
		}
		raw[0] &= k.bitmask
		if _, err := sch.UnmarshalBinaryPrivateKey(raw); err == nil { // rejects 0 and >= order
			defer clear(raw)
			return s.HPKEPrivateKeyFromBytes(raw)
		}
		clear(raw)
	}
	return HPKEPrivateKey{}, nil, fmt.Errorf("%w: DeriveKeyPair found no valid scalar", ErrInvalidKey)
}

// deriveGenericKeyPair is X-Wing's HPKE DeriveKeyPair: the 32-byte seed is
// SHAKE256(ikm, 32) and the key pair is expanded from it
// (draft-connolly-cfrg-xwing-kem, "Use in HPKE"). circl's HPKE wrapper for
// X-Wing computes exactly that for any ikm length; the seed it derives is
// the private key's serialisation, so MarshalBinary gives it back.
func (s *CipherSuite) deriveGenericKeyPair(ikm []byte) (HPKEPrivateKey, HPKEPublicKey, error) {
	if len(ikm) == 0 {
		return HPKEPrivateKey{}, nil, fmt.Errorf("%w: DeriveKeyPair with empty ikm", ErrInvalidArgument)
	}
	pk, sk := s.kem.id.Scheme().DeriveKeyPair(ikm)
	return s.hpkePair(sk.MarshalBinary, pk.MarshalBinary)
}

// hpkeExportSend sets up an HPKE base-mode sender to pub with empty info
// and exports the external init secret (RFC 9420 §8.3).
func (s *CipherSuite) hpkeExportSend(pub HPKEPublicKey) ([]byte, Secret, error) {
	pk, err := s.kem.id.Scheme().UnmarshalBinaryPublicKey(pub)
	if err != nil {
		return nil, Secret{}, fmt.Errorf("%w: external_pub: %v", ErrInvalidKey, err)
	}
	snd, err := s.hpke.NewSender(pk, nil)
	if err != nil {
		return nil, Secret{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	enc, sealer, err := snd.Setup(rand.Reader)
	if err != nil {
		return nil, Secret{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	return enc, adoptSecret(sealer.Export([]byte("MLS 1.0 external init secret"), uint(s.Nh()))), nil
}

// hpkeExportReceive is the receiving side of hpkeExportSend.
func (s *CipherSuite) hpkeExportReceive(priv HPKEPrivateKey, kemOutput []byte) (Secret, error) {
	sk, err := s.kem.id.Scheme().UnmarshalBinaryPrivateKey(priv.Bytes())
	if err != nil {
		return Secret{}, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	rcv, err := s.hpke.NewReceiver(sk, nil)
	if err != nil {
		return Secret{}, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	opener, err := rcv.Setup(kemOutput)
	if err != nil {
		return Secret{}, fmt.Errorf("%w: external init: %v", ErrDecrypt, err)
	}
	return adoptSecret(opener.Export([]byte("MLS 1.0 external init secret"), uint(s.Nh()))), nil
}
