package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/release/sbom"
)

// TestReleaseArtefacts checks a real `make release` output directory with
// the third-party tools: every file's signature with Debian's minisign,
// every SBOM against the official CycloneDX schema, the .debs with lintian
// and the .rpms with rpmlint. `make release-check` runs it on dist/ (set
// QPC_RELEASE_DIST); make test checks the same rules on stand-in packages
// (verifiers_test.go), since a full release build takes minutes.
func TestReleaseArtefacts(t *testing.T) {
	dist := os.Getenv("QPC_RELEASE_DIST")
	if dist == "" {
		t.Skip("set QPC_RELEASE_DIST to a `make release` output directory (make release-check)")
	}
	minisign := tool(t, "minisign")
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("SHA256SUMS line %q", line)
		}
		files = append(files, f[1])
	}
	pub := filepath.Join(dist, "minisign.pub")
	for _, f := range append(files, "SHA256SUMS") {
		if out, err := exec.Command(minisign, "-Vm", filepath.Join(dist, f), "-p", pub).CombinedOutput(); err != nil {
			t.Errorf("minisign -V %s: %v\n%s", f, err, out)
		}
	}
	schemas := filepath.Join(goModDir(t, sbom.SchemaModule), "schema")
	var debs, rpms []string
	for _, f := range files {
		p := filepath.Join(dist, f)
		switch {
		case strings.HasSuffix(f, ".cdx.json"):
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := sbom.Validate(b, schemas); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		case strings.HasSuffix(f, ".deb"):
			debs = append(debs, p)
		case strings.HasSuffix(f, ".rpm"):
			rpms = append(rpms, p)
		}
	}
	if len(debs) == 0 || len(rpms) == 0 {
		t.Fatalf("no .deb or .rpm in %s", dist)
	}
	out, err := exec.Command(tool(t, "lintian"), append([]string{"--fail-on", "error,warning", "--tag-display-limit", "0"}, debs...)...).CombinedOutput()
	if report := strings.TrimSpace(strings.ReplaceAll(string(out), "running with root privileges is not recommended!", "")); err != nil || report != "" {
		t.Errorf("lintian: %v\n%s", err, report)
	}
	// rpm (and rpmlint's signature check) against a private database
	// holding only the repository's published key.
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, ".rpmmacros"), []byte("%_dbpath "+filepath.Join(home, "rpmdb")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	rpm := tool(t, "rpm")
	for _, args := range [][]string{{"--initdb"}, {"--import", filepath.Join(dist, "repo", "yum", "RPM-GPG-KEY-quicprochat")}} {
		if out, err := exec.Command(rpm, args...).CombinedOutput(); err != nil {
			t.Fatalf("rpm %v: %v\n%s", args, err, out)
		}
	}
	for _, p := range rpms {
		if out, err := exec.Command(rpm, "-K", p).CombinedOutput(); err != nil || !strings.Contains(string(out), "signatures OK") {
			t.Errorf("rpm -K %s: %v\n%s", filepath.Base(p), err, out)
		}
	}
	shim := cpioShim(t)
	t.Setenv("PATH", shim+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err = exec.Command(tool(t, "rpmlint"), append([]string{"-c", filepath.Join(root, "packaging", "rpmlint.toml"), "-r", filepath.Join(root, "packaging", "rpmlintrc")}, rpms...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0 errors, 0 warnings") {
		t.Errorf("rpmlint: %v\n%s", err, out)
	}
}

func goModDir(t *testing.T, module string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("go list -m %s: %v", module, err)
	}
	return strings.TrimSpace(string(out))
}

// cpioShim is a directory with a cpio that never writes outside the current
// directory: rpmlint extracts payloads with `cpio -id`, and nfpm's rpm
// payloads hold absolute paths (docs/release.md).
func cpioShim(t *testing.T) string {
	t.Helper()
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Fatal(err)
	}
	shim := t.TempDir()
	if err := os.WriteFile(filepath.Join(shim, "cpio"), []byte("#!/bin/sh\nexec "+cpio+" --no-absolute-filenames \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return shim
}
