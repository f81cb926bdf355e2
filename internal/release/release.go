// Package release signs release artifacts and verifies them against the
// project's Ed25519 release key, in minisign format (aead.dev/minisign), so the
// files can also be checked with the minisign tool.
//
// Verification tells apart the ways a check fails: a signature made by another
// key (ErrWrongKey), a signature file that was altered (ErrSignatureTampered),
// and a file that no longer matches its authentic signature (ErrFileTampered).
package release

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"aead.dev/minisign"
)

// DefaultPublicKeyPath is where packages install the published release
// public key (packaging/release/minisign.pub in the repository). Packagers who
// relocate it set this at link time with -X.
var DefaultPublicKeyPath = "/usr/share/quicprochat/minisign.pub"

// SignatureSuffix is appended to a file's name to name its signature.
const SignatureSuffix = ".minisig"

// Errors. Each verification failure has its own sentinel; VerifyError wraps
// them with the file and key ids.
var (
	// ErrPublicKey: the public key file is missing or not a minisign public key.
	ErrPublicKey = errors.New("release: unusable public key")
	// ErrPrivateKey: the signing key file is missing, not a minisign secret key, or the password is wrong.
	ErrPrivateKey = errors.New("release: unusable signing key")
	// ErrMalformedSignature: the signature file cannot be parsed at all.
	ErrMalformedSignature = errors.New("release: malformed signature file")
	// ErrUnsupportedAlgorithm: a legacy (not prehashed) minisign signature.
	ErrUnsupportedAlgorithm = errors.New("release: unsupported signature algorithm")
	// ErrWrongKey: the signature was made by a different key than the one given.
	ErrWrongKey = errors.New("release: signature made by a different key")
	// ErrSignatureTampered: the signature or its trusted comment was altered.
	ErrSignatureTampered = errors.New("release: signature file was altered")
	// ErrFileTampered: the signature is authentic but the file does not match it.
	ErrFileTampered = errors.New("release: file does not match its signature")
	// ErrIO: the file or signature could not be read or written.
	ErrIO = errors.New("release: i/o error")
)

// VerifyError describes a failed verification. Err is one of the sentinels.
type VerifyError struct {
	File     string
	KeyID    string // the public key's id
	SigKeyID string // the key id recorded in the signature
	Err      error
}

func (e *VerifyError) Error() string {
	var fix string
	switch {
	case errors.Is(e.Err, ErrWrongKey):
		fix = "the signature is from key " + e.SigKeyID + ", not the release key " + e.KeyID + "; check --pubkey"
	case errors.Is(e.Err, ErrSignatureTampered):
		fix = "download the .minisig file again from the release page"
	case errors.Is(e.Err, ErrFileTampered):
		fix = "do not install it; download the file again and compare its SHA-256 with the signed checksums file"
	case errors.Is(e.Err, ErrMalformedSignature), errors.Is(e.Err, ErrUnsupportedAlgorithm):
		fix = "pass the file's .minisig signature with --sig"
	}
	msg := e.File + ": " + e.Err.Error()
	if fix != "" {
		msg += " (" + fix + ")"
	}
	return msg
}

func (e *VerifyError) Unwrap() error { return e.Err }

// PublicKey is a release verification key.
type PublicKey struct {
	key minisign.PublicKey
	raw ed25519.PublicKey
}

// ID is the key id in the upper-case hex form minisign prints.
func (p PublicKey) ID() string { return keyID(p.key.ID()) }

// String is the key's one-line base64 form, as in a minisign.pub file.
func (p PublicKey) String() string { return p.key.String() }

// MarshalText returns the minisign.pub file contents.
func (p PublicKey) MarshalText() ([]byte, error) {
	// Exactly two lines, as the minisign tool writes and reads them: the
	// library's own MarshalText already carries a comment line, and a second
	// one makes `minisign -p` fail ("base64 conversion failed").
	if p.raw == nil {
		return nil, fmt.Errorf("%w: empty key", ErrPublicKey)
	}
	return []byte("untrusted comment: minisign public key " + p.ID() + "\n" + p.key.String() + "\n"), nil
}

// ParsePublicKey reads a minisign public key (with or without its comment line).
func ParsePublicKey(text []byte) (PublicKey, error) {
	var k minisign.PublicKey
	lines := strings.Split(strings.TrimSpace(string(text)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if err := k.UnmarshalText([]byte(last)); err != nil {
		return PublicKey{}, fmt.Errorf("%w: %v", ErrPublicKey, err)
	}
	raw, err := rawPublicKey(last)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{key: k, raw: raw}, nil
}

// rawPublicKey extracts the Ed25519 key from a minisign public key line:
// base64("Ed" || key id (8 bytes) || key (32 bytes)).
func rawPublicKey(line string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(line)
	if err != nil || len(b) != 2+8+ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: not a minisign Ed25519 public key", ErrPublicKey)
	}
	return ed25519.PublicKey(b[10:]), nil
}

// LoadPublicKey reads a minisign.pub file.
func LoadPublicKey(path string) (PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%w: %s: %v", ErrPublicKey, path, causeText(err))
	}
	k, err := ParsePublicKey(b)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// SigningKey is a release signing key. It never prints its bytes.
type SigningKey struct {
	key minisign.PrivateKey
}

// ID is the key id in upper-case hex.
func (s SigningKey) ID() string { return keyID(s.key.ID()) }

// String implements fmt.Stringer without revealing the key.
func (s SigningKey) String() string { return "release signing key " + s.ID() }

// GoString implements fmt.GoStringer for %#v.
func (s SigningKey) GoString() string { return s.String() }

// LogValue implements slog.LogValuer: only the key id is logged.
func (s SigningKey) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Public returns the matching verification key.
func (s SigningKey) Public() (PublicKey, error) {
	pub, ok := s.key.Public().(minisign.PublicKey)
	if !ok {
		return PublicKey{}, fmt.Errorf("%w: no public key", ErrPrivateKey)
	}
	text, err := pub.MarshalText()
	if err != nil {
		return PublicKey{}, fmt.Errorf("%w: %v", ErrPrivateKey, err)
	}
	return ParsePublicKey(text)
}

// GenerateKey makes a new key pair from crypto/rand.
func GenerateKey() (SigningKey, PublicKey, error) {
	_, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		return SigningKey{}, PublicKey{}, fmt.Errorf("%w: %v", ErrPrivateKey, err)
	}
	s := SigningKey{key: priv}
	p, err := s.Public()
	if err != nil {
		return SigningKey{}, PublicKey{}, err
	}
	return s, p, nil
}

// MarshalPrivateKey returns the minisign secret key file contents, encrypted
// with password (scrypt, as minisign does) unless password is empty.
func MarshalPrivateKey(s SigningKey, password string) ([]byte, error) {
	if password == "" {
		b, err := s.key.MarshalText()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrPrivateKey, err)
		}
		return append(b, '\n'), nil
	}
	b, err := minisign.EncryptKey(password, s.key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPrivateKey, err)
	}
	return append(b, '\n'), nil
}

// ParsePrivateKey reads a minisign secret key file; password is needed when
// the key is encrypted.
func ParsePrivateKey(text []byte, password string) (SigningKey, error) {
	text = bytes.TrimSpace(text)
	if minisign.IsEncrypted(text) {
		if password == "" {
			return SigningKey{}, fmt.Errorf("%w: the key is encrypted and no password was given", ErrPrivateKey)
		}
		k, err := minisign.DecryptKey(password, text)
		if err != nil {
			return SigningKey{}, fmt.Errorf("%w: wrong password or damaged key: %v", ErrPrivateKey, err)
		}
		return SigningKey{key: k}, nil
	}
	var k minisign.PrivateKey
	if err := k.UnmarshalText(text); err != nil {
		return SigningKey{}, fmt.Errorf("%w: %v", ErrPrivateKey, err)
	}
	return SigningKey{key: k}, nil
}

// LoadPrivateKey reads a minisign secret key file.
func LoadPrivateKey(path, password string) (SigningKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return SigningKey{}, fmt.Errorf("%w: %s: %v", ErrPrivateKey, path, causeText(err))
	}
	k, err := ParsePrivateKey(b, password)
	if err != nil {
		return SigningKey{}, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Sign returns a prehashed minisign signature of r's contents. The trusted
// comment records the file name and timestamp as the minisign tool does;
// Ed25519 is deterministic, so the same key, contents, name and timestamp
// give the same signature (reproducible releases pass SOURCE_DATE_EPOCH).
func Sign(key SigningKey, r io.Reader, name string, timestamp int64) ([]byte, error) {
	mr := minisign.NewReader(r)
	if _, err := io.Copy(io.Discard, mr); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrIO, name, err)
	}
	trusted := "timestamp:" + strconv.FormatInt(timestamp, 10) + "\tfile:" + filepath.Base(name) + "\thashed"
	untrusted := "signature from quicprochat release key " + key.ID()
	return mr.SignWithComments(key.key, trusted, untrusted), nil
}

// SignFile writes path+".minisig" and returns the signature's path.
func SignFile(key SigningKey, path string, timestamp int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrIO, err)
	}
	defer f.Close()
	sig, err := Sign(key, f, path, timestamp)
	if err != nil {
		return "", err
	}
	out := path + SignatureSuffix
	if err := os.WriteFile(out, sig, 0o644); err != nil {
		return "", fmt.Errorf("%w: %v", ErrIO, err)
	}
	return out, nil
}

// Result describes a verified file.
type Result struct {
	File           string `json:"file"`
	Signature      string `json:"signature"`
	KeyID          string `json:"key_id"`
	TrustedComment string `json:"trusted_comment"`
	SHA256         string `json:"sha256"`
}

// Verify checks r's contents (named name in errors) against sig with pub.
// It returns a *VerifyError wrapping one of the sentinel errors on failure.
func Verify(pub PublicKey, r io.Reader, name string, sig []byte) (Result, error) {
	res := Result{File: name, KeyID: pub.ID()}
	fail := func(sigKeyID string, err error) (Result, error) {
		return res, &VerifyError{File: name, KeyID: pub.ID(), SigKeyID: sigKeyID, Err: err}
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return fail("", fmt.Errorf("%w: %v", ErrMalformedSignature, err))
	}
	sigKeyID := keyID(s.KeyID)
	if s.Algorithm != minisign.HashEdDSA {
		return fail(sigKeyID, ErrUnsupportedAlgorithm)
	}
	if s.KeyID != pub.key.ID() {
		return fail(sigKeyID, ErrWrongKey)
	}
	// The comment signature covers the file signature and the trusted
	// comment: if it fails, the signature file itself was changed.
	global := append(append([]byte(nil), s.Signature[:]...), s.TrustedComment...)
	if !ed25519.Verify(pub.raw, global, s.CommentSignature[:]) {
		return fail(sigKeyID, ErrSignatureTampered)
	}
	sum := sha256.New()
	mr := minisign.NewReader(io.TeeReader(r, sum))
	if _, err := io.Copy(io.Discard, mr); err != nil {
		return fail(sigKeyID, fmt.Errorf("%w: %v", ErrIO, err))
	}
	if !mr.Verify(pub.key, sig) {
		return fail(sigKeyID, ErrFileTampered)
	}
	res.TrustedComment = s.TrustedComment
	res.SHA256 = hex.EncodeToString(sum.Sum(nil))
	return res, nil
}

// VerifyFile checks path against sigPath ("" = path+".minisig") with the
// public key in pubPath ("" = DefaultPublicKeyPath).
func VerifyFile(path, sigPath, pubPath string) (Result, error) {
	if sigPath == "" {
		sigPath = path + SignatureSuffix
	}
	if pubPath == "" {
		pubPath = DefaultPublicKeyPath
	}
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		return Result{File: path, Signature: sigPath},
			fmt.Errorf("%w (pass --pubkey FILE with the project's release public key: the minisign.pub published with the release, "+
				"which the packages install as %s; a source checkout has packaging/release/minisign.pub only once a release key is published, see docs/release.md)", err, DefaultPublicKeyPath)
	}
	sig, err := os.ReadFile(sigPath)
	if err != nil {
		return Result{File: path, Signature: sigPath, KeyID: pub.ID()},
			&VerifyError{File: path, KeyID: pub.ID(), Err: fmt.Errorf("%w: signature %s: %v", ErrMalformedSignature, sigPath, causeText(err))}
	}
	f, err := os.Open(path)
	if err != nil {
		return Result{File: path, Signature: sigPath, KeyID: pub.ID()}, fmt.Errorf("%w: %v", ErrIO, err)
	}
	defer f.Close()
	res, err := Verify(pub, f, path, sig)
	res.Signature = sigPath
	return res, err
}

// keyID is the key id as the minisign tool prints it: upper-case hex without
// leading zeros, so our minisign.pub is byte-identical to the tool's.
func keyID(id uint64) string { return fmt.Sprintf("%X", id) }

func causeText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
