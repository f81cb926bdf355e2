package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func registerWithIdentity(t *testing.T, d *daemon, name string) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	idk, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ik := idk.Public()
	ctx, cancel := rpcCtx()
	defer cancel()
	if err := d.mustDial(t).Call(ctx, "Register", "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "d", IdentityKey: ik[:]},
		&qpcv1.RegisterResponse{}); err != nil {
		t.Fatal(err)
	}
}

// TestKeyLogStatusVerifyAndRestore: qpcctl keylog status and verify on a
// real qpcd; a backup and restore carry the log (the restored log is the
// backup's, still consistent); a log rewritten behind qpcd's back makes
// verify exit 1 naming the mismatch.
func TestKeyLogStatusVerifyAndRestore(t *testing.T) {
	base := shortDir(t)
	dataDir := filepath.Join(base, "data")
	d := startQPCD(t, dataDir)
	for _, n := range []string{"alice", "bob", "carol"} {
		registerWithIdentity(t, d, n)
	}
	var st admin.KeyLogStatus
	ctlOK(t, dataDir, &st, "keylog", "status")
	if st.Size != 3 || st.Heads != 4 || len(st.Root) != 64 || st.KeyID == "" || st.LastHeadAt.IsZero() {
		t.Fatalf("status %+v", st)
	}
	var rep admin.KeyLogReport
	ctlOK(t, dataDir, &rep, "keylog", "verify")
	if !rep.OK || rep.Entries != 3 || rep.Heads != 4 || rep.Root != st.Root {
		t.Fatalf("verify %+v", rep)
	}
	if r := ctl(t, dataDir, "keylog", "verify"); r.code != 0 || !strings.Contains(r.stdout, "key log consistent: 3 entries, 4 signed heads") {
		t.Fatalf("human verify: %+v", r)
	}

	file := filepath.Join(base, "full.qpcbak")
	ctlOK(t, dataDir, nil, "backup", "create", "--out", file)
	registerWithIdentity(t, d, "dave")
	d.drain(t)
	ctlOK(t, dataDir, nil, "restore", file)
	d = startQPCD(t, dataDir)
	var after admin.KeyLogStatus
	ctlOK(t, dataDir, &after, "keylog", "status")
	if after.Size != 3 || after.Root != st.Root || after.KeyID != st.KeyID {
		t.Fatalf("restored log %+v, backed up %+v", after, st)
	}
	d.drain(t)

	// Rewrite bob's entry behind qpcd's back (someone with the database
	// and its key).
	key, err := config.ReadKeyFile(filepath.Join(dataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{Path: filepath.Join(dataDir, "qpcd.db"), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE keylog_entries SET entry = (SELECT entry FROM keylog_entries WHERE seq = 2) WHERE seq = 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	startQPCD(t, dataDir)
	r := ctl(t, dataDir, "--json", "keylog", "verify")
	if r.code != 1 || !strings.Contains(r.stdout, `"ok":false`) || !strings.Contains(r.stdout, "entry 1: stored leaf hash") {
		t.Fatalf("verify of a rewritten log: %+v", r)
	}
	if r := ctl(t, dataDir, "keylog", "verify"); r.code != 1 || !strings.Contains(r.stdout, "NOT CONSISTENT") || !strings.Contains(r.stderr, "keylog-inconsistent") {
		t.Fatalf("human verify of a rewritten log: %+v", r)
	}
}
