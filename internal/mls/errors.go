package mls

import "errors"

// Sentinel errors. Every error returned by this package wraps one of these
// (with %w), so callers test with errors.Is.
var (
	// ErrDecode: the input is not a valid encoding of the expected struct
	// (truncated, trailing bytes, non-minimal varint, unknown enum value...).
	ErrDecode = errors.New("mls: decode")
	// ErrEncode: a value cannot be encoded (a vector over 2^30-1 bytes,
	// an unknown enum value in a select).
	ErrEncode = errors.New("mls: encode")
	// ErrUnsupportedCipherSuite: the cipher suite id is not implemented.
	ErrUnsupportedCipherSuite = errors.New("mls: unsupported cipher suite")
	// ErrInvalidKey: a public or private key has the wrong size or format.
	ErrInvalidKey = errors.New("mls: invalid key")
	// ErrInvalidSignature: a signature does not verify.
	ErrInvalidSignature = errors.New("mls: invalid signature")
	// ErrBadMembershipTag: a PublicMessage membership tag does not verify.
	ErrBadMembershipTag = errors.New("mls: bad membership tag")
	// ErrBadConfirmationTag: a confirmation tag does not verify.
	ErrBadConfirmationTag = errors.New("mls: bad confirmation tag")
	// ErrDecrypt: an AEAD or HPKE ciphertext does not open.
	ErrDecrypt = errors.New("mls: decryption failed")
	// ErrEncrypt: encryption failed (bad key, randomness failure).
	ErrEncrypt = errors.New("mls: encryption failed")
	// ErrInvalidMessage: a message is well-formed but not acceptable here
	// (wrong group, epoch, sender type, content type or wire format).
	ErrInvalidMessage = errors.New("mls: invalid message")
	// ErrGeneration: a secret-tree generation was already consumed or lies
	// too far ahead of the ratchet.
	ErrGeneration = errors.New("mls: secret tree generation unavailable")
	// ErrInvalidKeyPackage: a KeyPackage fails validation (RFC 9420 §10.1)
	// for a reason other than its signatures.
	ErrInvalidKeyPackage = errors.New("mls: invalid key package")
	// ErrNotFound: a Welcome holds no secrets for the given KeyPackage.
	ErrNotFound = errors.New("mls: not found")
	// ErrInvalidArgument: a caller passed an out-of-range value.
	ErrInvalidArgument = errors.New("mls: invalid argument")
)

// Part-2 sentinels.
var (
	// ErrInvalidTree: a ratchet tree is malformed or fails validation
	// (node types, tree hash, parent hashes, leaf signatures, keys).
	ErrInvalidTree = errors.New("mls: invalid ratchet tree")
	// ErrInvalidProposal: a proposal or proposal list fails validation
	// (RFC 9420 §12.1, §12.2).
	ErrInvalidProposal = errors.New("mls: invalid proposal")
	// ErrInvalidCommit: a commit fails validation (RFC 9420 §12.4).
	ErrInvalidCommit = errors.New("mls: invalid commit")
	// ErrStaleEpoch: a message is for an epoch the group has left and no
	// longer keeps, or an attempt to move the epoch backwards.
	ErrStaleEpoch = errors.New("mls: stale epoch")
	// ErrFutureEpoch: a message is for an epoch the group has not reached.
	ErrFutureEpoch = errors.New("mls: future epoch")
	// ErrWrongGroup: a message is for another group.
	ErrWrongGroup = errors.New("mls: wrong group")
	// ErrDowngrade: a ReInit, KeyPackage or Welcome would move the group to
	// a suite outside the allowlist or weaker than its own.
	ErrDowngrade = errors.New("mls: cipher suite downgrade")
	// ErrNotMember: the group state no longer has this client as a member
	// (it was removed), or a sender is not a member.
	ErrNotMember = errors.New("mls: not a member")
	// ErrPSKNotFound: a PreSharedKey is not available.
	ErrPSKNotFound = errors.New("mls: pre-shared key not found")
	// ErrInvalidState: exported group state is malformed or of an
	// unsupported version.
	ErrInvalidState = errors.New("mls: invalid group state")
	// ErrUnsupported: a feature the group does not support here.
	ErrUnsupported = errors.New("mls: unsupported")
	// ErrTreeHashMismatch: a ratchet tree (in a GroupInfo's extension or
	// supplied beside it) does not hash to the tree_hash of the signed
	// GroupContext: it belongs to another epoch or was altered. Errors
	// wrapping it also wrap ErrInvalidTree.
	ErrTreeHashMismatch = errors.New("mls: ratchet tree does not match the GroupContext's tree hash")
)
