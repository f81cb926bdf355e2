package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/release"
)

// TestReleaseVerify runs `qpcctl release verify` against a throwaway key:
// exit 0 for a good file, 1 for an altered one, 2 for bad usage.
func TestReleaseVerify(t *testing.T) {
	dir := t.TempDir()
	key, pub, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubText, err := pub.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "minisign.pub")
	artifact := filepath.Join(dir, "qpcd_1.0.0_amd64.deb")
	for name, body := range map[string][]byte{pubFile: pubText, artifact: []byte("package")} {
		if err := os.WriteFile(name, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := release.SignFile(key, artifact, 1); err != nil {
		t.Fatal(err)
	}

	var out, errOut bytes.Buffer
	if code := run([]string{"release", "verify", "--pubkey", pubFile, artifact}, &out, &errOut); code != 0 {
		t.Fatalf("good file: exit %d, stderr %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "OK ") {
		t.Errorf("stdout = %q", out.String())
	}

	if err := os.WriteFile(artifact, []byte("packagE"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"release", "verify", "--json", "--pubkey", pubFile, artifact}, &out, &errOut); code != 1 {
		t.Fatalf("altered file: exit %d, want 1", code)
	}
	var rep release.VerifyReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("--json output %q: %v", out.String(), err)
	}
	if rep.OK || rep.Reason != "file_tampered" {
		t.Errorf("report = %+v, want ok=false reason=file_tampered", rep)
	}

	if code := run([]string{"release", "verify"}, &out, &errOut); code != 2 {
		t.Fatalf("no FILE: exit %d, want 2", code)
	}
	if code := run([]string{"release", "verify", "--bogus", artifact}, &out, &errOut); code != 2 {
		t.Fatalf("unknown flag: exit %d, want 2", code)
	}
}

// TestReleaseVerifyWithoutKeyPointsAtOne: with no public key the message
// says where a real one comes from; it used to send a user of a source
// checkout to packaging/release/minisign.pub, which is not there until a
// release key is published.
func TestReleaseVerifyWithoutKeyPointsAtOne(t *testing.T) {
	dir := t.TempDir()
	artifact := filepath.Join(dir, "qpcd.tar.gz")
	if err := os.WriteFile(artifact, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"release", "verify", "--pubkey", filepath.Join(dir, "missing.pub"), artifact}, &out, &errOut)
	msg := errOut.String()
	if code != 1 || !strings.Contains(msg, "pass --pubkey FILE with the project's release public key") {
		t.Fatalf("exit %d, %q", code, msg)
	}
	if _, err := os.Stat("../../packaging/release/minisign.pub"); err != nil && !strings.Contains(msg, "only once a release key is published") {
		t.Errorf("the message points at packaging/release/minisign.pub, which this checkout lacks: %q", msg)
	}
}
