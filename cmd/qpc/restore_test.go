package main

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/store"
)

// copyDB copies a stopped qpcd's database files (the WAL included).
func copyDB(t *testing.T, from, to string) {
	t.Helper()
	for _, suffix := range []string{"", "-wal"} {
		_ = os.Remove(to + suffix)
		b, err := os.ReadFile(from + suffix)
		if os.IsNotExist(err) && suffix != "" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Remove(to + "-shm")
}

// TestRecvTellsServerRestore: after the server was rolled back to an
// earlier copy of its database with a new incarnation id (what qpcctl
// restore does; cmd/qpcctl's TestRestoreLosesNothingForClients runs the
// real restore), bob's first recv prints what alice sent since, tells him
// once that the server was restored, and --json carries it as
// server_restored; his history marks alice's message that the restore
// dropped as lost.
func TestRecvTellsServerRestore(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := newUser(t), newUser(t)
	for i, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
		u.ok("register", []string{"alice", "bob"}[i])
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	acceptInvitations(t, bob)
	alice.ok("send", "team", "before")
	bob.ok("recv")

	live := filepath.Join(srv.Config.DataDir, "qpcd.db")
	snap := filepath.Join(t.TempDir(), "snap.db")
	srv.Stop(t)
	copyDB(t, live, snap)
	srv.Start(t)
	alice.ok("send", "team", "dropped by the restore")
	bob.ok("recv")

	// The restore: the snapshot back in place, with a new incarnation.
	srv.Stop(t)
	copyDB(t, snap, live)
	key, err := config.ReadKeyFile(filepath.Join(srv.Config.DataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(context.Background(), store.Options{Path: live, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
		_, err := store.NewIncarnationTx(context.Background(), tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	srv.Start(t)

	alice.ok("send", "team", "after the restore")
	r := bob.run("--json", "recv")
	if r.code != 0 || !strings.Contains(r.stdout, `"server_restored"`) || !strings.Contains(r.stdout, "after the restore") {
		t.Fatalf("bob's first recv after the restore: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "the server was restored from a backup") {
		t.Fatalf("no notice on stderr: %q", r.stderr)
	}
	if r := bob.run("recv"); strings.Contains(r.stderr, "restored") {
		t.Fatalf("the notice repeats: %q", r.stderr)
	}
	h := bob.ok("history", "team")
	if !strings.Contains(h, "dropped by the restore") || !strings.Contains(h, "LOST on the server") {
		t.Fatalf("bob's history does not mark the message the restore dropped:\n%s", h)
	}
}
