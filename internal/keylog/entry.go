// Package keylog is the key transparency log's data: entries (account →
// identity key, device certificates), RFC 6962 Merkle hashing over them,
// signed tree heads and the inclusion and consistency proofs clients check
// (docs/protocol.md, "Key log"). It does no I/O: the server, the client and
// qpcctl share it.
package keylog

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/crypto/cryptobyte"

	"github.com/quicprochat/quicprochat/internal/identity"
)

// HashSize is the size of leaf, node and root hashes (SHA-256).
const HashSize = 32

// Hash is a Merkle tree hash.
type Hash [HashSize]byte

var (
	// ErrMalformed: bytes that are not an entry, a tree head or a proof.
	ErrMalformed = errors.New("keylog: malformed")
	// ErrBadSignature: a tree head whose signature does not verify under
	// the log key it names.
	ErrBadSignature = errors.New("keylog: tree head signature does not verify")
	// ErrWrongLogKey: a tree head signed by another log key than the
	// pinned one.
	ErrWrongLogKey = errors.New("keylog: tree head signed by another log key than the pinned one")
	// ErrNotIncluded: an inclusion proof that does not lead to the head's root.
	ErrNotIncluded = errors.New("keylog: entry not included in the tree head")
	// ErrInconsistent: two tree heads that cannot both be views of one
	// append-only log (a fork: the server showed different logs).
	ErrInconsistent = errors.New("keylog: tree heads are not consistent")
)

// Kind says what an entry binds.
type Kind uint8

const (
	// KindIdentityKey binds an account name to its identity key.
	KindIdentityKey Kind = 1
	// KindDeviceCertificate records a device certificate (signed by the
	// account's identity key).
	KindDeviceCertificate Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindIdentityKey:
		return "identity_key"
	case KindDeviceCertificate:
		return "device_certificate"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

const entryVersion = 1

// maxData bounds an entry's data (a certificate is about 200 bytes).
const maxData = 4096

// Entry is one leaf of the log.
//
//	version (1) = 1
//	kind (1)
//	account_name<1..32>        (1-byte length)
//	time_unix_ms (8)           when the server appended it
//	data<1..4096>              (2-byte length) kind 1: the identity key (32);
//	                           kind 2: the device certificate (internal/identity)
type Entry struct {
	Kind        Kind
	AccountName string
	Time        time.Time // millisecond precision
	Data        []byte
}

// IdentityKeyEntry is the entry that binds account to key.
func IdentityKeyEntry(account string, key identity.PublicKey, at time.Time) Entry {
	return Entry{Kind: KindIdentityKey, AccountName: account, Time: time.UnixMilli(at.UnixMilli()), Data: key.Bytes()}
}

// CertificateEntry is the entry that records a device certificate.
func CertificateEntry(account string, cert []byte, at time.Time) Entry {
	return Entry{Kind: KindDeviceCertificate, AccountName: account, Time: time.UnixMilli(at.UnixMilli()), Data: append([]byte(nil), cert...)}
}

func (e Entry) check() error {
	if e.AccountName == "" || len(e.AccountName) > 32 {
		return fmt.Errorf("%w: entry account name of %d bytes", ErrMalformed, len(e.AccountName))
	}
	if e.Time.UnixMilli() < 0 {
		return fmt.Errorf("%w: entry time", ErrMalformed)
	}
	switch e.Kind {
	case KindIdentityKey:
		if len(e.Data) != identity.KeySize {
			return fmt.Errorf("%w: identity key of %d bytes", ErrMalformed, len(e.Data))
		}
	case KindDeviceCertificate:
		c, err := identity.Parse(e.Data)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if c.AccountName != e.AccountName {
			return fmt.Errorf("%w: certificate of %q in an entry of %q", ErrMalformed, c.AccountName, e.AccountName)
		}
	default:
		return fmt.Errorf("%w: entry kind %d", ErrMalformed, e.Kind)
	}
	return nil
}

// Marshal encodes the entry: the bytes that are hashed into the tree.
func (e Entry) Marshal() ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(entryVersion)
	b.AddUint8(uint8(e.Kind))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.AccountName)) })
	b.AddUint64(uint64(e.Time.UnixMilli()))
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Data) })
	return b.Bytes()
}

// ParseEntry decodes an entry, refusing unknown versions and kinds,
// wrong sizes and trailing bytes.
func ParseEntry(raw []byte) (*Entry, error) {
	s := cryptobyte.String(raw)
	var (
		ver, kind  uint8
		name, data cryptobyte.String
		at         uint64
	)
	if !s.ReadUint8(&ver) || !s.ReadUint8(&kind) {
		return nil, fmt.Errorf("%w: short entry", ErrMalformed)
	}
	if ver != entryVersion {
		return nil, fmt.Errorf("%w: entry version %d", ErrMalformed, ver)
	}
	if !s.ReadUint8LengthPrefixed(&name) || !s.ReadUint64(&at) || !s.ReadUint16LengthPrefixed(&data) || !s.Empty() {
		return nil, fmt.Errorf("%w: entry encoding", ErrMalformed)
	}
	if at > 1<<62 || len(data) > maxData {
		return nil, fmt.Errorf("%w: entry fields", ErrMalformed)
	}
	e := &Entry{Kind: Kind(kind), AccountName: string(name), Time: time.UnixMilli(int64(at)), Data: append([]byte(nil), data...)}
	if err := e.check(); err != nil {
		return nil, err
	}
	return e, nil
}

// LeafHash is the RFC 6962 leaf hash of an encoded entry:
// SHA-256(0x00 || entry).
func LeafHash(entry []byte) Hash {
	var h Hash
	copy(h[:], rfc6962.DefaultHasher.HashLeaf(entry))
	return h
}

// IdentityKey returns the key of a KindIdentityKey entry.
func (e *Entry) IdentityKey() (identity.PublicKey, error) {
	if e.Kind != KindIdentityKey {
		return identity.PublicKey{}, fmt.Errorf("%w: a %v entry has no identity key", ErrMalformed, e.Kind)
	}
	return identity.ParsePublicKey(e.Data)
}

// Binds reports whether the entry states exactly this: for kind 1 the
// account's identity key, for kind 2 this certificate.
func (e *Entry) Binds(kind Kind, account string, data []byte) bool {
	return e.Kind == kind && e.AccountName == account && bytes.Equal(e.Data, data)
}
