package packaging_test

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goreleaser/nfpm/v2"

	"github.com/quicprochat/quicprochat/internal/release"
)

// These tests hand the packages to the ecosystem's own verifiers, as a
// release engineer or a distribution would: lintian for the .debs, rpmlint
// and rpm -K for the .rpms (Debian packages; `make deps-test` installs
// them). The binaries are stand-ins built like the release ones (static,
// stripped); everything else is what `make release` packages.

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (`make deps-test` installs it): %v", name, err)
	}
	return p
}

// standIns builds static, stripped Go programs named like the release
// binaries (each different, so no two files are identical).
func standIns(t *testing.T) (binDir, distDir string) {
	t.Helper()
	dir := t.TempDir()
	binDir, distDir = filepath.Join(dir, "bin"), filepath.Join(dir, "dist")
	src := filepath.Join(dir, "src")
	for _, d := range []string{binDir, distDir, src} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	main := "package main\n\nimport \"fmt\"\n\nvar name string\n\nfunc main() { fmt.Println(name) }\n"
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module standin\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"qpcd", "qpcctl", "qpc"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.name="+b, "-o", filepath.Join(binDir, b), ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build stand-in %s: %v\n%s", b, err, out)
		}
	}
	_, pub, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	text, err := pub.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(distDir, "minisign.pub"), text, 0o644); err != nil {
		t.Fatal(err)
	}
	return binDir, distDir
}

// changelog writes the entry build.sh makes for version 1.2.3, release 1.
func changelog(t *testing.T) string {
	t.Helper()
	var buf bytes.Buffer
	if err := release.WriteChangelog(&buf, release.ChangelogEntry{
		Version: "1.2.3-1", Date: time.Unix(1700000000, 0),
		Changes: release.ParseGitLog("abc1234 delivery: a change whose subject is long enough to need wrapping in the Debian changelog, as ours often are\n"),
	}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "changelog.yml")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// writePackage builds one package file with nfpm as build.sh does; sign
// names an armored GPG secret key for the .rpm ("" = unsigned).
func writePackage(t *testing.T, file, format, binDir, distDir, changelogFile, sign string) string {
	t.Helper()
	cfg := nfpmConfig(t, file, binDir, distDir, "amd64")
	info, err := cfg.Get(format)
	if err != nil {
		t.Fatal(err)
	}
	info.Changelog = changelogFile
	info.RPM.Signature.KeyFile = sign
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, format); err != nil {
		t.Fatal(err)
	}
	pkg, err := nfpm.Get(format)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(distDir, pkg.ConventionalFileName(info))
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pkg.Package(info, f); err != nil {
		t.Fatalf("%s %s: %v", file, format, err)
	}
	return out
}

func TestLintianAcceptsTheDebs(t *testing.T) {
	lintian := tool(t, "lintian")
	binDir, distDir := standIns(t)
	inRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cl := changelog(t)
	debs := []string{
		writePackage(t, "nfpm.yaml", "deb", binDir, distDir, cl, ""),
		writePackage(t, "nfpm-qpc.yaml", "deb", binDir, distDir, cl, ""),
	}
	// --fail-on warning: every error and warning fails; the deliberate ones
	// are overridden in packaging/debian/*.lintian-overrides with a reason.
	cmd := exec.Command(lintian, append([]string{"--fail-on", "error,warning", "--tag-display-limit", "0"}, debs...)...)
	out, err := cmd.CombinedOutput()
	report := strings.TrimSpace(strings.ReplaceAll(string(out), "running with root privileges is not recommended!", ""))
	if err != nil || report != "" {
		t.Fatalf("lintian: %v\n%s", err, report)
	}
}

func TestDebsInstallSideBySide(t *testing.T) {
	binDir, distDir := standIns(t)
	inRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cl := changelog(t)
	owners := map[string]string{}
	for _, c := range []struct{ file, name string }{{"nfpm.yaml", "qpcd"}, {"nfpm-qpc.yaml", "qpc"}} {
		deb := writePackage(t, c.file, "deb", binDir, distDir, cl, "")
		out, err := exec.Command("dpkg-deb", "--fsys-tarfile", deb).Output()
		if err != nil {
			t.Fatalf("dpkg-deb: %v", err)
		}
		list, err := listTar(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list {
			if strings.HasSuffix(p, "/") {
				continue
			}
			if other, ok := owners[p]; ok {
				t.Errorf("%s is in both %s and %s: dpkg refuses to install them together", p, other, c.name)
			}
			owners[p] = c.name
		}
	}
	if owners["./usr/share/quicprochat/minisign.pub"] != "qpcd" {
		t.Errorf("the release key must be owned by qpcd alone: %v", owners)
	}
}

func TestRpmlintAndRpmAcceptTheRpms(t *testing.T) {
	rpmlint, rpm, gpg := tool(t, "rpmlint"), tool(t, "rpm"), tool(t, "gpg")
	binDir, distDir := standIns(t)
	home := t.TempDir()
	t.Setenv("GNUPGHOME", filepath.Join(home, "gnupg"))
	if err := os.MkdirAll(filepath.Join(home, "gnupg"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A throwaway signing key, as the release's real one is used (docs/release.md).
	run := func(name string, args ...string) []byte {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return out
	}
	run(gpg, "--batch", "--passphrase", "", "--quick-gen-key", "qpc test packages <test@quicprochat.invalid>", "rsa3072", "sign", "1d")
	secret := filepath.Join(home, "signing.asc")
	if err := os.WriteFile(secret, run(gpg, "--batch", "--armor", "--export-secret-keys"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(home, "signing.pub")
	if err := os.WriteFile(pub, run(gpg, "--batch", "--armor", "--export"), 0o644); err != nil {
		t.Fatal(err)
	}
	inRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cl := changelog(t)
	rpms := []string{
		writePackage(t, "nfpm.yaml", "rpm", binDir, distDir, cl, secret),
		writePackage(t, "nfpm-qpc.yaml", "rpm", binDir, distDir, cl, secret),
	}

	// rpm's own checks against a private database holding only our key
	// (HOME's .rpmmacros points rpm at it): signed, digests intact, and the
	// metadata a repository shows.
	if err := os.WriteFile(filepath.Join(home, ".rpmmacros"), []byte("%_dbpath "+filepath.Join(home, "rpmdb")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	run(rpm, "--initdb")
	run(rpm, "--import", pub)
	for _, p := range rpms {
		out := string(run(rpm, "-Kv", p))
		if !strings.Contains(out, "Header V4 RSA/SHA256 Signature") || strings.Contains(out, "NOKEY") || strings.Contains(out, "BAD") {
			t.Errorf("rpm -Kv %s:\n%s", filepath.Base(p), out)
		}
		info := string(run(rpm, "-qpi", p))
		for _, want := range []string{"License     : Apache-2.0", "Signature   : RSA/SHA256", "Release     : 1"} {
			if !strings.Contains(info, want) {
				t.Errorf("rpm -qpi %s lacks %q:\n%s", filepath.Base(p), want, info)
			}
		}
		files := string(run(rpm, "-qpl", p))
		for _, b := range []string{"qpcd", "qpcctl", "qpc"} {
			if strings.Contains(files, "/usr/bin/"+b+"\n") && !strings.Contains(files, "/usr/share/man/man1/"+b+".1.gz\n") {
				t.Errorf("%s ships %s without its man page", filepath.Base(p), b)
			}
		}
		if cl := string(run(rpm, "-qp", "--changelog", p)); !strings.Contains(cl, "1.2.3-1") {
			t.Errorf("rpm changelog of %s:\n%s", filepath.Base(p), cl)
		}
	}
	// A changed byte is refused.
	tampered := filepath.Join(t.TempDir(), "tampered.rpm")
	b, err := os.ReadFile(rpms[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-100] ^= 1
	if err := os.WriteFile(tampered, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(rpm, "-K", tampered).CombinedOutput(); err == nil {
		t.Errorf("rpm -K accepted a changed package:\n%s", out)
	}

	t.Setenv("PATH", cpioShim(t)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := exec.Command(rpmlint, append([]string{"-c", filepath.Join(root, "packaging", "rpmlint.toml"), "-r", filepath.Join(root, "packaging", "rpmlintrc")}, rpms...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "0 errors, 0 warnings") {
		t.Fatalf("rpmlint: %v\n%s", err, out)
	}
}

// listTar lists the member names of an uncompressed tar stream.
func listTar(b []byte) ([]string, error) {
	var names []string
	r := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := r.Next()
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return nil, err
		}
		names = append(names, h.Name)
	}
}
