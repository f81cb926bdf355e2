package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	ks := KeySource{KeyFile: filepath.Join(dir, "client.key")}
	if _, err := ks.Load(false); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "qpc init") {
		t.Fatalf("missing key file: %v", err)
	}
	k1, err := ks.Load(true)
	if err != nil || k1.Len() != KeySize {
		t.Fatalf("create: %v", err)
	}
	st, err := os.Stat(ks.KeyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", st.Mode(), err)
	}
	k2, err := ks.Load(true) // exists: read, never replaced
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("reload: %v", err)
	}
	if err := os.Chmod(ks.KeyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o620, 0o604} {
		if err := os.Chmod(ks.KeyFile, mode); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%s: only its owner may access the database key file (it has mode %04o; run: chmod 600 %s)", ks.KeyFile, uint32(mode), ks.KeyFile)
		if _, err := ks.Load(true); !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), want) {
			t.Fatalf("key file mode %04o: %v", mode, err)
		}
	}
	_ = os.Chmod(ks.KeyFile, 0o600)
	if err := os.WriteFile(ks.KeyFile, []byte("zz\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Load(false); !errors.Is(err, ErrKeyFile) {
		t.Fatalf("malformed key file: %v", err)
	}
}

func TestKeyFromEnvHex(t *testing.T) {
	ks := testKey(t)
	k, err := ks.Load(false)
	if err != nil || k.Len() != KeySize {
		t.Fatalf("hex key: %v", err)
	}
	if _, err := (KeySource{Hex: secret.New([]byte("abcd"))}).Load(false); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), EnvKey) {
		t.Fatalf("short hex key: %v", err)
	}
	if _, err := (KeySource{}).Load(true); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no source: %v", err)
	}
}

func TestPassphraseArgon2id(t *testing.T) {
	dir := t.TempDir()
	salt := filepath.Join(dir, "client.salt")
	ks := KeySource{Passphrase: secret.New([]byte("correct horse battery staple")), SaltFile: salt}
	if _, err := ks.Load(false); !errors.Is(err, ErrSaltFile) {
		t.Fatalf("missing salt without create: %v", err)
	}
	k1, err := ks.Load(true)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(salt)
	if err != nil || !strings.HasPrefix(string(raw), "argon2id t=3 m=65536 p=4 salt=") {
		t.Fatalf("salt file %q, %v", raw, err)
	}
	k2, err := ks.Load(false)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("same passphrase and salt give another key: %v", err)
	}
	other := KeySource{Passphrase: secret.New([]byte("wrong")), SaltFile: salt}
	k3, err := other.Load(false)
	if err != nil || k3.Equal(k1) {
		t.Fatalf("another passphrase gives the same key: %v", err)
	}
	// Whoever may rewrite the salt file could weaken the parameters.
	if err := os.Chmod(salt, 0o664); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Load(true); !errors.Is(err, ErrSaltFile) || !strings.Contains(err.Error(), "it has mode 0664; run: chmod 600 "+salt) {
		t.Fatalf("salt file open to others: %v", err)
	}
	_ = os.Chmod(salt, 0o600)
	for _, bad := range []string{"", "argon2id t=3 m=65536 p=4", "argon2id t=0 m=65536 p=4 salt=00112233445566778899aabbccddeeff",
		"argon2id t=3 m=65536 p=4 salt=0011", "scrypt t=3 m=65536 p=4 salt=00112233445566778899aabbccddeeff",
		"argon2id t=3 m=99999999 p=4 salt=00112233445566778899aabbccddeeff"} {
		if _, err := parseArgon(bad); !errors.Is(err, ErrSaltFile) {
			t.Errorf("parseArgon(%q) = %v, want ErrSaltFile", bad, err)
		}
	}
}

// TestDatabaseWrongKey: the client database refuses another key with an
// error that names the fix, and is encrypted at rest.
func TestDatabaseWrongKey(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	o := Options{Home: home, Keys: testKey(t)}
	c, err := Init(ctxT(t), o, ServerTrust{Addr: "127.0.0.1:1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	raw, err := os.ReadFile(filepath.Join(home, DBFile))
	if err != nil || strings.Contains(string(raw), "SQLite format") || strings.Contains(string(raw), "127.0.0.1:1") {
		t.Fatalf("database not encrypted at rest (%v)", err)
	}
	o2 := Options{Home: home, Keys: testKey(t)}
	if _, err := Open(ctxT(t), o2); !errors.Is(err, store.ErrWrongKey) || !strings.Contains(err.Error(), EnvKey) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := Open(ctxT(t), Options{Home: filepath.Join(t.TempDir(), "none"), Keys: testKey(t)}); !errors.Is(err, ErrNotInitialised) {
		t.Fatalf("no database: %v", err)
	}
	c, err = Open(ctxT(t), o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.Settings(ctxT(t))
	if err != nil || s.Trust.Addr != "127.0.0.1:1" || s.Stock != DefaultStock {
		t.Fatalf("settings %+v, %v", s, err)
	}
}
