package compat

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
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
	// The rule covers expand-only steps (NNNN_expand_*.sql); steps from
	// before it existed may contract, and then the previous release cannot
	// share the database with this one: upgrade with every node stopped.
	if contracts := contractSteps(newNode.logTail(64 << 10)); len(contracts) > 0 {
		t.Skipf("compat: this upgrade (schema %d -> %d) applies steps that are not expand-only: %s; mixed versions are not supported across it (docs/release.md, \"Mixed versions on one database\": stop every node, then upgrade)",
			before, after, strings.Join(contracts, ", "))
	}
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

// contractSteps lists the migrations a qpcd log says it applied whose
// names are not expand-only.
func contractSteps(log string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		var m struct {
			Msg     string `json:"msg"`
			Version int    `json:"version"`
			Name    string `json:"name"`
		}
		if json.Unmarshal([]byte(line), &m) != nil || m.Msg != "store: applied migration" {
			continue
		}
		if !strings.HasPrefix(m.Name, store.ExpandPrefix) {
			out = append(out, fmt.Sprintf("%04d_%s", m.Version, m.Name))
		}
	}
	return out
}

// TestCompatExpandOnlySchemaAhead is the same rule seen from the older
// node, without waiting for a release that ships an expand-only step: this
// qpcd (as release N) serves on PostgreSQL while the database gains two
// expand-only steps it does not know (what release N+1 applies when its
// first node starts), keeps serving, restarts on it (logging that the
// schema is ahead), and is refused at its next start once a contract step
// follows.
func TestCompatExpandOnlySchemaAhead(t *testing.T) {
	// Needs no previous release: it runs in make test's short form too.
	bs, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	if !contains(bs, store.BackendPostgres) {
		t.Skipf("compat: needs PostgreSQL; QPC_TEST_BACKENDS=%s", strings.Join(bs, ","))
	}
	n := newServer(t, store.BackendPostgres)
	n.start(newRel)
	alice, bob := newUser(t, "alice", newRel), newUser(t, "bob", newRel)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", n.listen, "--pin", n.pin)
		u.ok("register", u.name)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	bob.acceptInvitations()
	alice.ok("send", "team", "before")
	bob.recvUntil("before")

	var dsn string
	for _, kv := range n.env {
		if v, ok := strings.CutPrefix(kv, "QPC_POSTGRES_DSN="); ok {
			dsn = v
		}
	}
	known := store.KnownPostgresSchemaVersion()
	step := func(offset int, name string) string {
		return fmt.Sprintf("%04d_%s.sql", known+offset, name)
	}
	newer := fstest.MapFS{
		step(1, store.ExpandPrefix+"account_note"): {Data: []byte("ALTER TABLE accounts ADD COLUMN note TEXT;\n")},
		step(2, store.ExpandPrefix+"later"):        {Data: []byte("CREATE TABLE later (id BIGINT PRIMARY KEY, seen BOOLEAN NOT NULL DEFAULT false);\n")},
	}
	migrateTo := func(m fstest.MapFS) {
		t.Helper()
		db, err := store.OpenPostgres(context.Background(), store.PostgresOptions{DSN: secret.New([]byte(dsn)), Migrations: m})
		if err != nil {
			t.Fatalf("the next release's migrations: %v", err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	migrateTo(newer)

	// Still serving, and after a restart too.
	alice.ok("send", "team", "after the expand steps")
	bob.recvUntil("after the expand steps")
	n.stop()
	n.start(newRel)
	if !strings.Contains(n.logTail(16<<10), "the database schema is newer than this qpcd") {
		t.Fatalf("the node started on a schema ahead of it without saying so")
	}
	if v := schemaVersion(t, n, newRel); v != known+2 {
		t.Fatalf("schema version %d, want %d", v, known+2)
	}
	carol := newUser(t, "carol", newRel)
	carol.ok("init", "--server", n.listen, "--pin", n.pin)
	carol.ok("register", "carol") // new rows in tables that gained a column
	alice.ok("group", "add", "team", "carol")
	carol.acceptInvitations()
	alice.ok("send", "team", "after the restart")
	bob.recvUntil("after the restart")
	carol.recvUntil("after the restart")
	carol.ok("send", "team", "from carol")
	alice.recvUntil("from carol")
	n.stop()

	// A contract step: the node no longer starts on it.
	contract := fstest.MapFS{step(3, "drop_later"): {Data: []byte("DROP TABLE later;\n")}}
	for k, v := range newer {
		contract[k] = v
	}
	migrateTo(contract)
	log := n.refused(newRel)
	if !strings.Contains(log, "drop_later is not expand-only") {
		t.Fatalf("refusal does not name the contract step:\n%s", log)
	}
	figure(t, "qpcd at schema %d served, restarted and took new accounts on a database two expand-only steps ahead; refused it after a contract step: %s",
		known, refusal(log))
}
