package server

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/transport"
)

// devFiles records what bootstrap generated, for the start-up line.
type devFiles struct {
	key, cert bool
}

// prepareDataDir creates the data directory (0700) if it is missing.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("server: create data dir %s: %w (set data_dir / QPC_DATA_DIR to a writable path)", dir, err)
	}
	return nil
}

// loadOrCreateDBKey returns the database key: inline if configured, else
// read from the key file; a missing key file at the default location is
// created with a fresh random key (development mode).
func loadOrCreateDBKey(cfg config.Config, defaultKeyFile string) (secret.Bytes, bool, error) {
	if !cfg.DB.Key.IsZero() {
		return cfg.DB.Key.Clone(), false, nil
	}
	path := cfg.DB.KeyFile
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) && path == defaultKeyFile {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return secret.Bytes{}, false, err
		}
		key := secret.New(raw)
		if err := writeKeyFile(path, key); err != nil {
			return secret.Bytes{}, false, err
		}
		return key, true, nil
	}
	key, err := config.ReadKeyFile(path)
	if err != nil {
		return secret.Bytes{}, false, fmt.Errorf("server: database key file %s: %w", path, err)
	}
	return key, false, nil
}

// writeKeyFile creates path exclusively with mode 0600: it never replaces an existing key.
func writeKeyFile(path string, key secret.Bytes) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("server: create database key file %s: %w", path, err)
	}
	if _, err := f.WriteString(key.Hex() + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ensureCertificate generates a development certificate when the configured
// files are the defaults inside the data dir and do not exist yet.
func ensureCertificate(cfg config.Config, defaultCert, defaultKey string, now time.Time) (bool, error) {
	if cfg.TLS.CertFile == defaultCert && cfg.TLS.KeyFile == defaultKey {
		return transport.EnsureDevCertificate(cfg.TLS.CertFile, cfg.TLS.KeyFile, now)
	}
	return false, nil
}

// defaultPaths are the dev-mode locations inside the data dir.
func defaultPaths(dataDir string) (keyFile, certFile, tlsKeyFile string) {
	return filepath.Join(dataDir, "db.key"), filepath.Join(dataDir, "tls", "cert.pem"), filepath.Join(dataDir, "tls", "key.pem")
}
