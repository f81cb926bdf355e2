package packaging_test

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// gpgKey makes a throwaway signing key in its own GNUPGHOME (set for the
// test) and returns its armored secret key file.
func gpgKey(t *testing.T, uid string) (home, secret string) {
	t.Helper()
	gpg := tool(t, "gpg")
	home = filepath.Join(t.TempDir(), "gnupg")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GNUPGHOME", home)
	if out, err := exec.Command(gpg, "--batch", "--passphrase", "", "--quick-gen-key", uid, "rsa3072", "sign", "1d").CombinedOutput(); err != nil {
		t.Fatalf("gpg: %v\n%s", err, out)
	}
	out, err := exec.Command(gpg, "--batch", "--armor", "--export-secret-keys").Output()
	if err != nil {
		t.Fatal(err)
	}
	secret = filepath.Join(filepath.Dir(home), "secret.asc")
	if err := os.WriteFile(secret, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return home, secret
}

// aptGet runs apt-get (sources use the copy: method, which fetches into the
// cache as a remote one does) against a private state directory and one source, so
// the test neither reads nor changes the machine's apt configuration; the
// machine's dpkg status satisfies qpcd's dependencies (adduser | passwd).
func aptGet(t *testing.T, state, sourcesLine string, args ...string) ([]byte, error) {
	t.Helper()
	for _, d := range []string{"lists/partial", "archives/partial", "etc/preferences.d", "etc/trusted.gpg.d"} {
		if err := os.MkdirAll(filepath.Join(state, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(state, "sources.list"), []byte(sourcesLine+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := []string{
		"-o", "Dir::Etc::sourcelist=" + filepath.Join(state, "sources.list"),
		"-o", "Dir::Etc::sourceparts=-",
		"-o", "Dir::Etc::preferencesparts=" + filepath.Join(state, "etc/preferences.d"),
		"-o", "Dir::Etc::trustedparts=" + filepath.Join(state, "etc/trusted.gpg.d"),
		"-o", "Dir::State::lists=" + filepath.Join(state, "lists"),
		"-o", "Dir::Cache=" + state,
		"-o", "Dir::Cache::archives=" + filepath.Join(state, "archives"),
		"-o", "APT::Sandbox::User=root",
		"-o", "Debug::NoLocking=1",
		"-q", "-y",
	}
	return exec.Command(tool(t, "apt-get"), append(opts, args...)...).CombinedOutput()
}

// The release's apt repository is signed: apt verifies it with the
// published keyring and fetches qpcd from it; a repository changed after
// signing, a package swapped in the pool, or the wrong key are refused.
func TestSignedAptRepository(t *testing.T) {
	tool(t, "apt-ftparchive")
	tool(t, "createrepo_c")
	binDir, distDir := standIns(t)
	_, secret := gpgKey(t, "qpc test repository <repo@quicprochat.invalid>")
	inRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	cl := changelog(t)
	deb := writePackage(t, "nfpm.yaml", "deb", binDir, distDir, cl, "")
	writePackage(t, "nfpm-qpc.yaml", "deb", binDir, distDir, cl, "")
	writePackage(t, "nfpm.yaml", "rpm", binDir, distDir, cl, secret)
	out := t.TempDir()
	if b, err := exec.Command(filepath.Join(root, "packaging/release/repos.sh"), distDir, out).CombinedOutput(); err != nil {
		t.Fatalf("repos.sh: %v\n%s", err, b)
	}
	apt := filepath.Join(out, "apt")
	keyring := filepath.Join(apt, "quicprochat-archive-keyring.gpg")
	source := "deb [signed-by=" + keyring + "] copy:" + apt + " stable main"

	state := t.TempDir()
	if b, err := aptGet(t, state, source, "update"); err != nil || bytes.Contains(b, []byte("W:")) || bytes.Contains(b, []byte("E:")) {
		t.Fatalf("apt-get update on the signed repository: %v\n%s", err, b)
	}
	if b, err := aptGet(t, state, source, "install", "--download-only", "--no-install-recommends", "qpcd"); err != nil {
		t.Fatalf("apt-get install --download-only qpcd: %v\n%s", err, b)
	}
	got, err := filepath.Glob(filepath.Join(state, "archives", "qpcd_*.deb"))
	if err != nil || len(got) != 1 {
		t.Fatalf("apt fetched %v (%v)", got, err)
	}
	if sum(t, got[0]) != sum(t, deb) {
		t.Error("apt fetched a package that differs from the one released")
	}

	t.Run("changed Release", func(t *testing.T) {
		bad := copyTree(t, apt)
		inRelease := filepath.Join(bad, "dists/stable/InRelease")
		b, err := os.ReadFile(inRelease)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.Replace(b, []byte("Label: quicprochat"), []byte("Label: quicprochaT"), 1)
		if err := os.WriteFile(inRelease, b, 0o644); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(filepath.Join(bad, "dists/stable/Release.gpg"))
		b, err = aptGet(t, t.TempDir(), "deb [signed-by="+keyring+"] copy:"+bad+" stable main", "update")
		if err == nil && !bytes.Contains(b, []byte("E:")) {
			t.Fatalf("apt accepted a changed InRelease:\n%s", b)
		}
		if !bytes.Contains(b, []byte("not signed")) && !bytes.Contains(b, []byte("BADSIG")) && !bytes.Contains(b, []byte("invalid")) {
			t.Errorf("apt refused, but not for the signature:\n%s", b)
		}
	})
	t.Run("swapped package", func(t *testing.T) {
		bad := copyTree(t, apt)
		pool, _ := filepath.Glob(filepath.Join(bad, "pool/main/qpcd_*.deb"))
		b, err := os.ReadFile(pool[0])
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-10] ^= 0xff
		if err := os.WriteFile(pool[0], b, 0o644); err != nil {
			t.Fatal(err)
		}
		src := "deb [signed-by=" + keyring + "] copy:" + bad + " stable main"
		st := t.TempDir()
		if out, err := aptGet(t, st, src, "update"); err != nil {
			t.Fatalf("update: %v\n%s", err, out)
		}
		out, err := aptGet(t, st, src, "install", "--download-only", "--no-install-recommends", "qpcd")
		if err == nil || !bytes.Contains(out, []byte("Hash Sum mismatch")) && !bytes.Contains(out, []byte("hash")) {
			t.Fatalf("apt accepted a swapped package: %v\n%s", err, out)
		}
	})
	t.Run("another key", func(t *testing.T) {
		_, _ = gpgKey(t, "someone else <else@quicprochat.invalid>")
		other := filepath.Join(t.TempDir(), "other.gpg")
		b, err := exec.Command("gpg", "--batch", "--export").Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(other, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := aptGet(t, t.TempDir(), "deb [signed-by="+other+"] copy:"+apt+" stable main", "update")
		if err == nil && !bytes.Contains(out, []byte("E:")) || !bytes.Contains(out, []byte("NO_PUBKEY")) {
			t.Fatalf("apt accepted the repository under another key: %v\n%s", err, out)
		}
	})

	// The yum repository's metadata is signed by the same key, and its
	// .repo file turns both checks on.
	yum := filepath.Join(out, "yum")
	repomd, _ := filepath.Glob(filepath.Join(yum, "*", "repodata", "repomd.xml"))
	if len(repomd) == 0 {
		t.Fatal("no yum repodata")
	}
	for _, r := range repomd {
		ring := filepath.Join(t.TempDir(), "ring.gpg")
		if b, err := exec.Command("gpg", "--batch", "--no-default-keyring", "--keyring", ring, "--import", filepath.Join(yum, "RPM-GPG-KEY-quicprochat")).CombinedOutput(); err != nil {
			t.Fatalf("import: %v\n%s", err, b)
		}
		if b, err := exec.Command("gpgv", "--keyring", ring, r+".asc", r).CombinedOutput(); err != nil {
			t.Errorf("gpgv %s: %v\n%s", r, err, b)
		}
	}
	repo, err := os.ReadFile(filepath.Join(yum, "quicprochat.repo"))
	if err != nil || !strings.Contains(string(repo), "gpgcheck=1") || !strings.Contains(string(repo), "repo_gpgcheck=1") {
		t.Errorf("quicprochat.repo: %v\n%s", err, repo)
	}
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// copyTree copies a directory tree (cp -a) into a new temporary directory.
func copyTree(t *testing.T, dir string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", dir, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	return dst
}
