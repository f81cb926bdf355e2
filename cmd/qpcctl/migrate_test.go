package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// chatter is one device of the end-to-end migration test: a real client
// SDK instance whose home (identity, tokens, cursors, MLS state) outlives
// the server it talks to.
type chatter struct {
	name string
	home string
	c    *client.Client
	sent []string
}

func ctxMinute(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect (re)opens the chatter's home pointed at the qpcd at addr. Init
// on an existing home keeps everything but the server settings.
func (ch *chatter) connect(t *testing.T, addr, pin string) {
	t.Helper()
	if ch.c != nil {
		_ = ch.c.Close()
	}
	c, err := client.Init(ctxMinute(t), client.Options{Home: ch.home,
		Backoff: client.Backoff{Base: 10 * time.Millisecond, Max: 200 * time.Millisecond, MaxAttempts: 8}},
		client.ServerTrust{Addr: addr, PinSHA256: pin}, 0)
	if err != nil {
		t.Fatalf("%s: init against %s: %v", ch.name, addr, err)
	}
	ch.c = c
	t.Cleanup(func() { _ = c.Close() })
}

func (ch *chatter) send(t *testing.T, text string) {
	t.Helper()
	if _, err := ch.c.Send(ctxMinute(t), "team", text, ""); err != nil {
		t.Fatalf("%s sends %q: %v", ch.name, text, err)
	}
	ch.sent = append(ch.sent, text)
}

func (ch *chatter) sync(t *testing.T) client.SyncReport {
	t.Helper()
	rep, err := ch.c.Sync(ctxMinute(t), 0)
	if err != nil {
		t.Fatalf("%s syncs: %v", ch.name, err)
	}
	return rep
}

// history is the texts of the group as the chatter's client holds them.
func (ch *chatter) history(t *testing.T) []string {
	t.Helper()
	ms, err := ch.c.History(ctxMinute(t), "team", 10000)
	if err != nil {
		t.Fatalf("%s history: %v", ch.name, err)
	}
	var out []string
	for _, m := range ms {
		if m.Event == nil { // membership events are not messages
			out = append(out, m.Text)
		}
	}
	return out
}

func writeDSNFile(t *testing.T, dir, dsn string) string {
	t.Helper()
	f := filepath.Join(dir, "pg.dsn")
	if err := os.WriteFile(f, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// copyTree copies a directory of regular files (the TLS files), keeping modes.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// auditEvents counts the audit events of each name in a qpcd's JSON log.
func auditEvents(log string) map[string]int {
	out := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["audit"] == true {
			out[fmt.Sprint(m["event"])]++
		}
	}
	return out
}

// TestMigrateToPostgresEndToEnd: real clients chat on a SQLCipher qpcd; it
// is stopped; qpcctl migrate to-postgres copies it; two qpcd nodes serve
// the PostgreSQL database; the same clients (no new registration or login:
// same tokens, same cursors) keep chatting through both nodes, and each
// ends up with every message exactly once.
func TestMigrateToPostgresEndToEnd(t *testing.T) {
	dir := shortDir(t)
	old := startQPCD(t, dir)
	var people []*chatter
	for _, name := range []string{"alice", "bob", "carol"} {
		ch := &chatter{name: name, home: filepath.Join(shortDir(t), "home")}
		ch.connect(t, old.quic, old.pin)
		if _, err := ch.c.Register(ctxMinute(t), client.RegisterParams{AccountName: name}); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		people = append(people, ch)
	}
	alice, bob, carol := people[0], people[1], people[2]
	if err := alice.c.CreateGroup(ctxMinute(t), "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.c.AddMembers(ctxMinute(t), "team", []string{"bob", "carol"}); err != nil {
		t.Fatal(err)
	}
	// Joining is by consent: bob and carol accept.
	for _, p := range []*chatter{bob, carol} {
		invs, err := p.c.Invitations(ctxMinute(t))
		if err != nil || len(invs) != 1 {
			t.Fatalf("%s's invitations: %v, %v", p.name, invs, err)
		}
		if _, err := p.c.AcceptInvitation(ctxMinute(t), invs[0].ID); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for _, p := range people {
			p.send(t, fmt.Sprintf("sqlcipher %s %d", p.name, round))
			for _, q := range people {
				q.sync(t)
			}
		}
	}
	// Unread messages at the moment of the move: bob has not synced these.
	alice.send(t, "sqlcipher alice unread by bob")
	alice.sync(t)
	carol.sync(t)

	dsn := pgtest.NewDatabase(t)
	dsnFile := writeDSNFile(t, shortDir(t), dsn)

	// Refused while qpcd runs, and nothing is written to the target.
	r := ctl(t, dir, "migrate", "to-postgres", "--dsn-file", dsnFile)
	if r.code != 1 || !strings.Contains(r.stderr, "qpcd is running") {
		t.Fatalf("migrate with qpcd running: exit %d, stderr %q", r.code, r.stderr)
	}
	old.drain(t)
	for _, p := range people {
		_ = p.c.Close()
		p.c = nil
	}

	// A DSN file others can read is refused (usage).
	loose := writeDSNFile(t, shortDir(t), dsn)
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, dir, "migrate", "to-postgres", "--dsn-file", loose); r.code != 2 || !strings.Contains(r.stderr, "postgres.dsn_file") {
		t.Fatalf("migrate with a 0644 DSN file: exit %d, stderr %q", r.code, r.stderr)
	}

	var rep store.CopyReport
	r = ctl(t, dir, "--json", "migrate", "to-postgres", "--dsn-file", dsnFile)
	if r.code != 0 {
		t.Fatalf("migrate: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if strings.Count(strings.TrimSpace(r.stdout), "\n") != 0 {
		t.Fatalf("--json printed more than one line: %q", r.stdout)
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if strings.Contains(r.stdout+r.stderr, pgPassword(t, dsn)) {
		t.Fatal("the database password appears in qpcctl's output")
	}
	tables := map[string]store.CopiedTable{}
	for _, tb := range rep.Tables {
		tables[tb.Table] = tb
	}
	if tables["accounts"].Rows != 3 || tables["devices"].Rows != 3 || tables["messages"].Rows < 10 || tables["token_keys"].Rows < 1 ||
		tables["cursors"].Rows < 3 || !rep.TargetMigrated {
		t.Fatalf("report %+v", rep)
	}
	// A second run refuses the now full target.
	if r := ctl(t, dir, "migrate", "to-postgres", "--dsn-file", dsnFile); r.code != 1 || !strings.Contains(r.stderr, "not empty") {
		t.Fatalf("second migrate: exit %d, stderr %q", r.code, r.stderr)
	}

	// Two nodes on PostgreSQL with the old node's certificate (clients pin it).
	env := []string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE=" + dsnFile}
	dir2 := shortDir(t)
	copyTree(t, filepath.Join(dir, "tls"), filepath.Join(dir2, "tls"))
	nodeA := startQPCD(t, dir, env...)
	nodeB := startQPCD(t, dir2, env...)
	if nodeA.pin != old.pin || nodeB.pin != old.pin {
		t.Fatalf("pins %s %s, want the old node's %s", nodeA.pin, nodeB.pin, old.pin)
	}

	alice.connect(t, nodeA.quic, old.pin)
	bob.connect(t, nodeB.quic, old.pin)
	carol.connect(t, nodeA.quic, old.pin)
	// Cursors came along: nothing already read comes again; bob gets
	// exactly the one message he had not read.
	for _, p := range people {
		rep := p.sync(t)
		want := 0
		if p == bob {
			want = 1
		}
		if rep.Messages != want || rep.Duplicates != 0 {
			t.Errorf("%s's first sync on PostgreSQL: %+v, want %d new and no duplicates", p.name, rep, want)
		}
	}
	for round := range 3 {
		if round == 1 {
			carol.connect(t, nodeB.quic, old.pin) // carol moves to the other node
		}
		for _, p := range people {
			p.send(t, fmt.Sprintf("postgres %s %d", p.name, round))
			for _, q := range people {
				q.sync(t)
			}
		}
	}

	var all []string
	for _, p := range people {
		all = append(all, p.sent...)
	}
	sort.Strings(all)
	for _, p := range people {
		got := p.history(t)
		sort.Strings(got)
		if strings.Join(got, "|") != strings.Join(all, "|") {
			t.Errorf("%s holds %d messages, want each of the %d exactly once:\n got  %q\n want %q", p.name, len(got), len(all), got, all)
		}
	}
	// No device had to register or log in again, and no token was refused.
	for name, n := range map[string]*daemon{"A": nodeA, "B": nodeB} {
		ev := auditEvents(n.logText())
		if ev["account.register"]+ev["auth.login"]+ev["auth.token_rejected"]+ev["auth.login_failed"] != 0 {
			t.Errorf("node %s audit events %v: a client registered, logged in or was refused after the move", name, ev)
		}
		if ev["delivery.enqueue"] == 0 {
			t.Errorf("node %s served no enqueue: %v", name, ev)
		}
	}
}

// pgPassword is the password in a pgtest DSN.
func pgPassword(t *testing.T, dsn string) string {
	t.Helper()
	_, rest, _ := strings.Cut(dsn, "://")
	userinfo, _, _ := strings.Cut(rest, "@")
	_, pw, ok := strings.Cut(userinfo, ":")
	if !ok || pw == "" {
		t.Fatalf("no password in the test DSN")
	}
	return pw
}

// TestMigrateToPostgresRefusals: usage errors exit 2, a data directory
// without a database exits 1 naming it, and neither touches the target.
func TestMigrateToPostgresRefusals(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	dsnFile := writeDSNFile(t, shortDir(t), dsn)
	empty := shortDir(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no target", nil, 2, "--dsn-file"},
		{"both", []string{"--dsn", dsn, "--dsn-file", dsnFile}, 2, "not both"},
		{"bad DSN", []string{"--dsn", "postgres://u:s3cret@[::1"}, 2, "postgres.dsn"},
		{"no database here", []string{"--dsn-file", dsnFile, "--db-key-file", writeKeyFile(t)}, 1, "no SQLCipher database at " + empty},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ctl(t, empty, append([]string{"migrate", "to-postgres"}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "s3cret") {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, tc.code, r.stderr, tc.want)
			}
		})
	}
	// No database file appeared, and the target has no tables.
	if _, err := os.Stat(filepath.Join(empty, "qpcd.db")); err == nil {
		t.Fatal("a database file was created in the empty data directory")
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tables int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("target has %d tables (%v)", tables, err)
	}
}

// writeKeyFile writes a random database key file (0600).
func writeKeyFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(shortDir(t), "db.key")
	if err := os.WriteFile(f, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
