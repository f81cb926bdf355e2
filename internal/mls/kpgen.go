package mls

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// KeyPackage generation and the full validation of RFC 9420 §10.1 and
// §7.3 that the KeyPackage directory runs on upload.

// KeyPackageOptions tune GenerateKeyPackage. The zero value is usable.
type KeyPackageOptions struct {
	// Now is the generation time (default time.Now()).
	Now time.Time
	// Lifetime is how long the KeyPackage is valid from Now (default 30
	// days). NotBefore is set one hour before Now to absorb clock skew.
	Lifetime time.Duration
	// Capabilities overrides the advertised capabilities (default:
	// version 1.0, the KeyPackage's suite, basic credentials). The
	// KeyPackage's suite, version and credential type are added if
	// missing.
	Capabilities *Capabilities
	// LeafExtensions go into the LeafNode (their types are added to the
	// capabilities if missing); Extensions into the KeyPackage.
	LeafExtensions []Extension
	Extensions     []Extension
	// LastResort marks the KeyPackage with the last_resort extension
	// (type 0x000a, RFC 9420 §17.3 registry).
	LastResort bool
}

// ExtensionTypeLastResort is the last_resort KeyPackage extension
// (IANA MLS Extension Types, RFC 9420 §17.3).
const ExtensionTypeLastResort ExtensionType = 0x000a

// KeyPackageBundle is a KeyPackage with the private keys its owner needs
// to join a group from a Welcome that uses it. Persist it with Marshal
// until the KeyPackage is consumed, then Wipe it. SignaturePriv is the
// key given to GenerateKeyPackage (shared, not copied).
type KeyPackageBundle struct {
	KeyPackage     KeyPackage
	InitPriv       HPKEPrivateKey
	EncryptionPriv HPKEPrivateKey
	SignaturePriv  SignaturePrivateKey
}

// Wipe zeroes the bundle's own private keys (init and encryption). The
// signature key is the caller's device key and is left alone. A group
// joined with the bundle holds its own copies, so wiping the bundle after
// JoinFromWelcome is safe.
func (b *KeyPackageBundle) Wipe() {
	b.InitPriv.Wipe()
	b.EncryptionPriv.Wipe()
}

// Ref returns the KeyPackageRef of the bundle's KeyPackage.
func (b *KeyPackageBundle) Ref() ([]byte, error) {
	s, err := Suite(b.KeyPackage.CipherSuite)
	if err != nil {
		return nil, err
	}
	return b.KeyPackage.Ref(s)
}

const kpBundleMagic = "qpc-mls-kpbundle"
const kpBundleVersion = 1

// Marshal encodes the bundle, private keys included, in a versioned
// binary form (store it encrypted at rest).
func (b *KeyPackageBundle) Marshal() ([]byte, error) {
	e := &encoder{}
	e.opaque([]byte(kpBundleMagic))
	e.u16(kpBundleVersion)
	b.KeyPackage.encode(e)
	e.opaque(b.InitPriv.Bytes())
	e.opaque(b.EncryptionPriv.Bytes())
	e.opaque(b.SignaturePriv.Bytes())
	return e.buf, e.err
}

// UnmarshalKeyPackageBundle decodes a Marshal result.
func UnmarshalKeyPackageBundle(raw []byte) (*KeyPackageBundle, error) {
	d := newDecoder(raw)
	if m := d.opaque(); d.err == nil && string(m) != kpBundleMagic {
		d.fail("not a KeyPackage bundle")
	}
	if v := d.u16(); d.err == nil && v != kpBundleVersion {
		d.fail("KeyPackage bundle version %d", v)
	}
	b := &KeyPackageBundle{}
	b.KeyPackage.decode(d)
	ip, ep, sp := d.opaque(), d.opaque(), d.opaque()
	if err := d.finish(); err != nil {
		return nil, err
	}
	defer clear(ip)
	defer clear(ep)
	defer clear(sp)
	s, err := Suite(b.KeyPackage.CipherSuite)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	var pub []byte
	if b.InitPriv, pub, err = s.HPKEPrivateKeyFromBytes(ip); err != nil || !bytes.Equal(pub, b.KeyPackage.InitKey) {
		return nil, fmt.Errorf("%w: init key does not match the KeyPackage", ErrDecode)
	}
	if b.EncryptionPriv, pub, err = s.HPKEPrivateKeyFromBytes(ep); err != nil || !bytes.Equal(pub, b.KeyPackage.LeafNode.EncryptionKey) {
		return nil, fmt.Errorf("%w: encryption key does not match the KeyPackage", ErrDecode)
	}
	if b.SignaturePriv, pub, err = s.SignaturePrivateKeyFromBytes(sp); err != nil || !bytes.Equal(pub, b.KeyPackage.LeafNode.SignatureKey) {
		return nil, fmt.Errorf("%w: signature key does not match the KeyPackage", ErrDecode)
	}
	return b, nil
}

// defaultCapabilities returns the capabilities a qpc client advertises.
func defaultCapabilities(suite CipherSuiteID) Capabilities {
	return Capabilities{
		Versions:     []ProtocolVersion{ProtocolVersionMLS10},
		CipherSuites: []CipherSuiteID{suite},
		Credentials:  []CredentialType{CredentialTypeBasic},
	}
}

// completeCapabilities adds what a leaf must list for itself.
func completeCapabilities(c Capabilities, suite CipherSuiteID, leafExt []Extension) Capabilities {
	c = Capabilities{
		Versions:     slices.Clone(c.Versions),
		CipherSuites: slices.Clone(c.CipherSuites),
		Extensions:   slices.Clone(c.Extensions),
		Proposals:    slices.Clone(c.Proposals),
		Credentials:  slices.Clone(c.Credentials),
	}
	if !slices.Contains(c.Versions, ProtocolVersionMLS10) {
		c.Versions = append(c.Versions, ProtocolVersionMLS10)
	}
	if !slices.Contains(c.CipherSuites, suite) {
		c.CipherSuites = append(c.CipherSuites, suite)
	}
	if !slices.Contains(c.Credentials, CredentialTypeBasic) {
		c.Credentials = append(c.Credentials, CredentialTypeBasic)
	}
	for _, x := range leafExt {
		if !isDefaultExtension(x.Type) && !slices.Contains(c.Extensions, x.Type) {
			c.Extensions = append(c.Extensions, x.Type)
		}
	}
	return c
}

// isDefaultExtension reports the extension types of RFC 9420 itself,
// which need not be listed in capabilities.
func isDefaultExtension(t ExtensionType) bool {
	return t >= ExtensionTypeApplicationID && t <= ExtensionTypeExternalSenders
}

// isDefaultProposal reports the proposal types of RFC 9420.
func isDefaultProposal(t ProposalType) bool {
	return t >= ProposalTypeAdd && t <= ProposalTypeGroupContextExtensions
}

// BasicIdentity is qpc's BasicCredential identity "<account>/<device>".
func BasicIdentity(account, device string) []byte { return []byte(account + "/" + device) }

// GenerateKeyPackage creates and signs a KeyPackage for a BasicCredential
// with the given identity (in qpc "<account_name>/<device_id>", see
// BasicIdentity) and signature key (the device's Ed25519 key for suite
// 1), with fresh init and encryption keys.
func GenerateKeyPackage(suite CipherSuiteID, identity []byte, sigPriv SignaturePrivateKey, opts KeyPackageOptions) (*KeyPackageBundle, error) {
	s, err := Suite(suite)
	if err != nil {
		return nil, err
	}
	if sigPriv.suite != suite || sigPriv.IsZero() {
		return nil, fmt.Errorf("%w: signature key for suite %d", ErrInvalidKey, suite)
	}
	_, sigPub, err := s.SignaturePrivateKeyFromBytes(sigPriv.Bytes())
	if err != nil {
		return nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	life := opts.Lifetime
	if life <= 0 {
		life = 30 * 24 * time.Hour
	}
	caps := defaultCapabilities(suite)
	if opts.Capabilities != nil {
		caps = *opts.Capabilities
	}
	kpExt := slices.Clone(opts.Extensions)
	if opts.LastResort && !slices.ContainsFunc(kpExt, func(x Extension) bool { return x.Type == ExtensionTypeLastResort }) {
		kpExt = append(kpExt, Extension{Type: ExtensionTypeLastResort})
	}
	caps = completeCapabilities(caps, suite, opts.LeafExtensions)
	if opts.LastResort && !slices.Contains(caps.Extensions, ExtensionTypeLastResort) {
		caps.Extensions = append(caps.Extensions, ExtensionTypeLastResort)
	}
	initPriv, initPub, err := s.GenerateHPKEKey()
	if err != nil {
		return nil, err
	}
	encPriv, encPub, err := s.GenerateHPKEKey()
	if err != nil {
		return nil, err
	}
	nb := now.Add(-time.Hour).Unix()
	if nb < 0 {
		nb = 0
	}
	kp := KeyPackage{
		Version:     ProtocolVersionMLS10,
		CipherSuite: suite,
		InitKey:     initPub,
		LeafNode: LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  sigPub,
			Credential:    Credential{Type: CredentialTypeBasic, Identity: slices.Clone(identity)},
			Capabilities:  caps,
			Source:        LeafNodeSourceKeyPackage,
			Lifetime:      Lifetime{NotBefore: uint64(nb), NotAfter: uint64(now.Add(life).Unix())},
			Extensions:    slices.Clone(opts.LeafExtensions),
		},
		Extensions: kpExt,
	}
	if err := s.SignLeafNode(&kp.LeafNode, nil, 0, sigPriv); err != nil {
		return nil, err
	}
	if err := s.SignKeyPackage(&kp, sigPriv); err != nil {
		return nil, err
	}
	return &KeyPackageBundle{KeyPackage: kp, InitPriv: initPriv, EncryptionPriv: encPriv, SignaturePriv: sigPriv}, nil
}

// KeyPackagePolicy is what ValidateKeyPackage checks a KeyPackage
// against.
type KeyPackagePolicy struct {
	// AllowedSuites is the cipher suite allowlist (default {1}).
	AllowedSuites []CipherSuiteID
	// Now is the validation time (default time.Now()).
	Now time.Time
	// MinSuite, if set, is the group's suite: a KeyPackage of another
	// suite is refused (no downgrade when adding to a group).
	GroupSuite CipherSuiteID
}

func (p KeyPackagePolicy) allowed(id CipherSuiteID) bool {
	if len(p.AllowedSuites) == 0 {
		return id == MLS128DHKEMX25519AES128GCMSHA256Ed25519
	}
	return slices.Contains(p.AllowedSuites, id)
}

// ValidateKeyPackage runs every group-independent check of RFC 9420
// §10.1 and §7.3 on kp: protocol version, cipher suite in the allowlist
// (and equal to the group's, if set), leaf node source key_package,
// lifetime containing now, capabilities listing the KeyPackage's version,
// suite and credential type and every non-default leaf extension, a
// well-formed basic credential, keys of the suite's sizes, init key
// different from the encryption key, and both signatures. Signature
// failures wrap ErrInvalidSignature, suite failures
// ErrUnsupportedCipherSuite, the others ErrInvalidKeyPackage. The server
// calls it on upload; clients before adding a member.
func ValidateKeyPackage(kp *KeyPackage, p KeyPackagePolicy) error {
	if !p.allowed(kp.CipherSuite) {
		return fmt.Errorf("%w: suite %d not in the allowlist", ErrUnsupportedCipherSuite, kp.CipherSuite)
	}
	if p.GroupSuite != 0 && kp.CipherSuite != p.GroupSuite {
		return fmt.Errorf("%w: suite %d in a group of suite %d", ErrUnsupportedCipherSuite, kp.CipherSuite, p.GroupSuite)
	}
	s, err := Suite(kp.CipherSuite)
	if err != nil {
		return err
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	ln := &kp.LeafNode
	if err := checkLeafCapabilities(ln, kp.CipherSuite); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	if err := s.checkLeafKeys(ln); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidKeyPackage, err)
	}
	if len(kp.InitKey) != len(ln.EncryptionKey) {
		return fmt.Errorf("%w: init key of %d bytes", ErrInvalidKeyPackage, len(kp.InitKey))
	}
	return s.VerifyKeyPackage(kp, now)
}

// errLeaf is the sentinel-free detail error of leaf checks; callers wrap
// it with their sentinel.
type errLeaf string

func (e errLeaf) Error() string { return string(e) }

// checkLeafCapabilities checks that a leaf lists its own version, suite,
// credential type and non-default extensions, and carries a basic or
// X.509 credential.
func checkLeafCapabilities(ln *LeafNode, suite CipherSuiteID) error {
	c := &ln.Capabilities
	switch {
	case !slices.Contains(c.Versions, ProtocolVersionMLS10):
		return errLeaf("capabilities do not list MLS 1.0")
	case !slices.Contains(c.CipherSuites, suite):
		return errLeaf(fmt.Sprintf("capabilities do not list suite %d", suite))
	case !slices.Contains(c.Credentials, ln.Credential.Type):
		return errLeaf(fmt.Sprintf("capabilities do not list credential type %d", ln.Credential.Type))
	}
	switch ln.Credential.Type {
	case CredentialTypeBasic:
		if len(ln.Credential.Identity) == 0 {
			return errLeaf("empty basic credential identity")
		}
	case CredentialTypeX509:
		if len(ln.Credential.Certificates) == 0 {
			return errLeaf("X.509 credential without certificates")
		}
	default:
		return errLeaf(fmt.Sprintf("credential type %d", ln.Credential.Type))
	}
	seen := map[ExtensionType]bool{}
	for _, x := range ln.Extensions {
		if seen[x.Type] {
			return errLeaf(fmt.Sprintf("duplicate leaf extension %d", x.Type))
		}
		seen[x.Type] = true
		if !isDefaultExtension(x.Type) && !slices.Contains(c.Extensions, x.Type) {
			return errLeaf(fmt.Sprintf("leaf extension %d not in capabilities", x.Type))
		}
	}
	return nil
}

// checkLeafKeys checks the sizes of a leaf's public keys.
func (s *CipherSuite) checkLeafKeys(ln *LeafNode) error {
	if _, err := s.kem.id.Scheme().UnmarshalBinaryPublicKey(ln.EncryptionKey); err != nil {
		return errLeaf("malformed encryption key")
	}
	if len(ln.SignatureKey) == 0 {
		return errLeaf("empty signature key")
	}
	return nil
}
