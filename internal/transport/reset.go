package transport

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// ResetSecretFile is the name, inside the data directory, of the node's
// stateless-reset secret. It is per node and never leaves the machine; a
// node that loses it only makes connected clients wait for their idle
// timeout once, as if it had none.
const ResetSecretFile = "quic-reset.secret"

// resetSecretSize is the secret's size in bytes (64 hex characters).
const resetSecretSize = 32

// resetKeyInfo separates the stateless-reset key from anything else that
// may one day be derived from the same secret.
const resetKeyInfo = "qpcd quic stateless reset key v1"

// LoadStatelessResetKey returns the QUIC stateless reset key derived
// (HKDF-SHA256) from the secret in path, creating the file (mode 0600,
// 32 random bytes in hex) on first start. A restarted qpcd derives the same
// key, so it can answer packets of connections it no longer knows with a
// stateless reset (RFC 9000 section 10.3) that the client recognises at
// once, instead of leaving it to wait for its idle timeout.
func LoadStatelessResetKey(path string) (*quic.StatelessResetKey, error) {
	s, err := loadOrCreateResetSecret(path)
	if err != nil {
		return nil, err
	}
	defer s.Wipe()
	return deriveStatelessResetKey(s)
}

func deriveStatelessResetKey(s secret.Bytes) (*quic.StatelessResetKey, error) {
	raw, err := hkdf.Key(sha256.New, s.Reveal(), nil, resetKeyInfo, len(quic.StatelessResetKey{}))
	if err != nil {
		return nil, fmt.Errorf("transport: derive stateless reset key: %w", err)
	}
	defer secret.Wipe(raw)
	var k quic.StatelessResetKey
	copy(k[:], raw)
	return &k, nil
}

func loadOrCreateResetSecret(path string) (secret.Bytes, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createResetSecret(path)
	}
	if err != nil {
		return secret.Bytes{}, fmt.Errorf("transport: stateless reset secret %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return secret.Bytes{}, fmt.Errorf("transport: stateless reset secret %s has mode %04o, readable by others: run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return secret.Bytes{}, fmt.Errorf("transport: read stateless reset secret %s: %w", path, err)
	}
	defer secret.Wipe(b)
	s, err := secret.FromHex(strings.TrimSpace(string(b)), resetSecretSize)
	if err != nil {
		return secret.Bytes{}, fmt.Errorf("transport: stateless reset secret %s does not hold 64 hex characters; delete it and qpcd makes a new one", path)
	}
	return s, nil
}

// createResetSecret writes a fresh secret exclusively (O_EXCL): it never
// replaces one, so two starts racing agree on the file that won.
func createResetSecret(path string) (secret.Bytes, error) {
	raw := make([]byte, resetSecretSize)
	if _, err := rand.Read(raw); err != nil {
		return secret.Bytes{}, err
	}
	s := secret.New(raw)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		s.Wipe()
		return secret.Bytes{}, fmt.Errorf("transport: create stateless reset secret %s: %w", path, err)
	}
	_, err = f.WriteString(s.Hex() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.Wipe()
		_ = os.Remove(path)
		return secret.Bytes{}, fmt.Errorf("transport: write stateless reset secret %s: %w", path, err)
	}
	return s, nil
}
