package mls

import (
	"crypto/hkdf"
	"encoding/binary"
	"fmt"
)

// A Welcome encrypts every joiner's GroupSecrets with the same HPKE info
// (EncryptContext{"Welcome", encrypted_group_info}), and the encrypted
// GroupInfo carries the ratchet tree, so hashing that info once per joiner
// makes a large Welcome quadratic. welcomeSealer runs the RFC 9180 base
// mode key schedule with info_hash computed once; the KEM encapsulation
// and the AEAD are circl's and the standard library's. Its output opens
// with DecryptWithLabel (tested against circl's receiver).
type welcomeSealer struct {
	s         *CipherSuite
	suiteID   []byte // "HPKE" || kem_id || kdf_id || aead_id
	scheduleC []byte // mode || psk_id_hash || info_hash
}

func (s *CipherSuite) newWelcomeSealer(info []byte) *welcomeSealer {
	kemID, kdfID, aeadID := s.hpke.Params()
	id := []byte("HPKE")
	id = binary.BigEndian.AppendUint16(id, uint16(kemID))
	id = binary.BigEndian.AppendUint16(id, uint16(kdfID))
	id = binary.BigEndian.AppendUint16(id, uint16(aeadID))
	w := &welcomeSealer{s: s, suiteID: id}
	ctx := []byte{0} // mode_base
	ctx = append(ctx, w.labeledExtract(nil, "psk_id_hash", nil)...)
	ctx = append(ctx, w.labeledExtract(nil, "info_hash", info)...)
	w.scheduleC = ctx
	return w
}

func (w *welcomeSealer) labeledExtract(salt []byte, label string, ikm []byte) []byte {
	in := make([]byte, 0, 7+len(w.suiteID)+len(label)+len(ikm))
	in = append(in, "HPKE-v1"...)
	in = append(in, w.suiteID...)
	in = append(in, label...)
	in = append(in, ikm...)
	prk, _ := hkdf.Extract(w.s.hash.New, in, salt) // cannot fail for HMAC
	return prk
}

func (w *welcomeSealer) labeledExpand(prk []byte, label string, info []byte, n int) ([]byte, error) {
	in := binary.BigEndian.AppendUint16(nil, uint16(n))
	in = append(in, "HPKE-v1"...)
	in = append(in, w.suiteID...)
	in = append(in, label...)
	in = append(in, info...)
	return hkdf.Expand(w.s.hash.New, prk, string(in), n)
}

// seal is SealBase(pub, info, "", plaintext).
func (w *welcomeSealer) seal(pub HPKEPublicKey, plaintext []byte) (HPKECiphertext, error) {
	s := w.s
	pk, err := s.kem.id.Scheme().UnmarshalBinaryPublicKey(pub)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: HPKE public key: %v", ErrInvalidKey, err)
	}
	enc, ss, err := s.kem.id.Scheme().Encapsulate(pk)
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	defer clear(ss)
	secret := w.labeledExtract(ss, "secret", nil)
	defer clear(secret)
	key, err := w.labeledExpand(secret, "key", w.scheduleC, s.Nk())
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	defer clear(key)
	nonce, err := w.labeledExpand(secret, "base_nonce", w.scheduleC, s.Nn())
	if err != nil {
		return HPKECiphertext{}, fmt.Errorf("%w: %v", ErrEncrypt, err)
	}
	ct, err := s.Seal(key, nonce, nil, plaintext)
	if err != nil {
		return HPKECiphertext{}, err
	}
	return HPKECiphertext{KEMOutput: enc, Ciphertext: ct}, nil
}
