package compat

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/store"
)

// TestCompatMixedVersionsOneDatabase checks the rule for mixed versions on
// PostgreSQL (docs/release.md, "Mixed versions on one database"): during a
// rolling upgrade or a cluster canary, a node of the previous release keeps
// serving while a node of the new release migrates the shared database
// under it. The old node serves its clients before and after the migration
// (login, messages both ways, a new account with its KeyPackages, which
// writes into migrated tables), a client that moves to the new node reads
// what the old node wrote, and the old node reads what the new node wrote.
// A migration that is not expand-only (a dropped or renamed column or
// table, a new NOT NULL column without a default, a tightened constraint)
// breaks one of these steps.
func TestCompatMixedVersionsOneDatabase(t *testing.T) {
	needOld(t)
	if !full() && os.Getenv("QPC_TEST_BACKENDS") == "" {
		// The short form (make test) is SQLCipher only; this is a cluster.
		t.Skip("compat: mixed versions need PostgreSQL: runs in `make compat` (or with QPC_TEST_BACKENDS=postgres)")
	}
	bs := backends(t)
	if !contains(bs, store.BackendPostgres) {
		t.Skipf("compat: mixed versions need PostgreSQL; QPC_TEST_BACKENDS=%s", strings.Join(bs, ","))
	}

	oldNode := newServer(t, store.BackendPostgres)
	oldNode.start(oldRel)
	before := schemaVersion(t, oldNode, oldRel)

	// The old qpc: the new one needs methods the old qpcd lacks (CertifyDevice).
	alice, bob, dave := newUser(t, "alice", oldRel), newUser(t, "bob", oldRel), newUser(t, "dave", oldRel)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", oldNode.listen, "--pin", oldNode.pin)
		u.ok("register", u.name)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	alice.ok("send", "team", "m1 before the migration")
	bob.recvUntil("m1 before the migration")
	// Stored by the old node, fetched only after the migration.
	alice.ok("send", "team", "m2 waiting")

	// The new node: same database, same certificate (a cluster's nodes
	// share one, docs/operations.md), its own data directory. It migrates
	// the database while the old node serves.
	var dsn string
	for _, kv := range oldNode.env {
		if v, ok := strings.CutPrefix(kv, "QPC_POSTGRES_DSN="); ok {
			dsn = v
		}
	}
	newNode := newServer(t, store.BackendSQLCipher, "QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN="+dsn)
	copyDir(t, filepath.Join(oldNode.dataDir, "tls"), filepath.Join(newNode.dataDir, "tls"))
	took := newNode.start(newRel)
	after := schemaVersion(t, newNode, newRel)
	if newNode.pin != oldNode.pin {
		t.Fatalf("the nodes serve different certificates (%s, %s)", oldNode.pin, newNode.pin)
	}
	if after > before && !strings.Contains(newNode.logTail(64<<10), `"msg":"store: applied migration"`) {
		t.Fatalf("schema %d -> %d but the new node logged no migration", before, after)
	}
	rpcsBefore := oldNode.rpcCount(t, "Enqueue")

	// The old node keeps serving on the migrated database.
	for _, u := range []*user{alice, bob} {
		u.ok("login")
	}
	bob.recvUntil("m2 waiting")
	alice.ok("send", "team", "m3 old node after the migration")
	bob.recvUntil("m3 old node after the migration")
	dave.ok("init", "--server", oldNode.listen, "--pin", oldNode.pin)
	dave.ok("register", "dave") // account, device and KeyPackages written by the old node
	alice.ok("group", "add", "team", "dave")
	dave.recvUntil()
	alice.ok("send", "team", "m4 to three")
	dave.recvUntil("m4 to three")

	// bob moves to the new node (same pin): it reads what the old node wrote,
	// and the old node reads what it writes.
	bob.ok("init", "--server", newNode.listen, "--pin", newNode.pin)
	bob.ok("login")
	bob.ok("send", "team", "m5 from the new node")
	alice.recvUntil("m5 from the new node")
	dave.recvUntil("m5 from the new node")
	alice.ok("send", "team", "m6 from the old node")
	bob.recvUntil("m6 from the old node")
	if h := texts(bob.jsonOK("history", "team")); count(h, "m1 before the migration") != 1 || count(h, "m6 from the old node") != 1 {
		t.Fatalf("bob's history on the new node: %q", h)
	}
	served := oldNode.rpcCount(t, "Enqueue") - rpcsBefore
	if served < 3 {
		t.Fatalf("the old node counted %.0f Enqueues after the migration, want at least 3", served)
	}
	oldNode.stop()
	newNode.stop()
	figure(t, "old qpcd (schema %d) kept serving while the new one migrated the shared database to %d (ready in %s): %.0f Enqueues on the old node after the migration, messages both ways across versions",
		before, after, took.Round(time.Millisecond), served)
}

// schemaVersion asks a running node for the database's schema version.
func schemaVersion(t *testing.T, s *server, rel release) int {
	t.Helper()
	out := s.qpcctl(t, rel, "--json", "status")
	var st struct {
		SchemaVersion int `json:"schema_version"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.SchemaVersion <= 0 {
		t.Fatalf("%s qpcctl --json status: %v\n%s", rel.name, err, out)
	}
	return st.SchemaVersion
}
