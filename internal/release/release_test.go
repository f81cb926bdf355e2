package release

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"
)

// throwaway makes a key pair for one test; nothing is written to the repository.
func throwaway(t *testing.T) (SigningKey, PublicKey) {
	t.Helper()
	s, p, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

func sign(t *testing.T, k SigningKey, msg []byte) []byte {
	t.Helper()
	sig, err := Sign(k, bytes.NewReader(msg), "dist/qpcd_1.0.0_amd64.deb", 1700000000)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func TestGoodSignatureVerifies(t *testing.T) {
	k, p := throwaway(t)
	msg := []byte("qpcd package bytes")
	res, err := Verify(p, bytes.NewReader(msg), "qpcd.deb", sign(t, k, msg))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// Up to 16 hex digits: like the minisign tool, no leading zeros (so an
	// id below 2^60 is shorter; a length check of exactly 16 failed for
	// about one random key in 16).
	if res.KeyID != k.ID() || len(res.KeyID) == 0 || len(res.KeyID) > 16 {
		t.Errorf("key id = %q, want %q", res.KeyID, k.ID())
	}
	if want := "timestamp:1700000000\tfile:qpcd_1.0.0_amd64.deb\thashed"; res.TrustedComment != want {
		t.Errorf("trusted comment = %q, want %q", res.TrustedComment, want)
	}
	if len(res.SHA256) != 64 {
		t.Errorf("sha256 = %q", res.SHA256)
	}
}

// The library's own verifier (the same as the minisign tool's rules) accepts
// our signatures: they are plain minisign prehashed signatures.
func TestSignatureIsMinisignCompatible(t *testing.T) {
	k, p := throwaway(t)
	msg := []byte("compatible")
	sig := sign(t, k, msg)
	r := minisign.NewReader(bytes.NewReader(msg))
	if _, err := r.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	if !r.Verify(p.key, sig) {
		t.Fatal("minisign.Reader.Verify refused our signature")
	}
	if !strings.HasPrefix(string(sig), "untrusted comment: ") {
		t.Errorf("signature lacks the untrusted comment line:\n%s", sig)
	}
}

func TestSignatureIsDeterministic(t *testing.T) {
	k, _ := throwaway(t)
	msg := []byte("same input")
	if a, b := sign(t, k, msg), sign(t, k, msg); !bytes.Equal(a, b) {
		t.Fatal("two signatures of the same file with the same timestamp differ")
	}
}

func TestTamperedFileRefused(t *testing.T) {
	k, p := throwaway(t)
	msg := []byte("original package bytes")
	sig := sign(t, k, msg)
	tampered := append([]byte(nil), msg...)
	tampered[3] ^= 0x01
	for name, body := range map[string][]byte{
		"flipped bit": tampered,
		"appended":    append(append([]byte(nil), msg...), '!'),
		"truncated":   msg[:len(msg)-1],
	} {
		_, err := Verify(p, bytes.NewReader(body), "qpcd.deb", sig)
		wantOnly(t, name, err, ErrFileTampered)
	}
}

func TestTamperedSignatureRefused(t *testing.T) {
	k, p := throwaway(t)
	msg := []byte("package")
	sig := sign(t, k, msg)
	lines := strings.Split(string(sig), "\n")
	// lines: untrusted comment, signature, trusted comment, comment signature.
	if len(lines) < 4 {
		t.Fatalf("unexpected signature layout:\n%s", sig)
	}
	t.Run("signature bytes", func(t *testing.T) {
		l := append([]string(nil), lines...)
		l[1] = flipBase64(t, l[1], 20)
		_, err := Verify(p, bytes.NewReader(msg), "f", []byte(strings.Join(l, "\n")))
		wantOnly(t, "signature bytes", err, ErrSignatureTampered)
	})
	t.Run("trusted comment", func(t *testing.T) {
		l := append([]string(nil), lines...)
		l[2] = strings.Replace(l[2], "qpcd", "qpce", 1) + "x"
		_, err := Verify(p, bytes.NewReader(msg), "f", []byte(strings.Join(l, "\n")))
		wantOnly(t, "trusted comment", err, ErrSignatureTampered)
	})
	t.Run("comment signature", func(t *testing.T) {
		l := append([]string(nil), lines...)
		l[3] = flipBase64(t, l[3], 5)
		_, err := Verify(p, bytes.NewReader(msg), "f", []byte(strings.Join(l, "\n")))
		wantOnly(t, "comment signature", err, ErrSignatureTampered)
	})
	t.Run("untrusted comment is not covered", func(t *testing.T) {
		l := append([]string(nil), lines...)
		l[0] = "untrusted comment: anything at all"
		if _, err := Verify(p, bytes.NewReader(msg), "f", []byte(strings.Join(l, "\n"))); err != nil {
			t.Fatalf("changing the untrusted comment must not matter: %v", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		_, err := Verify(p, bytes.NewReader(msg), "f", []byte("not a signature"))
		wantOnly(t, "garbage", err, ErrMalformedSignature)
	})
}

// flipBase64 changes one byte inside a base64 line; byte index i must lie
// past the algorithm and key id (10 bytes) so the key id stays intact.
func flipBase64(t *testing.T, line string, i int) string {
	t.Helper()
	b := []byte(line)
	if i >= len(b) {
		t.Fatalf("line too short: %q", line)
	}
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestWrongKeyRefused(t *testing.T) {
	k, _ := throwaway(t)
	_, other := throwaway(t)
	msg := []byte("package")
	_, err := Verify(other, bytes.NewReader(msg), "qpcd.deb", sign(t, k, msg))
	wantOnly(t, "wrong key", err, ErrWrongKey)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.SigKeyID != k.ID() || ve.KeyID != other.ID() {
		t.Fatalf("VerifyError = %#v, want key ids %s (signature) and %s (given)", ve, k.ID(), other.ID())
	}
	if !strings.Contains(err.Error(), "--pubkey") {
		t.Errorf("error does not name the fix: %v", err)
	}
}

// wantOnly checks err is target and none of the other verification sentinels.
func wantOnly(t *testing.T, name string, err, target error) {
	t.Helper()
	all := []error{ErrMalformedSignature, ErrUnsupportedAlgorithm, ErrWrongKey, ErrSignatureTampered, ErrFileTampered, ErrPublicKey, ErrIO}
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", name, err, target)
	}
	for _, e := range all {
		if e != target && errors.Is(err, e) {
			t.Fatalf("%s: err = %v also matches %v", name, err, e)
		}
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("%s: err %T is not a *VerifyError", name, err)
	}
}

func TestFilesAndKeys(t *testing.T) {
	dir := t.TempDir()
	k, p := throwaway(t)
	artifact := filepath.Join(dir, "qpcd_1.0.0_arm64.ipk")
	if err := os.WriteFile(artifact, []byte("ipk"), 0o644); err != nil {
		t.Fatal(err)
	}
	priv, err := MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "release.key")
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadPrivateKey(keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	if loaded.ID() != k.ID() {
		t.Fatalf("loaded key id %s, want %s", loaded.ID(), k.ID())
	}
	pubText, err := p.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "minisign.pub")
	if err := os.WriteFile(pubFile, pubText, 0o644); err != nil {
		t.Fatal(err)
	}
	sigFile, err := SignFile(loaded, artifact, 1)
	if err != nil {
		t.Fatal(err)
	}
	if sigFile != artifact+".minisig" {
		t.Fatalf("signature path %s", sigFile)
	}
	res, err := VerifyFile(artifact, "", pubFile)
	if err != nil {
		t.Fatal(err)
	}
	if res.Signature != sigFile || res.KeyID != p.ID() {
		t.Fatalf("result %+v", res)
	}
	if _, err := VerifyFile(artifact, filepath.Join(dir, "absent.minisig"), filepath.Join(dir, "minisign.pub")); !errors.Is(err, ErrMalformedSignature) {
		t.Fatalf("missing signature: err = %v", err)
	}
	if _, err := VerifyFile(artifact, "", filepath.Join(dir, "absent.pub")); !errors.Is(err, ErrPublicKey) {
		t.Fatalf("missing public key: err = %v", err)
	}
	if _, err := ParsePublicKey([]byte("untrusted comment: x\nnot-base64")); !errors.Is(err, ErrPublicKey) {
		t.Fatalf("bad public key: err = %v", err)
	}
}

// markEncrypted turns an unencrypted secret key file into one that claims
// scrypt encryption with zero cost parameters, so the wrong-password path runs
// without minisign's 1 GiB scrypt.
func markEncrypted(t *testing.T, priv []byte) []byte {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(string(priv)), "\n")
	b, err := base64.StdEncoding.DecodeString(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	copy(b[2:4], "Sc")
	lines[len(lines)-1] = base64.StdEncoding.EncodeToString(b)
	return []byte(strings.Join(lines, "\n"))
}

func TestEncryptedKeyNeedsPassword(t *testing.T) {
	k, _ := throwaway(t)
	priv, err := MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	enc := markEncrypted(t, priv)
	if _, err := ParsePrivateKey(enc, ""); !errors.Is(err, ErrPrivateKey) || !strings.Contains(err.Error(), "no password") {
		t.Fatalf("no password: err = %v", err)
	}
	if _, err := ParsePrivateKey(enc, "wrong"); !errors.Is(err, ErrPrivateKey) {
		t.Fatalf("wrong password: err = %v", err)
	}
	if _, err := ParsePrivateKey([]byte("junk"), ""); !errors.Is(err, ErrPrivateKey) {
		t.Fatalf("junk key: err = %v", err)
	}
}

// The real scrypt round trip costs 1 GiB and several seconds per key
// operation, so it runs only when QPC_RELEASE_SLOW_TESTS=1.
func TestEncryptedKeyRoundTrip(t *testing.T) {
	if os.Getenv("QPC_RELEASE_SLOW_TESTS") != "1" {
		t.Skip("set QPC_RELEASE_SLOW_TESTS=1 to run minisign's scrypt (1 GiB, seconds) round trip")
	}
	k, _ := throwaway(t)
	priv, err := MarshalPrivateKey(k, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePrivateKey(priv, "correct horse")
	if err != nil || got.ID() != k.ID() {
		t.Fatalf("decrypt: id %s err %v", got.ID(), err)
	}
	if _, err := ParsePrivateKey(priv, "wrong"); !errors.Is(err, ErrPrivateKey) {
		t.Fatalf("wrong password: err = %v", err)
	}
}

func TestSigningKeyNeverPrints(t *testing.T) {
	k, _ := throwaway(t)
	priv, err := MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	secretLine := strings.TrimSpace(strings.Split(string(priv), "\n")[1])
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "key", k)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k), buf.String()} {
		if strings.Contains(s, secretLine[:20]) || !strings.Contains(s, k.ID()) {
			t.Fatalf("printed form %q leaks or lacks the key id", s)
		}
	}
}
