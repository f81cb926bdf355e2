package transport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// ErrCertificate is wrapped by every certificate loading failure.
var ErrCertificate = errors.New("transport: certificate")

// CertStore holds the serving certificate and swaps it atomically on Reload,
// so new handshakes pick up a rotated certificate while established
// connections carry on untouched.
type CertStore struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// NewCertStore loads the certificate and key from PEM files.
func NewCertStore(certFile, keyFile string) (*CertStore, error) {
	s := &CertStore{certFile: certFile, keyFile: keyFile}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads both files; on any error the current certificate stays.
func (s *CertStore) Reload() error {
	c, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return fmt.Errorf("%w: load %s and %s: %v", ErrCertificate, s.certFile, s.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return fmt.Errorf("%w: parse %s: %v", ErrCertificate, s.certFile, err)
	}
	c.Leaf = leaf
	s.cur.Store(&c)
	return nil
}

// Current returns the certificate new handshakes use.
func (s *CertStore) Current() *tls.Certificate { return s.cur.Load() }

// Fingerprint is the SHA-256 pin of the current certificate.
func (s *CertStore) Fingerprint() string { return Fingerprint(s.Current().Certificate[0]) }

// NotAfter is the current certificate's expiry.
func (s *CertStore) NotAfter() time.Time { return s.Current().Leaf.NotAfter }

// ServerTLSConfig pins TLS 1.3 and ALPN "qpc" and serves certificates from s.
func (s *CertStore) ServerTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.Current(), nil
		},
	}
}

// Fingerprint returns the lowercase hex SHA-256 of a DER certificate: the
// value users pin with `qpc init --pin`.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// NormalizeFingerprint accepts hex with or without colons, any case,
// optionally prefixed "sha256:", and returns the 32 raw bytes.
func NormalizeFingerprint(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	s = strings.ReplaceAll(s, ":", "")
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%w: pin %q is not a SHA-256 fingerprint (64 hex characters)", ErrCertificate, s)
	}
	return b, nil
}

// anyFingerprintMatches compares der's fingerprint with every pin, each in
// constant time, and does not stop at the first match.
func anyFingerprintMatches(der []byte, pins [][]byte) bool {
	sum := sha256.Sum256(der)
	match := 0
	for _, p := range pins {
		match |= subtle.ConstantTimeCompare(sum[:], p)
	}
	return match == 1
}

// pinList names the pins in an error: "X" or "X or Y".
func pinList(pins [][]byte) string {
	s := make([]string, len(pins))
	for i, p := range pins {
		s[i] = hex.EncodeToString(p)
	}
	return strings.Join(s, " or ")
}

// EnsureDevCertificate creates a self-signed ECDSA P-256 certificate for
// localhost, 127.0.0.1 and ::1 at certFile/keyFile unless both exist. It
// reports whether it generated them. Development only: clients must pin it.
func EnsureDevCertificate(certFile, keyFile string, now time.Time) (generated bool, err error) {
	_, errC := os.Stat(certFile)
	_, errK := os.Stat(keyFile)
	if errC == nil && errK == nil {
		return false, nil
	}
	if errC == nil || errK == nil {
		return false, fmt.Errorf("%w: only one of %s and %s exists; remove it or supply both", ErrCertificate, certFile, keyFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return false, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "qpcd development certificate", Organization: []string{"quicprochat (dev)"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(825 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		return false, err
	}
	if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return false, err
	}
	if err := writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// writeFileAtomic writes via a temporary file, fsync and rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
