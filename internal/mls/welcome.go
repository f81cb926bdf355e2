package mls

import (
	"fmt"
	"slices"
)

// Welcome, GroupInfo and GroupSecrets (RFC 9420 §12.4.3).

// GroupInfo describes a group to a joiner (RFC 9420 §12.4.3).
type GroupInfo struct {
	GroupContext    GroupContext
	Extensions      []Extension
	ConfirmationTag []byte
	Signer          uint32
	Signature       []byte
}

func (g *GroupInfo) encodeContent(e *encoder) {
	g.GroupContext.encode(e)
	encodeExtensions(e, g.Extensions)
	e.opaque(g.ConfirmationTag)
	e.u32(g.Signer)
}

// encodeContentWithTree is encodeContent with extension treeExt (its Data
// empty) being the ratchet tree t, of encoded length treeLen, written
// straight into e; that extension's Data is then set to the written
// bytes. A 10 000-member tree is megabytes, encoded at every commit.
func (g *GroupInfo) encodeContentWithTree(e *encoder, treeExt int, t *ratchetTree, treeLen int) {
	g.GroupContext.encode(e)
	size := 0
	for i := range g.Extensions {
		n := len(g.Extensions[i].Data)
		if i == treeExt {
			n = treeLen
		}
		size += 2 + varintLen(n) + n
	}
	if treeLen > maxVarint || size > maxVarint {
		e.fail("GroupInfo extensions of %d bytes exceed 2^30-1", size)
		return
	}
	e.buf = slices.Grow(e.buf, varintLen(size)+size)
	e.buf = appendVarint(e.buf, uint32(size))
	for i := range g.Extensions {
		e.u16(uint16(g.Extensions[i].Type))
		if i != treeExt {
			e.opaque(g.Extensions[i].Data)
			continue
		}
		e.buf = appendVarint(e.buf, uint32(treeLen))
		start := len(e.buf)
		t.encodePublic(e)
		if len(e.buf)-start != treeLen && e.err == nil {
			e.fail("ratchet tree encoded to %d bytes, expected %d", len(e.buf)-start, treeLen)
		}
		g.Extensions[i].Data = e.buf[start:len(e.buf):len(e.buf)]
	}
	e.opaque(g.ConfirmationTag)
	e.u32(g.Signer)
}

func (g *GroupInfo) encode(e *encoder) {
	g.encodeContent(e)
	e.opaque(g.Signature)
}

func (g *GroupInfo) decode(d *decoder) {
	g.GroupContext.decode(d)
	g.Extensions = decodeExtensions(d)
	g.ConfirmationTag = d.opaque()
	g.Signer = d.u32()
	g.Signature = d.opaque()
}

// TBS returns GroupInfoTBS, the signed part of the GroupInfo.
func (g *GroupInfo) TBS() ([]byte, error) {
	e := &encoder{}
	g.encodeContent(e)
	return e.buf, e.err
}

// PathSecret is the path secret a joiner gets for the lowest common
// ancestor of itself and the committer.
type PathSecret struct {
	PathSecret Secret
}

// GroupSecrets is what a Welcome encrypts to each joiner (RFC 9420 §12.4.3).
type GroupSecrets struct {
	JoinerSecret Secret
	PathSecret   *PathSecret
	PSKs         []PreSharedKeyID
}

func (g *GroupSecrets) encode(e *encoder) {
	e.opaque(g.JoinerSecret.Bytes())
	e.optional(g.PathSecret != nil, func(e *encoder) { e.opaque(g.PathSecret.PathSecret.Bytes()) })
	e.vector(func(e *encoder) {
		for i := range g.PSKs {
			g.PSKs[i].encode(e)
		}
	})
}

func (g *GroupSecrets) decode(d *decoder) {
	g.JoinerSecret = d.secret()
	if d.optional() {
		g.PathSecret = &PathSecret{PathSecret: d.secret()}
	}
	d.vector(func(d *decoder) {
		var p PreSharedKeyID
		p.decode(d)
		g.PSKs = append(g.PSKs, p)
	})
}

// Wipe zeroes the secrets.
func (g *GroupSecrets) Wipe() {
	g.JoinerSecret.Wipe()
	if g.PathSecret != nil {
		g.PathSecret.PathSecret.Wipe()
	}
}

// EncryptedGroupSecrets is GroupSecrets encrypted to one joiner's
// KeyPackage init key.
type EncryptedGroupSecrets struct {
	NewMember             []byte // KeyPackageRef
	EncryptedGroupSecrets HPKECiphertext
}

func (s *EncryptedGroupSecrets) encode(e *encoder) {
	e.opaque(s.NewMember)
	s.EncryptedGroupSecrets.encode(e)
}

func (s *EncryptedGroupSecrets) decode(d *decoder) {
	s.NewMember = d.opaque()
	s.EncryptedGroupSecrets.decode(d)
}

// Welcome adds new members to a group (RFC 9420 §12.4.3).
type Welcome struct {
	CipherSuite        CipherSuiteID
	Secrets            []EncryptedGroupSecrets
	EncryptedGroupInfo []byte
}

func (w *Welcome) encode(e *encoder) {
	e.u16(uint16(w.CipherSuite))
	e.vector(func(e *encoder) {
		for i := range w.Secrets {
			w.Secrets[i].encode(e)
		}
	})
	e.opaque(w.EncryptedGroupInfo)
}

func (w *Welcome) decode(d *decoder) {
	w.CipherSuite = CipherSuiteID(d.u16())
	d.vector(func(d *decoder) {
		var s EncryptedGroupSecrets
		s.decode(d)
		w.Secrets = append(w.Secrets, s)
	})
	w.EncryptedGroupInfo = d.opaque()
}

// SignGroupInfo sets gi.Signature: SignWithLabel(., "GroupInfoTBS", GroupInfoTBS).
func (s *CipherSuite) SignGroupInfo(gi *GroupInfo, priv SignaturePrivateKey) error {
	tbs, err := gi.TBS()
	if err != nil {
		return err
	}
	sig, err := s.SignWithLabel(priv, "GroupInfoTBS", tbs)
	if err != nil {
		return err
	}
	gi.Signature = sig
	return nil
}

// VerifyGroupInfo checks gi's signature by the signer's key; failure wraps
// ErrInvalidSignature.
func (s *CipherSuite) VerifyGroupInfo(gi *GroupInfo, signerPub SignaturePublicKey) error {
	tbs, err := gi.TBS()
	if err != nil {
		return err
	}
	return s.VerifyWithLabel(signerPub, "GroupInfoTBS", tbs, gi.Signature)
}

// EncryptGroupInfo encrypts gi under the key and nonce derived from
// welcome_secret (RFC 9420 §12.4.3.1), for Welcome.EncryptedGroupInfo.
func (s *CipherSuite) EncryptGroupInfo(gi *GroupInfo, welcomeSecret Secret) ([]byte, error) {
	pt, err := gi.Marshal()
	if err != nil {
		return nil, err
	}
	kn, err := s.WelcomeKeyNonce(welcomeSecret)
	if err != nil {
		return nil, err
	}
	defer kn.Wipe()
	return s.Seal(kn.Key.Bytes(), kn.Nonce.Bytes(), nil, pt)
}

// EncryptGroupSecrets encrypts gs to the init key of kp:
// EncryptWithLabel(init_key, "Welcome", encrypted_group_info, group_secrets).
func (s *CipherSuite) EncryptGroupSecrets(kp *KeyPackage, gs *GroupSecrets, encryptedGroupInfo []byte) (EncryptedGroupSecrets, error) {
	info, err := encryptContext("Welcome", encryptedGroupInfo)
	if err != nil {
		return EncryptedGroupSecrets{}, err
	}
	return s.encryptGroupSecrets(kp, gs, s.newWelcomeSealer(info))
}

// encryptGroupSecrets is EncryptGroupSecrets with the HPKE key schedule
// context for ("Welcome", encrypted_group_info) already computed.
func (s *CipherSuite) encryptGroupSecrets(kp *KeyPackage, gs *GroupSecrets, w *welcomeSealer) (EncryptedGroupSecrets, error) {
	ref, err := kp.Ref(s)
	if err != nil {
		return EncryptedGroupSecrets{}, err
	}
	pt, err := gs.Marshal()
	if err != nil {
		return EncryptedGroupSecrets{}, err
	}
	defer clear(pt)
	ct, err := w.seal(kp.InitKey, pt)
	if err != nil {
		return EncryptedGroupSecrets{}, err
	}
	return EncryptedGroupSecrets{NewMember: ref, EncryptedGroupSecrets: ct}, nil
}

// DecryptGroupSecrets finds the entry of w addressed to the KeyPackage
// with reference kpRef and decrypts it with that KeyPackage's init private
// key. No entry gives an error wrapping ErrNotFound.
func (s *CipherSuite) DecryptGroupSecrets(w *Welcome, kpRef []byte, initPriv HPKEPrivateKey) (*GroupSecrets, error) {
	if w.CipherSuite != s.id {
		return nil, fmt.Errorf("%w: Welcome for cipher suite %d, not %d", ErrInvalidMessage, w.CipherSuite, s.id)
	}
	for i := range w.Secrets {
		e := &w.Secrets[i]
		if !constantTimeEqual(e.NewMember, kpRef) {
			continue
		}
		pt, err := s.DecryptWithLabel(initPriv, "Welcome", w.EncryptedGroupInfo, e.EncryptedGroupSecrets)
		if err != nil {
			return nil, fmt.Errorf("group secrets: %w", err)
		}
		defer clear(pt)
		gs := new(GroupSecrets)
		if err := gs.Unmarshal(pt); err != nil {
			return nil, fmt.Errorf("group secrets: %w", err)
		}
		return gs, nil
	}
	return nil, fmt.Errorf("%w: no group secrets for this KeyPackage in the Welcome", ErrNotFound)
}

// DecryptGroupInfo decrypts w's GroupInfo with the welcome_secret derived
// from joiner_secret and psk_secret (empty for no PSKs). It does not verify
// the GroupInfo: see VerifyGroupInfo and VerifyWelcomeConfirmation.
func (s *CipherSuite) DecryptGroupInfo(w *Welcome, joinerSecret, pskSecret Secret) (*GroupInfo, error) {
	gi, _, err := s.decryptGroupInfo(w, joinerSecret, pskSecret)
	return gi, err
}

// decryptGroupInfo is DecryptGroupInfo that also returns the GroupInfoTBS
// as received (the plaintext up to the signature), which the codec being
// canonical makes equal to gi.TBS() without encoding the GroupInfo, ratchet
// tree included, again.
func (s *CipherSuite) decryptGroupInfo(w *Welcome, joinerSecret, pskSecret Secret) (*GroupInfo, []byte, error) {
	ws, err := s.WelcomeSecret(joinerSecret, pskSecret)
	if err != nil {
		return nil, nil, err
	}
	defer ws.Wipe()
	kn, err := s.WelcomeKeyNonce(ws)
	if err != nil {
		return nil, nil, err
	}
	defer kn.Wipe()
	pt, err := s.Open(kn.Key.Bytes(), kn.Nonce.Bytes(), nil, w.EncryptedGroupInfo)
	if err != nil {
		return nil, nil, fmt.Errorf("group info: %w", err)
	}
	gi := new(GroupInfo)
	if err := gi.Unmarshal(pt); err != nil {
		return nil, nil, fmt.Errorf("group info: %w", err)
	}
	if gi.GroupContext.CipherSuite != s.id {
		return nil, nil, fmt.Errorf("%w: GroupInfo for cipher suite %d in a Welcome for %d", ErrInvalidMessage, gi.GroupContext.CipherSuite, s.id)
	}
	tbs := pt[:len(pt)-varintLen(len(gi.Signature))-len(gi.Signature)]
	return gi, tbs, nil
}

// VerifyWelcomeConfirmation derives the epoch secrets of the group a
// Welcome joins and checks gi's confirmation tag against them; it returns
// the epoch secrets for the joiner to keep. Failure wraps
// ErrBadConfirmationTag.
func (s *CipherSuite) VerifyWelcomeConfirmation(gi *GroupInfo, joinerSecret, pskSecret Secret) (*EpochSecrets, error) {
	es, err := s.EpochSecrets(joinerSecret, pskSecret, &gi.GroupContext)
	if err != nil {
		return nil, err
	}
	if err := s.VerifyConfirmationTag(es.ConfirmationKey, gi.GroupContext.ConfirmedTranscriptHash, gi.ConfirmationTag); err != nil {
		es.Wipe()
		return nil, err
	}
	return es, nil
}
