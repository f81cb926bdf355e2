package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// The SQLCipher-to-PostgreSQL copy against real engines: a SQLCipher file
// and pgtest's throwaway PostgreSQL.

// openSource opens a new SQLCipher database with the embedded migrations
// plus extra (nil: none).
func openSource(t *testing.T, extra mapFS) *DB {
	t.Helper()
	o := Options{Path: filepath.Join(t.TempDir(), "qpcd.db"), Key: newKey(t)}
	if extra != nil {
		o.Migrations = extra
	}
	db, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

type mapFS = fstest.MapFS

// fillSource writes rows into every table of the plan, with the awkward
// values a copy could get wrong: NULLs, bytes with NUL and high bytes,
// large and negative integers, non-ASCII text; and `messages` extra
// messages, so that progress and sequences have something to do.
func fillSource(t *testing.T, db *DB, messages int) {
	t.Helper()
	ctx := context.Background()
	err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		stmts := []struct {
			q    string
			args []any
		}{
			{"INSERT INTO meta (key, value) VALUES ('last_backup', '{\"at\":\"2026-12-01\"}'), ('nothing', NULL)", nil},
			{"INSERT INTO accounts (id, name, status, created_at, identity_key) VALUES (?, ?, 'active', ?, ?), (?, ?, 'disabled', ?, NULL)",
				[]any{"a1", "alice ünïcode ☃", int64(1700000000000), bytes.Repeat([]byte{0, 0xff}, 16), "a2", "bob", int64(-5)}},
			{"INSERT INTO devices (id, account_id, name, signature_key, status, token_gen, created_at, last_seen_at, revoked_at, certificate) VALUES (?, 'a1', 'laptop', ?, 'active', 3, 1, 2, 0, ?), (?, 'a2', '', ?, 'revoked', 9223372036854775807, 1, 0, 7, NULL)",
				[]any{"d1", []byte{0, 1, 2, 255, 0}, []byte("cert \x00\xff"), "d2", bytes.Repeat([]byte{0xfe}, 32)}},
			{"INSERT INTO refresh_tokens (token_hash, device_id, family_id, created_at, expires_at, used_at, revoked) VALUES (?, 'd1', 'f1', 1, 2, 0, 0), (?, 'd1', 'f1', 1, 2, 5, 1)",
				[]any{[]byte("hash-one"), []byte("hash-two")}},
			{"INSERT INTO invites (id, code_hash, created_by, created_at, expires_at, used_by, used_at, revoked) VALUES ('i1', ?, 'op', 1, 2, NULL, 0, 0), ('i2', ?, 'op', 1, 2, 'a1', 3, 0)",
				[]any{[]byte("c1"), []byte("c2")}},
			{"INSERT INTO token_keys (id, private_key, public_key, created_at, retired_at, active, challenge_key) VALUES ('k1', NULL, ?, 1, 2, 0, NULL), ('k2', ?, ?, 3, 0, 1, ?)",
				[]any{[]byte("pub1"), bytes.Repeat([]byte{7}, 64), []byte("pub2"), bytes.Repeat([]byte{9}, 32)}},
			{"INSERT INTO used_challenges (challenge_hash, expires_at) VALUES (?, 99)", []any{[]byte("ch")}},
			{"INSERT INTO keypackages (id, account_id, device_id, ref, suite, last_resort, uploaded_at, expires_at, data) VALUES (5, 'a1', 'd1', ?, 1, 0, 1, 2, ?), (40, 'a1', 'd1', ?, 1, 1, 1, 2, ?)",
				[]any{[]byte("ref5"), []byte("kp5"), []byte("ref40"), []byte("kp40")}},
			{"INSERT INTO channels (id, kind, group_id, epoch, head_seq, ttl_ms, created_by, created_at) VALUES (?, 1, ?, 4, ?, 0, 'a1', 1)",
				[]any{bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 32), int64(messages)}},
			{"INSERT INTO channel_group_info (channel_id, epoch, group_info) VALUES (?, 4, ?)", []any{bytes.Repeat([]byte{1}, 16), []byte("gi")}},
			{"INSERT INTO channel_members (channel_id, account_id, device_id, from_seq, added_by, added_at) VALUES (?, 'a1', '', 0, 'a1', 1), (?, 'a2', 'd2', 3, 'a1', 2)",
				[]any{bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{1}, 16)}},
			{"INSERT INTO cursors (device_id, channel_id, account_id, acked_seq) VALUES ('d1', ?, 'a1', 2)", []any{bytes.Repeat([]byte{1}, 16)}},
			{"INSERT INTO inbox (id, device_id, seq, kind, channel_id, sender_account, sender_device, created_at, expires_at, body) VALUES (77, 'd2', 1, 1, ?, 'a1', 'd1', 1, 2, ?)",
				[]any{bytes.Repeat([]byte{1}, 16), []byte("welcome")}},
			{"INSERT INTO inbox_heads (device_id, head_seq, acked_seq) VALUES ('d2', 1, 0)", nil},
			{"INSERT INTO nodes (id, hostname, address, version, started_at, last_seen_at, heartbeat_ms) VALUES ('old-node', 'h', '127.0.0.1:7443', 'v1', 1, 2, 10000)", nil},
			{"INSERT INTO account_usage (account_id, message_bytes, messages, inbox_bytes, inbox_items, channels) VALUES ('a1', 10, 2, 7, 1, 1)", nil},
			{"INSERT INTO invitations (id, channel_id, account_id, device_id, inviter_id, inviter_device, from_seq, status, created_at, expires_at, decided_at) VALUES ('inv1', ?, 'a2', '', 'a1', 'd1', 3, 1, 1, 2, 0), ('inv2', ?, 'a2', 'd2', 'a1', 'd1', 0, 3, 5, 6, 7)",
				[]any{bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{1}, 16)}},
			{"INSERT INTO invitation_welcomes (invitation_id, device_id, sender_account, sender_device, created_at, body) VALUES ('inv1', 'd2', 'a1', 'd1', 1, ?)",
				[]any{[]byte("held welcome \x00\xff")}},
			{"INSERT INTO blocks (account_id, blocked_id, created_at) VALUES ('a2', 'a1', 5)", nil},
			{"INSERT INTO link_requests (signature_key, account_id, device_name, created_at, expires_at) VALUES (?, 'a1', 'phone ☎', 1, 600001)",
				[]any{bytes.Repeat([]byte{0xab, 0}, 16)}},
			{"INSERT INTO keylog_keys (id, private_key, public_key, created_at, active) VALUES ('00112233aabbccdd', ?, ?, 1, 1)",
				[]any{bytes.Repeat([]byte{3}, 32), bytes.Repeat([]byte{4}, 32)}},
			{"INSERT INTO keylog_entries (seq, kind, account_name, device_id, data, entry, leaf_hash, created_at) VALUES (0, 1, 'alice', '', ?, ?, ?, 5), (1, 2, 'alice', 'd1', ?, ?, ?, 6)",
				[]any{[]byte("ik"), []byte("e0"), []byte("h0"), []byte("cert"), []byte("e1"), []byte("h1")}},
			{"INSERT INTO keylog_heads (tree_size, root_hash, key_id, head, created_at) VALUES (1, ?, '00112233aabbccdd', ?, 5), (2, ?, '00112233aabbccdd', ?, 6)",
				[]any{[]byte("r1"), []byte("head1"), []byte("r2"), []byte("head2")}},
		}
		for _, s := range stmts {
			if _, err := tx.ExecContext(ctx, s.q, s.args...); err != nil {
				return fmt.Errorf("%s: %w", s.q, err)
			}
		}
		for i := 1; i <= messages; i++ {
			// Ids with a gap, as after retention deleted some.
			if _, err := tx.ExecContext(ctx, "INSERT INTO messages (id, channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body) VALUES (?, ?, ?, ?, 'a1', 'd1', 4, 1, ?, ?, ?)",
				int64(i*2+10), bytes.Repeat([]byte{1}, 16), int64(i), fmt.Sprintf("m-%d", i), int64(i), int64(i+1000), []byte(fmt.Sprintf("body %d \x00\xff", i))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tablesOf lists the base tables of a database on either engine.
func tablesOf(t *testing.T, db *DB) []string {
	t.Helper()
	q := "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
	if db.pg != nil {
		q = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
	}
	var out []string
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		var err error
		out, err = stringList(context.Background(), tx, q)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestCopyPlanCoversSchema fails when a migration adds or drops a table
// without copyPlan following.
func TestCopyPlanCoversSchema(t *testing.T) {
	var plan []string
	for _, p := range copyPlan {
		plan = append(plan, p.name)
	}
	sort.Strings(plan)
	if got := tablesOf(t, openSource(t, nil)); !slices.Equal(got, plan) {
		t.Errorf("SQLCipher schema tables %v, copyPlan %v: add the new table to copyPlan (internal/store/migrate_pg.go)", got, plan)
	}
	if got := tablesOf(t, openPG(t, pgtest.NewDatabase(t), PostgresOptions{})); !slices.Equal(got, plan) {
		t.Errorf("PostgreSQL schema tables %v, copyPlan %v", got, plan)
	}
}

// pgRows reads a whole table from PostgreSQL as printable rows, sorted.
func dumpTable(t *testing.T, db *DB, table string) []string {
	t.Helper()
	var out []string
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		rows, err := tx.Query("SELECT * FROM " + quoteIdent(table))
		if err != nil {
			return err
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				return err
			}
			var b strings.Builder
			order := make([]int, len(cols))
			for i := range order {
				order[i] = i
			}
			sort.Slice(order, func(a, c int) bool { return cols[order[a]] < cols[order[c]] })
			for _, i := range order {
				v := vals[i]
				if bs, ok := v.([]byte); ok && table != "schema_migrations" {
					v = fmt.Sprintf("%x", bs)
				}
				if s, ok := v.(string); ok {
					v = fmt.Sprintf("%x", s) // text and bytes print alike: SQLite may return either
				}
				if cols[i] == "applied_at" {
					continue
				}
				fmt.Fprintf(&b, "%s=%v;", cols[i], v)
			}
			out = append(out, b.String())
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func copyTo(t *testing.T, src *DB, dsn string, o CopyOptions) (CopyReport, error) {
	t.Helper()
	o.DSN = secret.New([]byte(dsn))
	return src.CopyToPostgres(context.Background(), o)
}

func TestCopyToPostgres(t *testing.T) {
	const messages = 2500
	src := openSource(t, nil)
	fillSource(t, src, messages)
	for _, premigrated := range []bool{false, true} {
		t.Run(fmt.Sprintf("premigrated=%v", premigrated), func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			if premigrated {
				// A target a qpcd migrated (and left empty) is accepted too.
				_ = openPG(t, dsn, PostgresOptions{}).Close()
			}
			var progress []CopyProgress
			rep, err := copyTo(t, src, dsn, CopyOptions{Progress: func(p CopyProgress) { progress = append(progress, p) }})
			if err != nil {
				t.Fatal(err)
			}
			if rep.TargetMigrated == premigrated || rep.SchemaVersion != KnownSchemaVersion() || len(rep.Tables) != len(copyPlan) {
				t.Fatalf("report %+v", rep)
			}
			byName := map[string]CopiedTable{}
			for _, ct := range rep.Tables {
				byName[ct.Table] = ct
			}
			if m := byName["messages"]; m.Rows != messages || !m.Copied || m.NextID != messages*2+11 || len(m.Checksum) != 64 {
				t.Errorf("messages: %+v", m)
			}
			if k := byName["keypackages"]; k.NextID != 41 {
				t.Errorf("keypackages next id %d, want 41", k.NextID)
			}
			if s := byName["schema_migrations"]; s.Copied || s.Rows != int64(KnownSchemaVersion()) {
				t.Errorf("schema_migrations: %+v", s)
			}
			var sawCopy, sawVerify bool
			for _, p := range progress {
				if p.Table == "messages" && p.Total == messages && p.Rows > 0 && p.Rows < messages {
					sawCopy = sawCopy || p.Phase == "copy"
					sawVerify = sawVerify || p.Phase == "verify"
				}
			}
			if !sawCopy || !sawVerify {
				t.Errorf("no intermediate progress for messages (copy %v, verify %v)", sawCopy, sawVerify)
			}

			// Every table, row for row, as a qpcd node sees it.
			dst := openPG(t, dsn, PostgresOptions{})
			for _, p := range copyPlan {
				if p.mode == copySkip {
					if n := len(dumpTable(t, dst, p.name)); n != 0 || !byName[p.name].Skipped {
						t.Errorf("skipped table %s: %d rows copied, report %+v", p.name, n, byName[p.name])
					}
					continue
				}
				if got, want := dumpTable(t, dst, p.name), dumpTable(t, src, p.name); !slices.Equal(got, want) {
					t.Errorf("table %s differs:\n postgres %v\n sqlcipher %v", p.name, got, want)
				}
			}
			// New rows get ids after the copied ones.
			var id int64
			err = dst.WriteTx(context.Background(), func(tx *sql.Tx) error {
				return tx.QueryRow(`INSERT INTO messages (channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body)
					VALUES (?, ?, 'new', 'a1', 'd1', 4, 1, 1, 2, ?) RETURNING id`, bytes.Repeat([]byte{1}, 16), int64(messages+1), []byte("x")).Scan(&id)
			})
			if err != nil || id != messages*2+11 {
				t.Fatalf("new message id %d (%v), want %d", id, err, messages*2+11)
			}

			// A second run finds the target full and changes nothing.
			_, err = copyTo(t, src, dsn, CopyOptions{})
			if !errors.Is(err, ErrTargetNotEmpty) || !strings.Contains(err.Error(), "messages") {
				t.Fatalf("second copy: %v, want ErrTargetNotEmpty naming messages", err)
			}
			if n := len(dumpTable(t, dst, "messages")); n != messages+1 {
				t.Fatalf("%d messages after the refused copy", n)
			}
		})
	}
}

func TestCopyRefusesTargetWithData(t *testing.T) {
	src := openSource(t, nil)
	fillSource(t, src, 3)
	dsn := pgtest.NewDatabase(t)
	dst := openPG(t, dsn, PostgresOptions{})
	err := dst.WriteTx(context.Background(), func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO token_keys (id, public_key, created_at, active) VALUES ('x', ?, 1, 1)", []byte("p"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = copyTo(t, src, dsn, CopyOptions{})
	if !errors.Is(err, ErrTargetNotEmpty) || !strings.Contains(err.Error(), "token_keys") {
		t.Fatalf("err = %v, want ErrTargetNotEmpty naming token_keys", err)
	}
	if n := len(dumpTable(t, dst, "accounts")); n != 0 {
		t.Fatalf("%d accounts copied into a refused target", n)
	}

	// A foreign database (tables, no qpcd marker) is refused too.
	other := pgtest.NewDatabase(t)
	raw, err := sql.Open("pgx", other)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec("CREATE TABLE payroll (id int)"); err != nil {
		t.Fatal(err)
	}
	if _, err = copyTo(t, src, other, CopyOptions{}); !errors.Is(err, ErrNotDatabase) {
		t.Fatalf("foreign database: %v, want ErrNotDatabase", err)
	}
}

func TestCopyRefusesSchemaMismatch(t *testing.T) {
	// Source one migration ahead of what the target can have.
	extra := mapFS{mig(1, "extra_table"): {Data: []byte("CREATE TABLE extra_table (id INTEGER PRIMARY KEY);")}}
	ahead := openSource(t, extra)
	_, err := copyTo(t, ahead, pgtest.NewDatabase(t), CopyOptions{})
	if !errors.Is(err, ErrSchemaMismatch) {
		t.Fatalf("source ahead: %v, want ErrSchemaMismatch", err)
	}

	// Target migrated one step further than the source.
	src := openSource(t, nil)
	dsn := pgtest.NewDatabase(t)
	pgExtra := mapFS{mig(1, "extra_table"): {Data: []byte("CREATE TABLE extra_table (id BIGINT PRIMARY KEY);")}}
	_ = openPG(t, dsn, PostgresOptions{Migrations: pgExtra}).Close()
	if _, err = copyTo(t, src, dsn, CopyOptions{Migrations: pgExtra}); !errors.Is(err, ErrSchemaMismatch) || !strings.Contains(err.Error(), "schema version") {
		t.Fatalf("target ahead: %v, want ErrSchemaMismatch", err)
	}
}

// TestCopyRefusesUnknownTable: a table that a migration added and copyPlan
// does not name stops the copy instead of being left behind.
func TestCopyRefusesUnknownTable(t *testing.T) {
	src := openSource(t, mapFS{mig(1, "extra_table"): {Data: []byte("CREATE TABLE extra_table (id INTEGER PRIMARY KEY);")}})
	dsn := pgtest.NewDatabase(t)
	_, err := copyTo(t, src, dsn, CopyOptions{Migrations: mapFS{mig(1, "extra_table"): {Data: []byte("CREATE TABLE extra_table (id BIGINT PRIMARY KEY);")}}})
	if !errors.Is(err, ErrUnknownTable) || !strings.Contains(err.Error(), `"extra_table"`) {
		t.Fatalf("err = %v, want ErrUnknownTable naming extra_table", err)
	}
}

// TestCopyVerificationCatchesAlteredRows: a target that changes what it is
// given (here a trigger) fails the checksum, and nothing is committed.
func TestCopyVerificationCatchesAlteredRows(t *testing.T) {
	src := openSource(t, nil)
	fillSource(t, src, 10)
	dsn := pgtest.NewDatabase(t)
	dst := openPG(t, dsn, PostgresOptions{})
	raw, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`CREATE FUNCTION tamper() RETURNS trigger AS $$ BEGIN IF NEW.seq = 7 THEN NEW.body := 'changed'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql;
		CREATE TRIGGER tamper BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION tamper();`); err != nil {
		t.Fatal(err)
	}
	_, err = copyTo(t, src, dsn, CopyOptions{})
	if !errors.Is(err, ErrCopyVerify) || !strings.Contains(err.Error(), "table messages") {
		t.Fatalf("err = %v, want ErrCopyVerify for messages", err)
	}
	for _, table := range []string{"accounts", "messages"} {
		if n := len(dumpTable(t, dst, table)); n != 0 {
			t.Fatalf("%d rows in %s after a failed verification", n, table)
		}
	}
}

func TestTableDigest(t *testing.T) {
	cols := []string{"a", "b"}
	rows := [][]any{{int64(1), "x"}, {int64(2), []byte("x")}, {nil, "y"}, {int64(-1), ""}}
	digest := func(order []int) tableDigest {
		var d tableDigest
		for _, i := range order {
			d.add(cols, rows[i])
		}
		return d
	}
	base := digest([]int{0, 1, 2, 3})
	if d := digest([]int{3, 1, 0, 2}); d != base {
		t.Error("digest depends on row order")
	}
	for name, order := range map[string][]int{
		"missing":   {0, 1, 2},
		"duplicate": {0, 1, 2, 3, 3},
		"swapped":   {0, 1, 2, 2},
	} {
		if d := digest(order); d.sum == base.sum {
			t.Errorf("%s row: same checksum", name)
		}
	}
	// Text and bytes of the same content hash differently; NULL differs
	// from the empty string.
	var a, b, c, e tableDigest
	a.add([]string{"v"}, []any{"x"})
	b.add([]string{"v"}, []any{[]byte("x")})
	c.add([]string{"v"}, []any{nil})
	e.add([]string{"v"}, []any{""})
	if a.sum == b.sum || c.sum == e.sum {
		t.Error("value kinds collide")
	}
}

func TestCanonical(t *testing.T) {
	for _, tc := range []struct {
		v    any
		k    valueKind
		want any
		bad  bool
	}{
		{int32(5), kindInt, int64(5), false},
		{true, kindInt, int64(1), false},
		{[]byte("hé"), kindText, "hé", false},
		{"raw", kindBytes, []byte("raw"), false},
		{nil, kindText, nil, false},
		{"a\x00b", kindText, nil, true},
		{string([]byte{0xff}), kindText, nil, true},
		{"12", kindInt, nil, true},
		{3.5, kindBytes, nil, true},
	} {
		got, err := canonical(tc.v, tc.k)
		if (err != nil) != tc.bad {
			t.Errorf("canonical(%#v, %c) error %v, want bad=%v", tc.v, tc.k, err, tc.bad)
			continue
		}
		if !tc.bad && fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("canonical(%#v, %c) = %#v, want %#v", tc.v, tc.k, got, tc.want)
		}
	}
}
