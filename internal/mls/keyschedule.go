package mls

import "fmt"

// The key schedule of RFC 9420 §8:
//
//	                 init_secret_[n-1]
//	                       |
//	                       V
//	commit_secret --> KDF.Extract
//	                       |
//	                       V
//	             ExpandWithLabel(., "joiner", GroupContext_[n], KDF.Nh)
//	                       |
//	                       V
//	                  joiner_secret
//	                       |
//	                       V
//	psk_secret (or 0) --> KDF.Extract
//	                       |
//	                       +--> DeriveSecret(., "welcome") = welcome_secret
//	                       |
//	                       V
//	             ExpandWithLabel(., "epoch", GroupContext_[n], KDF.Nh)
//	                       |
//	                       V
//	                  epoch_secret
//	                       |
//	                       +--> DeriveSecret(., <label>) = <secret>
//	                       |
//	                       V
//	                 DeriveSecret(., "init")
//	                       |
//	                       V
//	                 init_secret_[n]

// EpochSecrets are the secrets of one epoch, derived from epoch_secret
// (RFC 9420 §8, table 4). Wipe them when the epoch is left.
type EpochSecrets struct {
	suite *CipherSuite

	SenderDataSecret   Secret
	EncryptionSecret   Secret
	ExporterSecret     Secret
	ExternalSecret     Secret
	ConfirmationKey    Secret
	MembershipKey      Secret
	ResumptionPSK      Secret
	EpochAuthenticator Secret
	InitSecret         Secret // init_secret for the next epoch
}

// Wipe zeroes every secret.
func (e *EpochSecrets) Wipe() {
	for _, s := range []Secret{e.SenderDataSecret, e.EncryptionSecret, e.ExporterSecret, e.ExternalSecret,
		e.ConfirmationKey, e.MembershipKey, e.ResumptionPSK, e.EpochAuthenticator, e.InitSecret} {
		s.Wipe()
	}
}

// JoinerSecret computes joiner_secret from the previous epoch's
// init_secret, the commit_secret (an empty Secret stands for the Nh zero
// bytes of a commit without a path) and the new epoch's GroupContext.
func (s *CipherSuite) JoinerSecret(initSecret, commitSecret Secret, gc *GroupContext) (Secret, error) {
	ctx, err := gc.Marshal()
	if err != nil {
		return Secret{}, err
	}
	commit := commitSecret.Bytes()
	if len(commit) == 0 {
		commit = make([]byte, s.Nh())
	}
	prk := s.Extract(initSecret.Bytes(), commit)
	defer clear(prk)
	out, err := s.ExpandWithLabel(prk, "joiner", ctx, s.Nh())
	if err != nil {
		return Secret{}, err
	}
	return adoptSecret(out), nil
}

// joinerExtract is KDF.Extract(joiner_secret, psk_secret); an empty
// pskSecret means no PSKs (Nh zero bytes).
func (s *CipherSuite) joinerExtract(joinerSecret, pskSecret Secret) []byte {
	psk := pskSecret.Bytes()
	if len(psk) == 0 {
		psk = make([]byte, s.Nh())
	}
	return s.Extract(joinerSecret.Bytes(), psk)
}

// WelcomeSecret computes welcome_secret from joiner_secret and psk_secret
// (empty for no PSKs).
func (s *CipherSuite) WelcomeSecret(joinerSecret, pskSecret Secret) (Secret, error) {
	prk := s.joinerExtract(joinerSecret, pskSecret)
	defer clear(prk)
	out, err := s.DeriveSecret(prk, "welcome")
	if err != nil {
		return Secret{}, err
	}
	return adoptSecret(out), nil
}

// EpochSecrets derives the epoch's secrets from joiner_secret, psk_secret
// (empty for no PSKs) and the epoch's GroupContext. A joiner calls it with
// the joiner_secret from its Welcome; a member with JoinerSecret's result.
func (s *CipherSuite) EpochSecrets(joinerSecret, pskSecret Secret, gc *GroupContext) (*EpochSecrets, error) {
	ctx, err := gc.Marshal()
	if err != nil {
		return nil, err
	}
	prk := s.joinerExtract(joinerSecret, pskSecret)
	defer clear(prk)
	epoch, err := s.ExpandWithLabel(prk, "epoch", ctx, s.Nh())
	if err != nil {
		return nil, err
	}
	defer clear(epoch)
	e := &EpochSecrets{suite: s}
	for _, d := range []struct {
		dst   *Secret
		label string
	}{
		{&e.SenderDataSecret, "sender data"},
		{&e.EncryptionSecret, "encryption"},
		{&e.ExporterSecret, "exporter"},
		{&e.ExternalSecret, "external"},
		{&e.ConfirmationKey, "confirm"},
		{&e.MembershipKey, "membership"},
		{&e.ResumptionPSK, "resumption"},
		{&e.EpochAuthenticator, "authentication"},
		{&e.InitSecret, "init"},
	} {
		out, err := s.DeriveSecret(epoch, d.label)
		if err != nil {
			e.Wipe()
			return nil, err
		}
		*d.dst = adoptSecret(out)
	}
	return e, nil
}

// Export is MLS-Exporter(label, context, length) (RFC 9420 §8.5):
// ExpandWithLabel(DeriveSecret(exporter_secret, label), "exported",
// Hash(context), length).
func (e *EpochSecrets) Export(label string, context []byte, length int) (Secret, error) {
	s := e.suite
	derived, err := s.DeriveSecret(e.ExporterSecret.Bytes(), label)
	if err != nil {
		return Secret{}, err
	}
	defer clear(derived)
	out, err := s.ExpandWithLabel(derived, "exported", s.Hash(context), length)
	if err != nil {
		return Secret{}, err
	}
	return adoptSecret(out), nil
}

// ExternalKeyPair is KEM.DeriveKeyPair(external_secret): the key pair whose
// public half goes into the external_pub extension (RFC 9420 §8.3).
func (e *EpochSecrets) ExternalKeyPair() (HPKEPrivateKey, HPKEPublicKey, error) {
	return e.suite.DeriveKeyPair(e.ExternalSecret.Bytes())
}

// WelcomeKeyNonce derives the AEAD key and nonce that encrypt the
// GroupInfo in a Welcome (RFC 9420 §12.4.3.1).
func (s *CipherSuite) WelcomeKeyNonce(welcomeSecret Secret) (KeyNonce, error) {
	k, err := s.ExpandWithLabel(welcomeSecret.Bytes(), "key", nil, s.Nk())
	if err != nil {
		return KeyNonce{}, err
	}
	n, err := s.ExpandWithLabel(welcomeSecret.Bytes(), "nonce", nil, s.Nn())
	if err != nil {
		clear(k)
		return KeyNonce{}, err
	}
	return KeyNonce{Key: adoptSecret(k), Nonce: adoptSecret(n)}, nil
}

// PSKWithID is a pre-shared key and the PreSharedKeyID naming it.
type PSKWithID struct {
	ID  PreSharedKeyID
	PSK Secret
}

// PSKSecret combines pre-shared keys into psk_secret (RFC 9420 §8.4):
//
//	psk_extracted_[i] = KDF.Extract(0, psk_[i])
//	psk_input_[i] = ExpandWithLabel(psk_extracted_[i], "derived psk", PSKLabel, KDF.Nh)
//	psk_secret_[i] = KDF.Extract(psk_input_[i], psk_secret_[i-1])
//
// with psk_secret_[0] = 0. No PSKs give Nh zero bytes.
func (s *CipherSuite) PSKSecret(psks []PSKWithID) (Secret, error) {
	if len(psks) > 0xffff {
		return Secret{}, fmt.Errorf("%w: %d PSKs", ErrInvalidArgument, len(psks))
	}
	acc := make([]byte, s.Nh())
	zero := make([]byte, s.Nh())
	for i := range psks {
		e := &encoder{}
		psks[i].ID.encode(e)
		e.u16(uint16(i))
		e.u16(uint16(len(psks)))
		if e.err != nil {
			clear(acc)
			return Secret{}, e.err
		}
		extracted := s.Extract(zero, psks[i].PSK.Bytes())
		input, err := s.ExpandWithLabel(extracted, "derived psk", e.buf, s.Nh())
		clear(extracted)
		if err != nil {
			clear(acc)
			return Secret{}, err
		}
		next := s.Extract(input, acc)
		clear(input)
		clear(acc)
		acc = next
	}
	return adoptSecret(acc), nil
}
