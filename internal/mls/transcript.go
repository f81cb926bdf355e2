package mls

import "fmt"

// Transcript hashes and the confirmation tag (RFC 9420 §8.2, §6.1).

// ConfirmedTranscriptHash is
// Hash(interim_transcript_hash_[n-1] || ConfirmedTranscriptHashInput),
// where the input is the commit's wire format, FramedContent and signature.
func (s *CipherSuite) ConfirmedTranscriptHash(interimBefore []byte, ac *AuthenticatedContent) ([]byte, error) {
	if ac.Content.ContentType != ContentTypeCommit {
		return nil, fmt.Errorf("%w: transcript hash over content type %d, want commit", ErrInvalidMessage, ac.Content.ContentType)
	}
	e := &encoder{buf: append([]byte(nil), interimBefore...)}
	e.u16(uint16(ac.WireFormat))
	ac.Content.encode(e)
	e.opaque(ac.Auth.Signature)
	if e.err != nil {
		return nil, e.err
	}
	return s.Hash(e.buf), nil
}

// InterimTranscriptHash is
// Hash(confirmed_transcript_hash || InterimTranscriptHashInput{confirmation_tag}).
func (s *CipherSuite) InterimTranscriptHash(confirmed, confirmationTag []byte) ([]byte, error) {
	e := &encoder{buf: append([]byte(nil), confirmed...)}
	e.opaque(confirmationTag)
	if e.err != nil {
		return nil, e.err
	}
	return s.Hash(e.buf), nil
}

// ConfirmationTag is MAC(confirmation_key, confirmed_transcript_hash).
func (s *CipherSuite) ConfirmationTag(confirmationKey Secret, confirmed []byte) []byte {
	return s.MAC(confirmationKey.Bytes(), confirmed)
}

// VerifyConfirmationTag checks tag in constant time; failure wraps
// ErrBadConfirmationTag.
func (s *CipherSuite) VerifyConfirmationTag(confirmationKey Secret, confirmed, tag []byte) error {
	if !s.VerifyMAC(confirmationKey.Bytes(), confirmed, tag) {
		return ErrBadConfirmationTag
	}
	return nil
}
