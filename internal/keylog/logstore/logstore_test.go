package logstore

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func idKey(t *testing.T, b byte) identity.PublicKey {
	t.Helper()
	k, err := identity.PrivateKeyFromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func appendKey(t *testing.T, db *store.DB, l *Log, name string, b byte) {
	t.Helper()
	err := db.WriteTx(ctxT(t), func(tx *sql.Tx) error {
		return l.AppendTx(ctxT(t), tx, keylog.IdentityKeyEntry(name, idKey(t, b), time.Now()), "")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkProves verifies what a client would: the head under the log key,
// the identity entry's inclusion.
func checkProves(t *testing.T, l *Log, name string, b byte) *keylog.Head {
	t.Helper()
	p, err := l.ProveAccount(ctxT(t), name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Head.Verify(l.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if p.Identity == nil {
		t.Fatalf("no identity proof for %s", name)
	}
	if err := keylog.VerifyInclusion(p.Identity.Entry, p.Identity.Index, p.Identity.Path, p.Head); err != nil {
		t.Fatal(err)
	}
	e, err := keylog.ParseEntry(p.Identity.Entry)
	if err != nil {
		t.Fatal(err)
	}
	if k := idKey(t, b); !e.Binds(keylog.KindIdentityKey, name, k[:]) {
		t.Fatalf("entry for %s binds %x", name, e.Data)
	}
	return p.Head
}

func TestAppendProveAndVerify(t *testing.T) {
	db := storetest.Open(t)
	ctx := ctxT(t)
	l, err := Open(ctx, Options{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	h0, err := l.Head(ctx)
	if err != nil || h0.Size != 0 {
		t.Fatalf("new log head %v, %v", h0, err)
	}
	var heads []*keylog.Head
	for i, name := range []string{"alice", "bob", "carol", "dave", "erin"} {
		appendKey(t, db, l, name, byte(i+1))
		heads = append(heads, checkProves(t, l, name, byte(i+1)))
	}
	// A transaction that appends and then fails leaves no trace, in the
	// database or in the tree the log serves proofs from.
	boom := errors.New("boom")
	err = db.WriteTx(ctx, func(tx *sql.Tx) error {
		if err := l.AppendTx(ctx, tx, keylog.IdentityKeyEntry("mallory", idKey(t, 66), time.Now()), ""); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	appendKey(t, db, l, "frank", 6)
	last := checkProves(t, l, "frank", 6)
	if last.Size != 6 {
		t.Fatalf("size %d after 6 appends and a rollback", last.Size)
	}
	for _, name := range []string{"alice", "carol"} {
		checkProves(t, l, name, map[string]byte{"alice": 1, "carol": 3}[name])
	}
	if p, _ := l.ProveAccount(ctx, "mallory", nil); p.Identity != nil {
		t.Fatal("a rolled-back entry is proven")
	}
	// Every head the log signed is consistent with the latest.
	for _, h := range append([]*keylog.Head{h0}, heads...) {
		to, p, err := l.Consistency(ctx, h.Size, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := keylog.VerifyConsistency(h, to, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := l.Consistency(ctx, 9, 3); !errors.Is(err, ErrBadRange) {
		t.Fatalf("backwards range: %v", err)
	}
	if _, _, err := l.Consistency(ctx, 1, 99); !errors.Is(err, ErrNoHead) {
		t.Fatalf("unknown size: %v", err)
	}
	rep, err := Verify(ctx, db)
	if err != nil || !rep.OK || rep.Entries != 6 || rep.Heads != 7 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	st, err := ReadStatus(ctx, db)
	if err != nil || st.Size != 6 || st.Root != rep.Root || st.KeyID != l.KeyID().String() {
		t.Fatalf("status %+v (%v), verify root %s", st, err, rep.Root)
	}

	// A reopened log (a restart, another node) serves the same tree with the same key.
	l2, err := Open(ctx, Options{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(l2.PublicKey(), l.PublicKey()) {
		t.Fatal("the log key changed on reopen")
	}
	checkProves(t, l2, "bob", 2)
}

// TestVerifyFindsTampering: an operator (or an attacker with the database)
// who rewrites an entry or a head is caught by the full re-check.
func TestVerifyFindsTampering(t *testing.T) {
	cases := []struct {
		name, sql, want string
		args            []any
	}{
		{"entry rewritten", "UPDATE keylog_entries SET entry = ?, data = ? WHERE seq = 1", "stored leaf hash", nil},
		{"head root swapped", "UPDATE keylog_heads SET head = (SELECT head FROM keylog_heads WHERE tree_size = 2) WHERE tree_size = 3", "columns differ", nil},
		{"entry deleted", "DELETE FROM keylog_entries WHERE seq = 1", "gap", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := storetest.Open(t)
			ctx := ctxT(t)
			l, err := Open(ctx, Options{DB: db})
			if err != nil {
				t.Fatal(err)
			}
			for i, name := range []string{"alice", "bob", "carol"} {
				appendKey(t, db, l, name, byte(i+1))
			}
			args := tc.args
			if tc.name == "entry rewritten" {
				forged, _ := keylog.IdentityKeyEntry("bob", idKey(t, 99), time.Now()).Marshal()
				k := idKey(t, 99)
				args = []any{forged, k[:]}
			}
			if err := db.WriteTx(ctx, func(tx *sql.Tx) error { _, err := tx.ExecContext(ctx, tc.sql, args...); return err }); err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || !strings.Contains(strings.Join(rep.Problems, "\n"), tc.want) {
				t.Fatalf("verify after %s: %+v", tc.name, rep)
			}
		})
	}
}

// TestBackfillAndSnapshot: identity keys and certificates stored before
// the log existed are logged when it opens, and a backup snapshot carries
// the log (SQLCipher; PostgreSQL deployments back up with pg tools).
func TestBackfillAndSnapshot(t *testing.T) {
	tg := storetest.NewTarget(t)
	db := tg.Open(t)
	t.Cleanup(func() { _ = db.Close() })
	ctx := ctxT(t)
	priv, err := identity.PrivateKeyFromSeed(bytes.Repeat([]byte{5}, 32))
	if err != nil {
		t.Fatal(err)
	}
	dev := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, 32)).Public().(ed25519.PublicKey)
	devID := "0123456789abcdef0123456789abcdef"
	cert, err := identity.Issue(priv, "olga", devID, dev, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certRaw, _ := cert.Marshal()
	pub := priv.Public()
	err = db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO accounts (id, name, status, created_at, identity_key) VALUES ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'olga', 'active', 1, ?)", pub[:]); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO devices (id, account_id, name, signature_key, created_at, certificate) VALUES (?, 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'p', ?, 1, ?)",
			devID, []byte(dev), certRaw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, Options{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	checkProves(t, l, "olga", 5)
	p, err := l.ProveAccount(ctx, "olga", []string{devID})
	if err != nil || p.Devices[devID] == nil {
		t.Fatalf("certificate not proven: %v", err)
	}
	if err := keylog.VerifyInclusion(p.Devices[devID].Entry, p.Devices[devID].Index, p.Devices[devID].Path, p.Head); err != nil {
		t.Fatal(err)
	}
	// A second open logs nothing twice.
	if _, err := Open(ctx, Options{DB: db}); err != nil {
		t.Fatal(err)
	}
	if st, _ := ReadStatus(ctx, db); st.Size != 2 {
		t.Fatalf("size %d after reopening", st.Size)
	}
	if storetest.Postgres() {
		return
	}
	dst := filepath.Join(t.TempDir(), "snap.db")
	if _, err := db.Snapshot(ctx, dst); err != nil {
		t.Fatal(err)
	}
	snap, err := store.Open(ctx, store.Options{Path: dst, Key: tg.Key.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	rep, err := Verify(ctx, snap)
	if err != nil || !rep.OK || rep.Entries != 2 {
		t.Fatalf("the snapshot's log: %+v, %v", rep, err)
	}
}
