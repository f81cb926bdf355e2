package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runOK(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(args, &out, &errOut); code != exitOK {
		t.Fatalf("qpc-release %s: exit %d\n%s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

// keygen, pubkey, sign and verify with a throwaway key, as build.sh uses them.
func TestKeygenSignVerify(t *testing.T) {
	t.Setenv(PasswordEnv, "")
	dir := t.TempDir()
	sec, pub, pub2 := filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"), filepath.Join(dir, "k2.pub")
	runOK(t, "keygen", "--secret", sec, "--public", pub)
	if fi, err := os.Stat(sec); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file: %v %v", fi, err)
	}
	runOK(t, "pubkey", "--key", sec, "--out", pub2)
	a, _ := os.ReadFile(pub)
	b, _ := os.ReadFile(pub2)
	if !bytes.Equal(a, b) {
		t.Fatalf("pubkey differs from keygen's public key:\n%s\n%s", a, b)
	}
	if code := run([]string{"keygen", "--secret", sec, "--public", pub}, &bytes.Buffer{}, &bytes.Buffer{}); code != exitFailure {
		t.Fatalf("keygen over an existing key: exit %d, want %d", code, exitFailure)
	}

	files := []string{filepath.Join(dir, "a.deb"), filepath.Join(dir, "SHA256SUMS")}
	for _, f := range files {
		if err := os.WriteFile(f, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runOK(t, append([]string{"sign", "--key", sec, "--epoch", "1700000000"}, files...)...)
	if out := runOK(t, append([]string{"verify", "--pubkey", pub}, files...)...); strings.Count(out, "OK ") != 2 {
		t.Fatalf("verify output:\n%s", out)
	}
	if err := os.WriteFile(files[0], []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := run(append([]string{"verify", "--pubkey", pub}, files...), &out, &bytes.Buffer{}); code != exitFailure || !strings.Contains(out.String(), "FAIL") {
		t.Fatalf("altered file: exit %d\n%s", code, out.String())
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"nope"}, {"sign"}, {"sbom"}, {"sign", "--epoch", "x", "--key", "k", "f"}, {"keygen", "--bogus"}} {
		if code := run(args, &bytes.Buffer{}, &bytes.Buffer{}); code != exitUsage {
			t.Errorf("qpc-release %v: exit %d, want %d", args, code, exitUsage)
		}
	}
}
