package compat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

// TestPackageUpgrade installs the previous release's qpcd .deb (built by
// that release's own packaging) in a throwaway Debian bookworm root, runs
// qpcd there once to create data, edits /etc/qpcd/qpcd.yaml locally, and
// upgrades to this tree's .deb with plain `dpkg -i` (no --force-conf*, so
// dpkg's conffile rule decides). Then: the local edit is kept, the data in
// /var/lib/qpcd and the qpcd user survived, the new qpcd starts on the old
// data and serves what the old one stored. Finally the downgrade: dpkg
// installs the old package again, and the old qpcd refuses the database
// the new one migrated, with an error naming the schema versions.
//
// Slow (a Debian root, two release builds) and needs root: it runs only
// with QPC_PACKAGE_UPGRADE=1 (`make package-upgrade-test`).
func TestPackageUpgrade(t *testing.T) {
	if os.Getenv("QPC_PACKAGE_UPGRADE") == "" {
		t.Skip("package upgrade test: run `make package-upgrade-test` (QPC_PACKAGE_UPGRADE=1; needs root, debootstrap and minutes)")
	}
	if os.Geteuid() != 0 {
		t.Skip("package upgrade test: needs root (chroot, mounts, dpkg in a Debian root); run `sudo make package-upgrade-test`")
	}
	for _, tool := range []string{"chroot", "mount", "umount", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("package upgrade test: %s not found", tool)
		}
	}
	needOld(t)
	begin := time.Now()

	// The two packages, each from its own release build.
	oldDeb := findDeb(t, filepath.Join(oldRel.dir, "dist"))
	newDir := script(t, "scripts/compat-build.sh", "HEAD")
	newDeb := findDeb(t, filepath.Join(newDir, "dist"))
	builds := time.Since(begin)

	// A fresh Debian root from the cached tarball.
	tarball := script(t, "scripts/debian-root.sh")
	r := newDebianRoot(t, tarball)
	r.copyIn(t, oldDeb, "/tmp/old.deb")
	r.copyIn(t, newDeb, "/tmp/new.deb")

	// 1. The old package, and data made by the old qpcd.
	if out, err := r.run("", "dpkg", "-i", "/tmp/old.deb"); err != nil {
		t.Fatalf("dpkg -i old.deb: %v\n%s", err, out)
	}
	oldVersion := r.pkgVersion(t)
	uidBefore := r.passwdLine(t, "qpcd")
	// systemd would create the state directory (StateDirectory=qpcd, 0700).
	r.mustRun(t, "install", "-d", "-o", "qpcd", "-g", "qpcd", "-m", "0700", "/var/lib/qpcd")
	d := r.startQPCD(t, oldRel.name)
	alice, bob := newUser(t, "alice", oldRel), newUser(t, "bob", oldRel)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", d.listen, "--pin", d.pin)
		u.ok("register", u.name)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	alice.ok("send", "team", "before the upgrade")
	bob.recvUntil("before the upgrade")
	alice.ok("send", "team", "waiting across the upgrade")
	d.stop(t)
	keyBefore := r.read(t, "/var/lib/qpcd/db.key")

	// 2. A local edit of the configuration.
	const edit = "# local edit: kept across upgrades\n"
	conf := r.read(t, "/etc/qpcd/qpcd.yaml")
	conf = strings.Replace(conf, "  level: info\n", "  level: debug\n", 1)
	if !strings.Contains(conf, "level: debug") {
		t.Fatalf("the old package's qpcd.yaml has no `level: info` to edit:\n%s", conf)
	}
	r.write(t, "/etc/qpcd/qpcd.yaml", edit+conf)

	// 3. The upgrade, as an unattended `dpkg -i` (no terminal, no answers).
	out, err := r.run("", "dpkg", "-i", "/tmp/new.deb")
	prompted := strings.Contains(out, "conffile prompt") || strings.Contains(out, "Configuration file '/etc/qpcd/qpcd.yaml'")
	switch {
	case err == nil:
		figure(t, "dpkg -i new.deb without a terminal: upgraded without a prompt")
	case prompted:
		// dpkg asks about a conffile both the package and the admin changed;
		// without a terminal the configure step fails and the package stays
		// unpacked (new binary, old configuration). The operator's answer,
		// "N" (keep the installed version), finishes it.
		t.Logf("dpkg -i new.deb:\n%s", out)
		figure(t, "finding: dpkg -i new.deb without a terminal stops at the conffile prompt for /etc/qpcd/qpcd.yaml (locally edited and changed by the package): %q",
			lastLine(out, "conffile prompt"))
		if st := r.pkgStatus(t); !strings.Contains(st, "half-configured") && !strings.Contains(st, "unpacked") {
			t.Fatalf("after the failed conffile prompt qpcd is %q (want unpacked or half-configured)", st)
		}
		if out, err := r.run("N\n", "dpkg", "--configure", "qpcd"); err != nil {
			t.Fatalf("dpkg --configure qpcd answering N (keep the local file): %v\n%s", err, out)
		}
	default:
		t.Fatalf("dpkg -i new.deb: %v\n%s", err, out)
	}
	newVersion := r.pkgVersion(t)
	if newVersion == oldVersion || r.pkgStatus(t) != "install ok installed" {
		t.Fatalf("after the upgrade: qpcd %s, status %q (old %s)", newVersion, r.pkgStatus(t), oldVersion)
	}
	if got := r.read(t, "/etc/qpcd/qpcd.yaml"); got != edit+conf {
		t.Fatalf("the upgrade changed the locally edited /etc/qpcd/qpcd.yaml:\n%s", got)
	}
	if r.exists("/etc/qpcd/qpcd.yaml.dpkg-new") || r.exists("/etc/qpcd/qpcd.yaml.dpkg-dist") {
		figure(t, "the new package's configuration is beside it as qpcd.yaml.dpkg-dist (compare and merge by hand)")
	}
	if got := r.passwdLine(t, "qpcd"); got != uidBefore {
		t.Fatalf("the qpcd user changed across the upgrade: %q, was %q", got, uidBefore)
	}
	if got := r.read(t, "/var/lib/qpcd/db.key"); got != keyBefore {
		t.Fatal("the database key in /var/lib/qpcd changed across the upgrade")
	}

	// 4. The new qpcd on the old data: migrated, serving what the old one stored.
	if cfg := r.mustRun(t, "/usr/bin/qpcd", "config", "print", "--config", "/etc/qpcd/qpcd.yaml"); !strings.Contains(cfg, "level: debug") {
		t.Fatalf("the new qpcd's effective configuration lacks the kept local edit (log.level debug):\n%s", cfg)
	}
	d = r.startQPCD(t, "new")
	alice.rel, bob.rel = newRel, newRel
	bob.recvUntil("waiting across the upgrade")
	alice.ok("send", "team", "after the upgrade")
	bob.recvUntil("after the upgrade")
	d.stop(t)

	// 5. The downgrade: dpkg allows it (a warning); the old qpcd refuses the
	// migrated database and names the versions.
	out, err = r.run("N\n", "dpkg", "-i", "/tmp/old.deb")
	if err != nil {
		t.Fatalf("dpkg -i old.deb (downgrade): %v\n%s", err, out)
	}
	t.Logf("dpkg -i old.deb (downgrade):\n%s", out)
	downgradePrompt := "no conffile prompt"
	if strings.Contains(out, "(Y/I/N/O/D/Z)") {
		downgradePrompt = "the conffile prompt again (answered N)"
	}
	if !strings.Contains(out, "Downgrading") && !strings.Contains(out, "downgrading") {
		t.Fatalf("dpkg did not say it downgrades:\n%s", out)
	}
	if v := r.pkgVersion(t); v != oldVersion {
		t.Fatalf("after the downgrade qpcd is %s, want %s", v, oldVersion)
	}
	refusal := r.refusedQPCD(t)
	if !strings.Contains(refusal, "schema version") || !strings.Contains(refusal, "this qpcd knows up to") {
		t.Fatalf("the old qpcd on the migrated database did not name the schema versions:\n%s", refusal)
	}
	packageUpgradeWithEnvFile(t, tarball, oldDeb, newDeb)
	figure(t, "old %s -> new %s -> old: config edit kept, data and user kept, new qpcd served the old data; downgrade: %q, %s; the old qpcd refused: %s (release builds %s, total %s)",
		oldVersion, newVersion, lastLine(out, "owngrading"), downgradePrompt, lastLine(refusal, "schema version"), builds.Round(time.Second), time.Since(begin).Round(time.Second))
}

// TestPackageUpgrade's alternative: local settings kept in
// /etc/qpcd/qpcd.env (read by the systemd unit, not shipped by the
// package, so no conffile) leave qpcd.yaml untouched, and an unattended
// `dpkg -i` upgrades without a prompt.
func packageUpgradeWithEnvFile(t *testing.T, tarball, oldDeb, newDeb string) {
	t.Helper()
	r := newDebianRoot(t, tarball)
	r.copyIn(t, oldDeb, "/tmp/old.deb")
	r.copyIn(t, newDeb, "/tmp/new.deb")
	r.mustRun(t, "dpkg", "-i", "/tmp/old.deb")
	const env = "QPC_LOG_LEVEL=debug\n"
	r.write(t, "/etc/qpcd/qpcd.env", env)
	out, err := r.run("", "dpkg", "-i", "/tmp/new.deb")
	if err != nil {
		t.Fatalf("dpkg -i new.deb with the local settings in qpcd.env (no terminal): %v\n%s", err, out)
	}
	if strings.Contains(out, "(Y/I/N/O/D/Z)") {
		t.Fatalf("dpkg prompted although qpcd.yaml was not edited:\n%s", out)
	}
	if got := r.read(t, "/etc/qpcd/qpcd.env"); got != env {
		t.Fatalf("the upgrade changed /etc/qpcd/qpcd.env: %q", got)
	}
	if !strings.Contains(r.read(t, "/etc/qpcd/qpcd.yaml"), "registration: invite") {
		t.Fatal("the unedited qpcd.yaml was not replaced by the new package's")
	}
	figure(t, "with local settings in /etc/qpcd/qpcd.env instead of qpcd.yaml: dpkg -i new.deb upgraded without a prompt, qpcd.env kept, qpcd.yaml the new package's")
}

// script runs a repository script and returns the last line of its output.
func script(t *testing.T, name string, args ...string) string {
	t.Helper()
	c := exec.Command(filepath.Join(repoRoot, name), args...)
	c.Dir = repoRoot
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

func findDeb(t *testing.T, dist string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dist, "qpcd_*_amd64.deb"))
	if len(m) != 1 {
		t.Fatalf("want one qpcd .deb in %s, found %v", dist, m)
	}
	return m[0]
}

func lastLine(out, with string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], with) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}

// debianRoot is an unpacked Debian root with /proc and /dev bind-mounted;
// the test's cleanup unmounts them and removes the root.
type debianRoot struct {
	dir string
	// qpcd's addresses, the same for every qpcd started in the root (the
	// clients keep the address they were initialised with).
	listen, ops string
}

func newDebianRoot(t *testing.T, tarball string) *debianRoot {
	t.Helper()
	dir, err := os.MkdirTemp(filepath.Join(repoRoot, "bin"), "debroot-")
	if err != nil {
		t.Fatal(err)
	}
	r := &debianRoot{dir: dir, listen: freeAddr(t, "udp"), ops: freeAddr(t, "tcp")}
	var mounted []string
	t.Cleanup(func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			if out, err := exec.Command("umount", mounted[i]).CombinedOutput(); err != nil {
				t.Logf("umount %s: %v %s; trying a lazy unmount", mounted[i], err, out)
				if out, err := exec.Command("umount", "-l", mounted[i]).CombinedOutput(); err != nil {
					t.Errorf("umount -l %s: %v %s (left mounted: remove it by hand)", mounted[i], err, out)
					return // never delete a tree with a live mount inside
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing the Debian root: %v", err)
		}
	})
	if out, err := exec.Command("tar", "--numeric-owner", "-C", dir, "-xpzf", tarball).CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", tarball, err, out)
	}
	for _, m := range []string{"/proc", "/dev"} {
		target := filepath.Join(dir, m)
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "--bind", m, target).CombinedOutput(); err != nil {
			t.Fatalf("mount --bind %s: %v\n%s", m, err, out)
		}
		mounted = append(mounted, target)
	}
	return r
}

func (r *debianRoot) path(p string) string { return filepath.Join(r.dir, p) }

// run runs a command inside the root (stdin as given; no terminal).
func (r *debianRoot) run(stdin string, args ...string) (string, error) {
	c := exec.Command("chroot", append([]string{r.dir}, args...)...)
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "HOME=/root"}
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	return string(out), err
}

func (r *debianRoot) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := r.run("", args...)
	if err != nil {
		t.Fatalf("in the Debian root: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (r *debianRoot) copyIn(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.path(to), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (r *debianRoot) read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(r.path(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (r *debianRoot) write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(r.path(p), []byte(s), 0o640); err != nil {
		t.Fatal(err)
	}
}

func (r *debianRoot) exists(p string) bool {
	_, err := os.Stat(r.path(p))
	return err == nil
}

func (r *debianRoot) pkgVersion(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(r.mustRun(t, "dpkg-query", "-W", "-f=${Version}", "qpcd"))
}

func (r *debianRoot) pkgStatus(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(r.mustRun(t, "dpkg-query", "-W", "-f=${Status}", "qpcd"))
}

// passwdLine is the qpcd user's line in the root's /etc/passwd.
func (r *debianRoot) passwdLine(t *testing.T, name string) string {
	t.Helper()
	line := strings.TrimSpace(r.mustRun(t, "getent", "passwd", name))
	if line == "" {
		t.Fatalf("no user %s in the Debian root", name)
	}
	return line
}

// userspec is the qpcd user's uid:gid inside the root.
func (r *debianRoot) userspec(t *testing.T) string {
	t.Helper()
	f := strings.Split(r.passwdLine(t, "qpcd"), ":")
	return f[2] + ":" + f[3]
}

// rootQPCD is the packaged qpcd running inside the root as the qpcd user
// with the packaged configuration; only the addresses are moved to free
// loopback ports (QPC_LISTEN, QPC_OPS_LISTEN) so the test shares the host.
type rootQPCD struct {
	listen, ops, pin string
	cmd              *exec.Cmd
	done             chan struct{}
	waitErr          error
	mu               sync.Mutex
	log              bytes.Buffer
}

func (r *debianRoot) launchQPCD(t *testing.T) (*rootQPCD, chan map[string]any) {
	t.Helper()
	d := &rootQPCD{listen: r.listen, ops: r.ops, done: make(chan struct{})}
	d.cmd = exec.Command("chroot", "--userspec="+r.userspec(t), r.dir, "/usr/bin/qpcd", "--config", "/etc/qpcd/qpcd.yaml")
	d.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/var/lib/qpcd", "QPC_LISTEN=" + d.listen, "QPC_OPS_LISTEN=" + d.ops}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout = d.cmd.Stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.log.Write(append(sc.Bytes(), '\n'))
			d.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") {
				select {
				case ready <- m:
				default:
				}
			}
		}
		err := d.cmd.Wait()
		d.mu.Lock()
		d.waitErr = err
		d.mu.Unlock()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	})
	return d, ready
}

// startQPCD starts the installed qpcd and waits until /readyz answers 200.
func (r *debianRoot) startQPCD(t *testing.T, which string) *rootQPCD {
	t.Helper()
	d, ready := r.launchQPCD(t)
	select {
	case m := <-ready:
		d.pin = fmt.Sprint(m["cert_sha256"])
	case <-d.done:
		t.Fatalf("the installed (%s) qpcd exited before ready: %v\n%s", which, d.waitErr, d.logText())
	case <-time.After(90 * time.Second):
		t.Fatalf("the installed (%s) qpcd not ready after 90s\n%s", which, d.logText())
	}
	testutil.WaitFor(t, 30*time.Second, 100*time.Millisecond, "/readyz of the installed qpcd", func() bool {
		c := &http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + d.ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return d
}

// refusedQPCD runs the installed qpcd and expects it to exit non-zero before
// it is ready; it returns its output.
func (r *debianRoot) refusedQPCD(t *testing.T) string {
	t.Helper()
	d, ready := r.launchQPCD(t)
	select {
	case <-ready:
		t.Fatalf("the installed qpcd started on a database it should refuse:\n%s", d.logText())
	case <-d.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the installed qpcd neither refused nor started within 60s")
	}
	var ee *exec.ExitError
	if !errors.As(d.waitErr, &ee) {
		t.Fatalf("the installed qpcd on a newer database: %v, want a non-zero exit\n%s", d.waitErr, d.logText())
	}
	return d.logText()
}

func (d *rootQPCD) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

func (d *rootQPCD) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the installed qpcd did not exit within 30s of SIGTERM")
	}
	if d.waitErr != nil {
		t.Fatalf("the installed qpcd after SIGTERM: %v (want exit 0)\n%s", d.waitErr, d.logText())
	}
}
