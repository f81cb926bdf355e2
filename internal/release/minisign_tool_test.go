package release

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// minisignTool is Debian's minisign, the third-party verifier release
// engineers use on our artefacts (`make deps-test` installs it).
func minisignTool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("minisign")
	if err != nil {
		t.Fatal("the minisign tool is not installed (Debian package minisign; `make deps-test` installs it)")
	}
	return path
}

// What we publish, the real minisign accepts: the public key file as
// written (-p, not only -P), our signatures, and it refuses a changed file.
func TestRealMinisignVerifiesOurArtefacts(t *testing.T) {
	tool := minisignTool(t)
	k, p := throwaway(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "qpcd_1.0.0_amd64.deb")
	content := []byte("package bytes")
	pubText, err := p.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(pubText), "untrusted comment:"); n != 1 {
		t.Fatalf("minisign.pub has %d comment lines, want 1:\n%s", n, pubText)
	}
	writeFile(t, filepath.Join(dir, "minisign.pub"), pubText)
	writeFile(t, file, content)
	writeFile(t, file+".minisig", sign(t, k, content))

	out, err := exec.Command(tool, "-Vm", file, "-p", filepath.Join(dir, "minisign.pub")).CombinedOutput()
	if err != nil {
		t.Fatalf("minisign -V refused our signature: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Signature and comment signature verified") {
		t.Errorf("minisign -V said:\n%s", out)
	}

	writeFile(t, file, append(content, '!'))
	if out, err := exec.Command(tool, "-Vm", file, "-p", filepath.Join(dir, "minisign.pub")).CombinedOutput(); err == nil {
		t.Fatalf("minisign -V accepted a changed file:\n%s", out)
	}
}

// And the other way round: a key and a signature made by the minisign tool
// verify with our code, so an operator can sign with either.
func TestOurVerifierAcceptsRealMinisign(t *testing.T) {
	tool := minisignTool(t)
	dir := t.TempDir()
	pub, sec, file := filepath.Join(dir, "minisign.pub"), filepath.Join(dir, "minisign.key"), filepath.Join(dir, "SHA256SUMS")
	if out, err := exec.Command(tool, "-G", "-W", "-p", pub, "-s", sec).CombinedOutput(); err != nil {
		t.Fatalf("minisign -G: %v\n%s", err, out)
	}
	content := []byte("0123  qpcd\n")
	writeFile(t, file, content)
	if out, err := exec.Command(tool, "-Sm", file, "-s", sec, "-t", "trusted by the tool").CombinedOutput(); err != nil {
		t.Fatalf("minisign -S: %v\n%s", err, out)
	}
	p, err := LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := os.ReadFile(file + ".minisig")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(p, bytes.NewReader(content), "SHA256SUMS", sig)
	if err != nil {
		t.Fatalf("our verifier refused the tool's signature: %v", err)
	}
	if res.TrustedComment != "trusted by the tool" {
		t.Errorf("trusted comment = %q", res.TrustedComment)
	}
	// Our writer gives the tool's file back byte for byte.
	mine, err := p.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	theirs, _ := os.ReadFile(pub)
	if !bytes.Equal(mine, theirs) {
		t.Errorf("our minisign.pub differs from the tool's:\n%s\n--- tool:\n%s", mine, theirs)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
