package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestUsageAndExitCodes(t *testing.T) {
	dir := filepath.Join(shortDir(t), "data")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"nosuch"}, 2, "unknown command"},
		{[]string{"backup", "create"}, 2, "needs --out FILE"},
		{[]string{"backup", "verify"}, 2, "missing FILE (usage: qpcctl backup verify FILE"},
		{[]string{"status", "--bogus"}, 2, "unknown flag"},
		{[]string{"status"}, 1, "is qpcd running? start it"},
		{[]string{"--json", "status"}, 1, "pass --socket"},
		{[]string{"rotate", "tls"}, 1, "is qpcd running?"},
		// Away from any deployment, restore and migrate say that there is
		// no data directory (they used to complain of a missing db.key).
		{[]string{"restore", "/nonexistent/b.qpcbak"}, 2, "data directory " + dir + " does not exist (from --data-dir"},
		{[]string{"migrate", "to-postgres", "--dsn", "postgres://x@127.0.0.1/x"}, 2, "migrate to-postgres works on the data directory of a stopped qpcd; pass its --data-dir"},
		// The file is checked before the key is read.
		{[]string{"backup", "verify", "/nonexistent/b.qpcbak", "--key-file", "/nonexistent/key"}, 1, "open /nonexistent/b.qpcbak: no such file"},
	} {
		r := ctl(t, dir, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("qpcctl %v: exit %d, stderr %q; want exit %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
	// --json failures carry the error on stdout too.
	if r := ctl(t, dir, "--json", "status"); !strings.Contains(r.stdout, `"exit_code":1`) || strings.Count(strings.TrimSpace(r.stdout), "\n") != 0 {
		t.Errorf("--json error output %q", r.stdout)
	}
	// --help is pinned as a golden file.
	r := ctl(t, dir, "--help")
	golden := filepath.Join("testdata", "help.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestUsageAndExitCodes -update)", err)
	}
	if r.stdout != string(want) {
		t.Errorf("--help differs from %s (go test -update rewrites it):\n%s", golden, r.stdout)
	}
}

// TestBackupUnderWritesThenRestore: a backup taken while clients write
// holds every write acknowledged before it started; after drain, restore
// and restart, qpcd serves exactly the snapshot.
func TestBackupUnderWritesThenRestore(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir)
	w := startWriters(t, d, 4, "b")
	w.waitMore(t, 60)

	before := w.snapshot()
	file := filepath.Join(base, "full.qpcbak")
	var res admin.BackupResult
	ctlOK(t, dataDir, &res, "backup", "create", "--out", file)
	after := len(w.snapshot())
	w.waitMore(t, 40) // writes went on
	all := w.finish(t)
	afterBackup := all[after:]
	t.Logf("backup: %d bytes in %.3fs with %d accounts; %d writes acknowledged before it, %d after",
		res.Bytes, res.TookSeconds, res.Manifest.Tables["accounts"], len(before), len(afterBackup))

	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, %v", st, err)
	}
	if m := res.Manifest; m.Format != admin.BackupFormat || m.SchemaVersion == 0 || m.DBSHA256 == "" || m.CreatedAt.IsZero() || m.QPCDVersion == "" {
		t.Fatalf("manifest %+v", m)
	}
	if !res.Recorded {
		t.Fatal("qpcd did not record the backup")
	}
	var st admin.Status
	ctlOK(t, dataDir, &st, "status")
	if st.LastBackup == nil || st.LastBackup.DBSHA256 != res.Manifest.DBSHA256 || st.Counts.Accounts < int64(len(all)) {
		t.Fatalf("status after backup: %+v", st)
	}
	// The refusal to overwrite, and verify on the good file.
	if r := ctl(t, dataDir, "backup", "create", "--out", file); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("backup over an existing file: %+v", r)
	}
	var vr admin.VerifyReport
	ctlOK(t, dataDir, &vr, "backup", "verify", file)
	if vr.Tables["accounts"] != res.Manifest.Tables["accounts"] {
		t.Fatalf("verify counts %v, manifest %v", vr.Tables, res.Manifest.Tables)
	}

	// Restore refuses while qpcd runs on the data dir.
	if r := ctl(t, dataDir, "restore", file); r.code != 1 || !strings.Contains(r.stderr, "qpcd must be stopped") {
		t.Fatalf("restore while running: %+v", r)
	}
	d.drain(t)

	// Dry run: reports, changes nothing.
	var dry admin.RestoreReport
	ctlOK(t, dataDir, &dry, "restore", "--dry-run", file)
	if !dry.DryRun || dry.Tables["accounts"] != res.Manifest.Tables["accounts"] || dry.PreRestore != "" {
		t.Fatalf("dry run: %+v", dry)
	}
	var rr admin.RestoreReport
	ctlOK(t, dataDir, &rr, "restore", file)
	if rr.PreRestore == "" {
		t.Fatalf("restore kept no pre-restore file: %+v", rr)
	}
	if _, err := os.Stat(rr.PreRestore); err != nil {
		t.Fatalf("pre-restore file: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dataDir, "*restore-tmp*")); len(left) > 0 {
		t.Fatalf("restore left %v", left)
	}

	startQPCD(t, dataDir)
	got := accountNames(t, dataDir)
	for _, n := range before {
		if !got[n] {
			t.Fatalf("account %s, acknowledged before the backup, is missing after restore", n)
		}
	}
	for _, n := range afterBackup {
		if got[n] {
			t.Fatalf("account %s, acknowledged after the backup finished, is in the restored data", n)
		}
	}
	if int64(len(got)) != res.Manifest.Tables["accounts"] {
		t.Fatalf("restored %d accounts, the manifest says %d", len(got), res.Manifest.Tables["accounts"])
	}
}

// TestCorruptBackups: each kind of bad file gets its own error and exit 1,
// from verify and from restore, and restore leaves the live data alone.
func TestCorruptBackups(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir)
	c := d.mustDial(t)
	for i := range 30 {
		if _, _, err := register(c, "c"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+hex.EncodeToString([]byte{byte(i)})); err != nil {
			t.Fatal(err)
		}
	}
	good := filepath.Join(base, "good.qpcbak")
	ctlOK(t, dataDir, nil, "backup", "create", "--out", good)
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(base, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := append([]byte(nil), raw...)
	flipped[len(flipped)-1000] ^= 0x10
	otherKey := make([]byte, 32)
	if _, err := rand.Read(otherKey); err != nil {
		t.Fatal(err)
	}
	keyFile := write("other.key", []byte(hex.EncodeToString(otherKey)+"\n"))
	cases := []struct {
		name, file string
		extra      []string
		want       string
	}{
		{"truncated", write("trunc.qpcbak", raw[:len(raw)/2]), nil, "truncated"},
		{"truncated header", write("trunc2.qpcbak", raw[:5]), nil, "truncated"},
		{"bit flip", write("flip.qpcbak", flipped), nil, "damaged (checksum mismatch)"},
		{"wrong key", good, []string{"--key-file", keyFile}, "does not open with this database key"},
		{"wrong format", write("plain.txt", []byte("hello, this is not a backup at all\n")), nil, "not a qpcd backup file"},
		{"sqlite file", write("x.db", append([]byte("SQLite format 3\x00"), make([]byte, 4080)...)), nil, "not a qpcd backup file"},
	}
	seen := map[string]string{}
	for _, cs := range cases {
		r := ctl(t, dataDir, append([]string{"backup", "verify", cs.file}, cs.extra...)...)
		if r.code != 1 || !strings.Contains(r.stderr, cs.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and %q", cs.name, r.code, r.stderr, cs.want)
		}
		seen[cs.want] = cs.name
	}
	if len(seen) != 4 {
		t.Errorf("want 4 distinct errors, got %v", seen)
	}

	// Away from the server's directory (no key anywhere), the checks that
	// need no key still run first: a missing or damaged file is told as
	// such, a sound one is reported sound up to the key, and the message
	// names the flag that gives the key (backup verify's --key-file).
	away := filepath.Join(base, "elsewhere")
	for _, cs := range []struct{ name, file, want string }{
		{"missing", filepath.Join(base, "no-such.qpcbak"), "no such file or directory"},
		{"truncated", cases[0].file, "truncated"},
		{"bit flip", cases[2].file, "damaged (checksum mismatch)"},
		{"wrong format", cases[4].file, "not a qpcd backup file"},
	} {
		r := ctl(t, away, "backup", "verify", cs.file)
		if r.code != 1 || !strings.Contains(r.stderr, cs.want) || strings.Contains(r.stderr, "db.key") {
			t.Errorf("verify %s without a key: exit %d, stderr %q; want exit 1, %q and no word of the key", cs.name, r.code, r.stderr, cs.want)
		}
	}
	var m struct {
		Manifest admin.Manifest `json:"manifest"`
	}
	ctlOK(t, dataDir, &m, "backup", "verify", good)
	r := ctl(t, away, "backup", "verify", good)
	for _, want := range []string{"layout, manifest checksum, size, sha256 passed", "key id " + m.Manifest.KeyID, "pass it with --key-file FILE"} {
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("verify of a sound backup without a key: exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, want)
		}
	}
	if r := ctl(t, away, "backup", "verify", good, "--key-file", filepath.Join(dataDir, "db.key")); r.code != 0 || !strings.HasPrefix(r.stdout, "OK ") {
		t.Errorf("verify with --key-file: %+v", r)
	}
	// A malformed key file: the message says what the file holds (not
	// its content) and ends as a sentence, naming the flag given.
	short := write("short.key", []byte("0123456789abcdef0123\n"))
	r = ctl(t, away, "backup", "verify", good, "--key-file", short)
	if r.code != 2 || !strings.Contains(r.stderr, "--key-file "+short+": expected a file holding 64 hex characters") ||
		!strings.Contains(r.stderr, "this file holds 20 hex characters, not 64 (") || strings.Contains(r.stderr, "0123456789abcdef") ||
		strings.Contains(r.stderr, "db.key_file") {
		t.Errorf("malformed --key-file: exit %d, stderr %q", r.code, r.stderr)
	}

	d.drain(t)
	liveBefore, err := os.ReadFile(filepath.Join(dataDir, "qpcd.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cs := range cases {
		args := []string{"restore", cs.file}
		if cs.extra != nil {
			args = append(args, "--backup-key-file", cs.extra[1])
		}
		if r := ctl(t, dataDir, args...); r.code != 1 || !strings.Contains(r.stderr, cs.want) {
			t.Errorf("restore %s: exit %d, stderr %q", cs.name, r.code, r.stderr)
		}
	}
	liveAfter, err := os.ReadFile(filepath.Join(dataDir, "qpcd.db"))
	if err != nil {
		t.Fatal(err)
	}
	if string(liveBefore) != string(liveAfter) {
		t.Fatal("a refused restore changed the live database")
	}
	matches, _ := filepath.Glob(filepath.Join(dataDir, "*pre-restore*"))
	if len(matches) != 0 {
		t.Fatalf("refused restores left %v", matches)
	}
}

// TestRotateDBKeyUnderLoad: rotating the database key while clients write
// loses no acknowledged write, writes the new key file, and qpcd restarts on it.
func TestRotateDBKeyUnderLoad(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir)
	oldKey, err := os.ReadFile(filepath.Join(dataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	w := startWriters(t, d, 4, "k")
	w.waitMore(t, 100)
	var res admin.RotateDBKeyResult
	ctlOK(t, dataDir, &res, "rotate", "db-key")
	w.waitMore(t, 100)
	acked := w.finish(t)
	t.Logf("rotate db-key: %d bytes, took %.3fs, writes waited %.3fs, %d writes acknowledged in total",
		res.DBBytes, res.TookSeconds, res.PausedSeconds, len(acked))
	if res.OldKeyID == res.NewKeyID || res.NewKeyID == "" {
		t.Fatalf("key ids %+v", res)
	}
	newKey, err := os.ReadFile(filepath.Join(dataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	if string(newKey) == string(oldKey) {
		t.Fatal("key file unchanged")
	}
	if st, _ := os.Stat(filepath.Join(dataDir, "db.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode())
	}
	for _, leftover := range []string{"db.key.new", "qpcd.db.pre-rekey", "qpcd.db.rekey-tmp"} {
		if _, err := os.Stat(filepath.Join(dataDir, leftover)); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", leftover, err)
		}
	}
	got := accountNames(t, dataDir)
	for _, n := range acked {
		if !got[n] {
			t.Fatalf("acknowledged account %s lost by the key rotation", n)
		}
	}
	var st admin.Status
	ctlOK(t, dataDir, &st, "status")
	if st.DBKeyID != res.NewKeyID {
		t.Fatalf("status key id %s, want %s", st.DBKeyID, res.NewKeyID)
	}
	// qpcd restarts on the new key file with everything in place.
	d.drain(t)
	startQPCD(t, dataDir)
	if n := len(accountNames(t, dataDir)); n != len(got) {
		t.Fatalf("after restart %d accounts, before %d", n, len(got))
	}
}

// replaceCert writes a new self-signed certificate over the daemon's files
// and returns its fingerprint.
func replaceCert(t *testing.T, dataDir string) string {
	t.Helper()
	tmp := t.TempDir()
	cert, key := filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem")
	if _, err := transport.EnsureDevCertificate(cert, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	store, err := transport.NewCertStore(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ src, dst string }{{key, "key.pem"}, {cert, "cert.pem"}} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dataDir, "tls", f.dst)
		if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
	}
	return store.Fingerprint()
}

// TestRotateTLSKeepsConnections: `rotate tls` (and SIGHUP) switch new
// handshakes to the new certificate while open connections keep working.
func TestRotateTLSKeepsConnections(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir)
	c := d.mustDial(t)
	if _, _, err := register(c, "tls-before"); err != nil {
		t.Fatal(err)
	}

	fp := replaceCert(t, dataDir)
	var res admin.RotateTLSResult
	ctlOK(t, dataDir, &res, "rotate", "tls")
	if res.Fingerprint != fp || res.OldFingerprint != d.pin || res.Connections < 1 {
		t.Fatalf("rotate tls: %+v (want %s)", res, fp)
	}
	// The open connection carries on.
	if _, _, err := register(c, "tls-after"); err != nil {
		t.Fatalf("existing connection after rotate: %v", err)
	}
	if _, err := d.dial(t, d.pin); err == nil {
		t.Fatal("a new handshake still got the old certificate")
	}
	c2, err := d.dial(t, fp)
	if err != nil {
		t.Fatalf("dial with the new pin: %v", err)
	}
	defer c2.Close()

	// A broken file is refused and the current certificate stays.
	if err := os.WriteFile(filepath.Join(dataDir, "tls", "cert.pem"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, dataDir, "rotate", "tls"); r.code != 1 || !strings.Contains(r.stderr, "keeps serving the current certificate") {
		t.Fatalf("rotate tls with a broken file: %+v", r)
	}

	// SIGHUP does the same as rotate tls.
	fp2 := replaceCert(t, dataDir)
	d.signal(t, syscall.SIGHUP)
	waitFor(t, 10*time.Second, "SIGHUP reload", func() bool {
		var st admin.Status
		ctlOK(t, dataDir, &st, "status")
		return st.TLSFingerprint == fp2
	})
	if _, _, err := register(c, "tls-after-hup"); err != nil {
		t.Fatalf("existing connection after SIGHUP: %v", err)
	}
}

// TestRotateTokenKey: after `rotate token-key`, tokens signed by the old key
// keep working until they expire, and new logins get the new key.
func TestRotateTokenKey(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	const ttl = 4 * time.Second
	d := startQPCD(t, dataDir, "QPC_AUTH_ACCESS_TOKEN_TTL=4s")
	c := d.mustDial(t)
	dev, key, err := register(c, "tok")
	if err != nil {
		t.Fatal(err)
	}
	old, err := login(c, dev, key)
	if err != nil {
		t.Fatal(err)
	}
	var before admin.Status
	ctlOK(t, dataDir, &before, "status")

	var res admin.RotateTokenKeyResult
	ctlOK(t, dataDir, &res, "rotate", "token-key")
	if res.KeyID == "" || res.KeyID == before.TokenKeyID {
		t.Fatalf("rotate token-key: %+v, before %s", res, before.TokenKeyID)
	}
	if until := time.Until(res.OldKeysUntil); until < ttl-3*time.Second || until > ttl+time.Second {
		t.Fatalf("old keys verify until %s (in %s), want about the token TTL", res.OldKeysUntil, until)
	}
	// The old token still works right after the rotation ...
	if err := whoAmI(c, old.GetAccessToken()); err != nil {
		t.Fatalf("old token after rotation: %v", err)
	}
	// ... a new login is signed by the new key and works ...
	fresh, err := login(c, dev, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := whoAmI(c, fresh.GetAccessToken()); err != nil {
		t.Fatalf("new token: %v", err)
	}
	if fresh.GetAccessToken() == old.GetAccessToken() {
		t.Fatal("same token twice")
	}
	// ... and the old token keeps working until its own expiry, not longer.
	expires := time.UnixMilli(old.GetAccessExpiresUnixMs())
	waitFor(t, ttl+10*time.Second, "old token to expire", func() bool { return whoAmI(c, old.GetAccessToken()) != nil })
	if time.Now().Before(expires) {
		t.Fatalf("old token refused at %s, before its expiry %s", time.Now(), expires)
	}
}

// TestAccountsDevicesInvites drives the account administration commands.
func TestAccountsDevicesInvites(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir)
	c := d.mustDial(t)
	dev, key, err := register(c, "alice")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := login(c, dev, key)
	if err != nil {
		t.Fatal(err)
	}

	var acc admin.Account
	ctlOK(t, dataDir, &acc, "accounts", "show", "alice")
	if acc.Name != "alice" || acc.Status != "active" || len(acc.Devices) != 1 || acc.Devices[0].ID != dev {
		t.Fatalf("show: %+v", acc)
	}
	r := ctl(t, dataDir, "accounts", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "alice") || !strings.HasPrefix(r.stdout, "ID") {
		t.Fatalf("accounts list: %+v", r)
	}
	ctlOK(t, dataDir, &acc, "accounts", "disable", acc.ID)
	if acc.Status != "disabled" {
		t.Fatalf("disable: %+v", acc)
	}
	if err := whoAmI(c, tok.GetAccessToken()); err == nil {
		t.Fatal("a disabled account's token still works")
	}
	ctlOK(t, dataDir, &acc, "accounts", "enable", "alice")
	if acc.Status != "active" {
		t.Fatalf("enable: %+v", acc)
	}
	if r := ctl(t, dataDir, "accounts", "show", "nobody"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("show unknown: %+v", r)
	}

	var devs []admin.Device
	ctlOK(t, dataDir, &devs, "devices", "list", "--account", "alice")
	if len(devs) != 1 || devs[0].Status != "active" {
		t.Fatalf("devices: %+v", devs)
	}
	ctlOK(t, dataDir, nil, "devices", "revoke", dev)
	ctlOK(t, dataDir, &devs, "devices", "list")
	if len(devs) != 1 || devs[0].Status != "revoked" {
		t.Fatalf("after revoke: %+v", devs)
	}
	if _, err := login(c, dev, key); err == nil {
		t.Fatal("a revoked device logged in")
	}
	// A malformed id says what an id looks like and where to find one.
	if r := ctl(t, dataDir, "devices", "revoke", "nonesuch"); r.code != 1 || !strings.Contains(r.stderr, "32 hex characters") || !strings.Contains(r.stderr, "qpcctl devices list") {
		t.Fatalf("revoke of a malformed id: %+v", r)
	}

	var inv admin.Invite
	ctlOK(t, dataDir, &inv, "invites", "create", "--ttl", "1h", "--created-by", "ops")
	if inv.Code == "" || inv.State != "open" || inv.CreatedBy != "ops" {
		t.Fatalf("invite: %+v", inv)
	}
	// This server's registration is open: an invite is useless, and
	// creating one says so (it used to succeed silently).
	if !strings.Contains(inv.Warning, "auth.registration is open") {
		t.Fatalf("invite on an open server carries no warning: %+v", inv)
	}
	if r := ctl(t, dataDir, "invites", "create"); r.code != 0 || !strings.Contains(r.stderr, "warning: auth.registration is open") {
		t.Fatalf("invites create on an open server: %+v", r)
	}
	var invs []admin.Invite
	ctlOK(t, dataDir, &invs, "invites", "list")
	if len(invs) != 2 || invs[1].Code != "" || invs[1].ID != inv.ID {
		t.Fatalf("list shows %+v (the code must not be listed)", invs)
	}
	ctlOK(t, dataDir, nil, "invites", "revoke", inv.ID)
	ctlOK(t, dataDir, &invs, "invites", "list")
	if invs[1].State != "revoked" {
		t.Fatalf("after revoke: %+v", invs)
	}
	// An unknown invite points at the invite list, not the account list.
	if r := ctl(t, dataDir, "invites", "revoke", "0123456789abcdef0123456789abcdef"); r.code != 1 ||
		!strings.Contains(r.stderr, "qpcctl invites list") || strings.Contains(r.stderr, "accounts list") {
		t.Fatalf("revoke of an unknown invite: %+v", r)
	}
	if r := ctl(t, dataDir, "invites", "create", "--ttl", "10000h"); r.code != 1 {
		t.Fatalf("over-long invite: %+v", r)
	}

	// Human status output names every area.
	r = ctl(t, dataDir, "status")
	for _, want := range []string{"uptime:", "readiness:    ready", "connections:", "accounts:     1", "devices:", "channels:", "keypackages:", "  MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", "database:", "last backup:  never"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	// Socket: 0600, and --socket reaches it from anywhere.
	sock := filepath.Join(dataDir, "admin.sock")
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	if r := ctl(t, filepath.Join(base, "elsewhere"), "--socket", sock, "status"); r.code != 0 {
		t.Fatalf("--socket: %+v", r)
	}
}

// TestProgressOnTerminal: long commands show progress on stderr when it is a
// terminal (here a pty from script(1)), never when piped or with --json.
func TestProgressOnTerminal(t *testing.T) {
	scriptBin, err := exec.LookPath("script")
	if err != nil {
		t.Skip("script(1) from util-linux is needed for a pty")
	}
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	startQPCD(t, dataDir)
	onTTY := func(args string) string {
		cmd := exec.Command(scriptBin, "-qec", qpcctlBin+" --data-dir "+dataDir+" "+args, "/dev/null")
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := onTTY("backup create --out " + filepath.Join(base, "tty.qpcbak")); !strings.Contains(out, "taking a snapshot...") || !strings.Contains(out, "\r\033[K") {
		t.Errorf("no progress on a terminal:\n%q", out)
	}
	if out := onTTY("--json backup create --out " + filepath.Join(base, "tty2.qpcbak")); strings.Contains(out, "taking a snapshot") {
		t.Errorf("progress with --json:\n%q", out)
	}
	if r := ctl(t, dataDir, "backup", "create", "--out", filepath.Join(base, "pipe.qpcbak")); r.code != 0 || strings.Contains(r.stderr, "\r") {
		t.Errorf("progress on a pipe: %+v", r)
	}
}

// TestKeyFilesOpenToOthersRefused: every key file qpcctl reads (--key-file,
// --backup-key-file, --db-key-file and the default <data_dir>/db.key) is
// refused with exit 2 when group or others may access it, naming the file,
// its mode and the chmod fix, before anything else is done.
func TestKeyFilesOpenToOthersRefused(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	write := func(path string, mode os.FileMode) string {
		if err := os.WriteFile(path, []byte(hex.EncodeToString(raw)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	dbKey := write(filepath.Join(dataDir, "db.key"), 0o600)
	open := write(filepath.Join(base, "open.key"), 0o644)
	group := write(filepath.Join(base, "group.key"), 0o640)
	// A backup sound in layout and checksums, so that verify gets to the
	// key; its key-dependent checks are never reached.
	backup := structurallySoundBackup(t, base)
	check := func(args []string, path string, mode os.FileMode, mentions ...string) {
		t.Helper()
		r := ctl(t, dataDir, args...)
		mentions = append(mentions, fmt.Sprintf("it has mode %04o; run: chmod 600 %s", uint32(mode), path))
		if r.code != 2 {
			t.Fatalf("qpcctl %v: exit %d, want 2; stderr %q", args, r.code, r.stderr)
		}
		for _, m := range mentions {
			if !strings.Contains(r.stderr, m) {
				t.Errorf("qpcctl %v: stderr %q does not mention %q", args, r.stderr, m)
			}
		}
	}
	check([]string{"backup", "verify", backup, "--key-file", open}, open, 0o644, "--key-file")
	check([]string{"restore", backup, "--backup-key-file", group}, group, 0o640, "--backup-key-file")
	check([]string{"--db-key-file", open, "backup", "verify", backup}, open, 0o644, "db.key_file")
	if err := os.Chmod(dbKey, 0o604); err != nil {
		t.Fatal(err)
	}
	check([]string{"backup", "verify", backup}, dbKey, 0o604, "db.key_file")
	check([]string{"restore", backup}, dbKey, 0o604, "db.key_file")
	// Fixed as told, the same command gets past the key to the missing backup.
	if err := os.Chmod(dbKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, dataDir, "backup", "verify", backup); r.code != 1 || strings.Contains(r.stderr, "chmod") || !strings.Contains(r.stderr, "does not open with this database key") {
		t.Fatalf("after chmod 600: exit %d, stderr %q", r.code, r.stderr)
	}
}

// structurallySoundBackup writes a backup file whose layout, manifest and
// checksums are right around a database of random bytes (which no key opens).
func structurallySoundBackup(t *testing.T, dir string) string {
	t.Helper()
	db := filepath.Join(dir, "random.db")
	raw := make([]byte, 8192)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	sum, n, err := admin.FileSHA256(db)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sound.qpcbak")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := admin.Manifest{Format: admin.BackupFormat, QPCDVersion: "test", SchemaVersion: 1, CreatedAt: time.Now().UTC(), DBBytes: n, DBSHA256: sum}
	if err := admin.WriteBackup(f, m, db); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestInvitesListNamesTheAccount: an invite's USED BY is the account's name
// (an operator knows people by name), its id stays in --json.
func TestInvitesListNamesTheAccount(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir, "QPC_AUTH_REGISTRATION=invite")
	var inv admin.Invite
	ctlOK(t, dataDir, &inv, "invites", "create")
	if inv.Warning != "" {
		t.Fatalf("invite on an invite-only server warns: %q", inv.Warning)
	}
	c := d.mustDial(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	var resp qpcv1.RegisterResponse
	if err := c.Call(ctx, "Register", "", &qpcv1.RegisterRequest{AccountName: "carol", SignatureKey: pub, InviteCode: inv.Code}, &resp); err != nil {
		t.Fatal(err)
	}
	var invs []admin.Invite
	ctlOK(t, dataDir, &invs, "invites", "list")
	if len(invs) != 1 || invs[0].UsedBy != resp.GetAccountId() || invs[0].UsedByName != "carol" {
		t.Fatalf("invites list --json: %+v; want used by %s (carol)", invs, resp.GetAccountId())
	}
	r := ctl(t, dataDir, "invites", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 || !strings.HasSuffix(lines[1], "  carol") || strings.Contains(r.stdout, resp.GetAccountId()) {
		t.Fatalf("invites list shows %q; want carol in USED BY, not the account id", r.stdout)
	}
}

// TestStuckQPCDIsToldNotWaitedOn: a qpcd that accepts on its admin socket
// and never answers used to hold every command silently for 10 minutes.
// A quick command now gives up after its time limit (30 s by default),
// says what is awaited while it waits (progress rules: QPC_PROGRESS=1
// forces it off a terminal) and, at the end, what to check.
func TestStuckQPCDIsToldNotWaitedOn(t *testing.T) {
	sock := filepath.Join(shortDir(t), "stuck.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	run := func(env []string, args ...string) (result, time.Duration) {
		t.Helper()
		cmd := exec.Command(qpcctlBin, append([]string{"--socket", sock}, args...)...)
		cmd.Env = cleanEnv(env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		err := cmd.Run()
		var ee *exec.ExitError
		code := 0
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return result{out.String(), errb.String(), code}, time.Since(start)
	}
	r, took := run([]string{"QPC_PROGRESS=1"}, "--timeout", "3s", "status")
	if r.code != 1 || took > 15*time.Second {
		t.Fatalf("status against a stuck qpcd: exit %d after %s; want 1 after about 3s (%q)", r.code, took, r.stderr)
	}
	for _, want := range []string{"qpcctl: waiting for qpcd's answer (gives up after 3s, --timeout)...", "no answer within 3s", "qpcd may be stuck or overloaded", "pass a longer --timeout"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "\r") {
		t.Errorf("forced progress off a terminal overwrites lines:\n%q", r.stderr)
	}
	// --json: the error as one object, and no progress on stderr.
	r, _ = run([]string{"QPC_PROGRESS=1"}, "--json", "--timeout", "2s", "accounts", "list")
	if r.code != 1 || strings.Contains(r.stderr, "waiting for") || !strings.Contains(r.stdout, `"exit_code":1`) || !strings.Contains(r.stdout, "no answer within 2s") {
		t.Errorf("--json against a stuck qpcd: %+v", r)
	}
	// Without QPC_PROGRESS and off a terminal: quiet until the error.
	r, _ = run(nil, "--timeout", "2s", "devices", "list")
	if r.code != 1 || strings.Contains(r.stderr, "waiting for") {
		t.Errorf("unforced progress off a terminal: %+v", r)
	}
}

// TestDefaultTimeouts: without --timeout a quick admin call gives up after
// 30 s and work on the whole database after 10 minutes; --timeout sets both.
func TestDefaultTimeouts(t *testing.T) {
	g := &globals{stdout: io.Discard, stderr: io.Discard}
	left := func(ctx context.Context) time.Duration {
		d, ok := ctx.Deadline()
		if !ok {
			t.Fatal("no deadline")
		}
		return time.Until(d)
	}
	ctx, cancel := g.ctx(context.Background())
	if d := left(ctx); d > quickTimeout || d < quickTimeout-5*time.Second || quickTimeout != 30*time.Second {
		t.Errorf("quick call deadline in %s", d)
	}
	cancel()
	ctx, cancel = g.longCtx(context.Background())
	if d := left(ctx); d > longTimeout || d < longTimeout-5*time.Second {
		t.Errorf("long call deadline in %s", d)
	}
	cancel()
	g.timeout = 90 * time.Second
	for _, f := range []func(context.Context) (context.Context, context.CancelFunc){g.ctx, g.longCtx} {
		ctx, cancel := f(context.Background())
		if d := left(ctx); d > g.timeout || d < g.timeout-5*time.Second {
			t.Errorf("--timeout 90s: deadline in %s", d)
		}
		cancel()
	}
}

// TestDrainWaitIsBounded: a qpcd that accepts the drain and never stops is
// waited on for its drain timeout and a few seconds, not for the
// command's 10 minutes, and the error says to look at its log.
func TestDrainWaitIsBounded(t *testing.T) {
	sock := filepath.Join(shortDir(t), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(admin.PathDrain, func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(admin.DrainResult{Connections: 3, TimeoutSecs: 1})
	})
	mux.HandleFunc(admin.PathStatus, func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(admin.Status{Ready: false})
	})
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	defer hs.Close()
	start := time.Now()
	cmd := exec.Command(qpcctlBin, "--socket", sock, "drain")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "still answers") || !strings.Contains(string(out), "check its log") {
		t.Fatalf("drain of a qpcd that never stops: %v\n%s", err, out)
	}
	if took > 1*time.Second+drainGrace+5*time.Second {
		t.Fatalf("drain waited %s for a qpcd whose drain timeout is 1s", took)
	}
}
