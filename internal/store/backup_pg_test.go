package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// pgSourceWithData is a PostgreSQL database of qpcd's holding fillSource's
// rows (moved there by the migration copy).
func pgSourceWithData(t *testing.T, messages int) string {
	t.Helper()
	src := openSource(t, nil)
	fillSource(t, src, messages)
	dsn := pgtest.NewDatabase(t)
	if _, err := copyTo(t, src, dsn, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	return dsn
}

func dumpOf(t *testing.T, dsn string) ([]byte, DumpReport) {
	t.Helper()
	var buf bytes.Buffer
	rep, err := DumpPostgres(context.Background(), DumpOptions{DSN: secret.New([]byte(dsn))}, &buf)
	if err != nil {
		t.Fatalf("DumpPostgres: %v", err)
	}
	return buf.Bytes(), rep
}

func expectOf(tables []DumpTable) map[string]DumpTable {
	m := map[string]DumpTable{}
	for _, t := range tables {
		m[t.Table] = t
	}
	return m
}

func TestPostgresBackupRoundTrip(t *testing.T) {
	const messages = 1500
	srcDSN := pgSourceWithData(t, messages)
	// A node row in the source: the registry is not part of a backup.
	src := openPG(t, srcDSN, PostgresOptions{})
	var progress []CopyProgress
	var buf bytes.Buffer
	dumpStart := time.Now()
	rep, err := DumpPostgres(context.Background(), DumpOptions{DSN: secret.New([]byte(srcDSN)), Progress: func(p CopyProgress) { progress = append(progress, p) }}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	dump := buf.Bytes()
	dumpTook := time.Since(dumpStart)
	if rep.SchemaVersion != KnownPostgresSchemaVersion() || rep.PostgresVersion == "" || rep.SnapshotAt.IsZero() || len(rep.Tables) != len(copyPlan)-1 {
		t.Fatalf("dump report %+v", rep)
	}
	if m := expectOf(rep.Tables)["messages"]; m.Rows != messages || len(m.Checksum) != 64 {
		t.Fatalf("messages in the dump: %+v", m)
	}
	if !slices.ContainsFunc(progress, func(p CopyProgress) bool {
		return p.Phase == "dump" && p.Table == "messages" && p.Rows > 0 && p.Rows < messages && p.Total == messages
	}) {
		t.Error("no intermediate dump progress for messages")
	}

	sum, err := ReadDump(bytes.NewReader(dump))
	if err != nil {
		t.Fatalf("ReadDump: %v", err)
	}
	if sum.SchemaVersion != rep.SchemaVersion || !slices.Equal(sum.Tables, rep.Tables) {
		t.Fatalf("ReadDump %+v, dump report %+v", sum, rep)
	}

	dstDSN := pgtest.NewDatabase(t)
	restoreStart := time.Now()
	rrep, err := RestorePostgres(context.Background(), RestoreOptions{DSN: secret.New([]byte(dstDSN)), Expect: expectOf(rep.Tables)}, bytes.NewReader(dump))
	if err != nil {
		t.Fatalf("RestorePostgres: %v", err)
	}
	t.Logf("%d rows, %d-byte dump: dump %v, restore (migrate, copy, verify, commit) %v", rep.Rows, len(dump), dumpTook.Round(time.Millisecond), time.Since(restoreStart).Round(time.Millisecond))
	if !rrep.TargetMigrated || rrep.KeyPackagesInvalidated != 2 || rrep.SchemaVersion != rep.SchemaVersion {
		t.Fatalf("restore report %+v", rrep)
	}
	dst := openPG(t, dstDSN, PostgresOptions{})
	for _, p := range copyPlan {
		got, want := dumpTable(t, dst, p.name), dumpTable(t, src, p.name)
		switch p.name {
		case "nodes":
			if len(got) != 0 {
				t.Errorf("nodes restored: %v", got)
			}
		case "meta":
			// The restore adds a new incarnation id (the source has none).
			inc := "key=" + hex.EncodeToString([]byte(MetaIncarnation)) + ";"
			kept := slices.DeleteFunc(slices.Clone(got), func(r string) bool { return strings.HasPrefix(r, inc) })
			if len(kept) != len(got)-1 || !slices.Equal(kept, want) {
				t.Errorf("meta after restore: want the source's rows and a new incarnation id:\n got  %v\n want %v", got, want)
			}
		case "keypackages":
			if len(got) != 0 || len(want) != 2 {
				t.Errorf("keypackages: %d restored (want 0, invalidated), %d in the source", len(got), len(want))
			}
		default:
			if !slices.Equal(got, want) {
				t.Errorf("table %s differs after restore:\n got  %v\n want %v", p.name, got, want)
			}
		}
	}
	// Sequences are past the restored ids.
	var id int64
	err = dst.WriteTx(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow(`INSERT INTO messages (channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body)
			VALUES (?, ?, 'new', 'a1', 'd1', 4, 1, 1, 2, ?) RETURNING id`, bytes.Repeat([]byte{1}, 16), int64(messages+1), []byte("x")).Scan(&id)
	})
	if err != nil || id != messages*2+11 {
		t.Fatalf("new message id %d (%v), want %d", id, err, messages*2+11)
	}

	// The restored database is not empty any more: a second restore names
	// the tables and writes nothing.
	_, err = RestorePostgres(context.Background(), RestoreOptions{DSN: secret.New([]byte(dstDSN))}, bytes.NewReader(dump))
	if !errors.Is(err, ErrTargetNotEmpty) || !strings.Contains(err.Error(), "accounts") || !strings.Contains(err.Error(), "messages") {
		t.Fatalf("restore into a full database: %v, want ErrTargetNotEmpty naming accounts and messages", err)
	}
	if n := len(dumpTable(t, dst, "messages")); n != messages+1 {
		t.Fatalf("%d messages after the refused restore", n)
	}
}

func TestPostgresRestoreRefusals(t *testing.T) {
	dump, rep := dumpOf(t, pgSourceWithData(t, 20))
	restore := func(dsn string, o RestoreOptions, b []byte) error {
		o.DSN = secret.New([]byte(dsn))
		_, err := RestorePostgres(context.Background(), o, bytes.NewReader(b))
		return err
	}
	tableCount := func(dsn string) int {
		raw, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		var n int
		if err := raw.QueryRow("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("newer schema", func(t *testing.T) {
		newer := slices.Clone(dump)
		// The schema version is the uvarint after magic and version 1.
		newer[len(dumpMagic)+1] = byte(KnownPostgresSchemaVersion() + 1)
		dsn := pgtest.NewDatabase(t)
		if err := restore(dsn, RestoreOptions{}, newer); !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("err = %v, want ErrSchemaTooNew", err)
		}
		if n := tableCount(dsn); n != 0 {
			t.Fatalf("target has %d tables after the refusal", n)
		}
	})

	t.Run("running node", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		db := openPG(t, dsn, PostgresOptions{}) // migrated, empty
		now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
		err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
			_, err := tx.Exec(`INSERT INTO nodes (id, hostname, address, version, started_at, last_seen_at, heartbeat_ms)
				VALUES ('live-node', 'h', '127.0.0.1:7443', 'v', 1, ?, 5000), ('gone-node', 'h', '127.0.0.1:7444', 'v', 1, ?, 5000)`,
				now.Add(-4*time.Second).UnixMilli(), now.Add(-16*time.Second).UnixMilli())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		err = restore(dsn, RestoreOptions{Now: func() time.Time { return now }}, dump)
		if !errors.Is(err, ErrNodesRunning) || !strings.Contains(err.Error(), "live-node") || strings.Contains(err.Error(), "gone-node") {
			t.Fatalf("err = %v, want ErrNodesRunning naming live-node only", err)
		}
		// Three heartbeats later the node counts as gone.
		if err := restore(dsn, RestoreOptions{Now: func() time.Time { return now.Add(12 * time.Second) }, Expect: expectOf(rep.Tables)}, dump); err != nil {
			t.Fatalf("restore once the node is stale: %v", err)
		}
	})

	t.Run("running node, override", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		db := openPG(t, dsn, PostgresOptions{})
		err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
			_, err := tx.Exec(`INSERT INTO nodes (id, hostname, address, version, started_at, last_seen_at, heartbeat_ms) VALUES ('n', 'h', 'a', 'v', 1, ?, 5000)`, time.Now().UnixMilli())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := restore(dsn, RestoreOptions{AllowLiveNodes: true}, dump); err != nil {
			t.Fatalf("restore with AllowLiveNodes: %v", err)
		}
	})

	t.Run("manifest mismatch rolls back", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		want := expectOf(rep.Tables)
		m := want["messages"]
		m.Rows++
		want["messages"] = m
		if err := restore(dsn, RestoreOptions{Expect: want}, dump); !errors.Is(err, ErrDumpCorrupt) {
			t.Fatalf("err = %v, want ErrDumpCorrupt", err)
		}
		db := openPG(t, dsn, PostgresOptions{})
		if n := len(dumpTable(t, db, "messages")); n != 0 {
			t.Fatalf("%d messages committed by a failed restore", n)
		}
	})

	t.Run("damaged payload", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		bad := slices.Clone(dump)
		i := bytes.Index(bad, []byte("body 7 "))
		bad[i+5] ^= 0x01
		if err := restore(dsn, RestoreOptions{}, bad); !errors.Is(err, ErrDumpCorrupt) {
			t.Fatalf("err = %v, want ErrDumpCorrupt", err)
		}
		db := openPG(t, dsn, PostgresOptions{})
		if n := len(dumpTable(t, db, "accounts")); n != 0 {
			t.Fatalf("%d accounts committed by a failed restore", n)
		}
	})
}

func TestReadDumpDetectsDamage(t *testing.T) {
	dump, _ := dumpOf(t, pgSourceWithData(t, 5))
	orig, err := ReadDump(bytes.NewReader(dump))
	if err != nil {
		t.Fatal(err)
	}
	// Every truncation and every single flipped byte is an error (a flip
	// may also surface as an unknown table name), but for the schema
	// version, which reads as another version (the manifest and the
	// encryption around the dump catch that).
	for n := range len(dump) {
		if _, err := ReadDump(bytes.NewReader(dump[:n])); !errors.Is(err, ErrDumpCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrDumpCorrupt", n, len(dump), err)
		}
	}
	for i := range dump {
		bad := slices.Clone(dump)
		bad[i] ^= 0x20
		sum, err := ReadDump(bytes.NewReader(bad))
		if err == nil && sum.SchemaVersion != orig.SchemaVersion {
			continue
		}
		if !errors.Is(err, ErrDumpCorrupt) && !errors.Is(err, ErrUnknownTable) {
			t.Fatalf("byte %d flipped: %v, want ErrDumpCorrupt", i, err)
		}
	}
	if _, err := ReadDump(bytes.NewReader(append(slices.Clone(dump), 0))); !errors.Is(err, ErrDumpCorrupt) {
		t.Fatalf("trailing byte: %v", err)
	}
}

func FuzzReadDump(f *testing.F) {
	// A small valid dump written by the encoder, so the fuzzer starts
	// from the real layout.
	var buf bytes.Buffer
	dw := newDumpWriter(&buf, 3)
	p := planned{copyTable: copyTable{name: "accounts"}, cols: []string{"id", "name", "n"}, kinds: []valueKind{kindText, kindBytes, kindInt}}
	dw.table(p)
	var d tableDigest
	for _, r := range [][]any{{"a", []byte{0, 1}, int64(-1)}, {"b", nil, nil}} {
		d.add(p.cols, r)
		dw.row(r)
	}
	dw.end(d)
	if err := dw.finish(); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(dumpMagic + "\x01\x01Z"))
	f.Add([]byte(dumpMagic + "\x01\x01T\x08accounts\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := ReadDump(bytes.NewReader(b))
		if err != nil && !errors.Is(err, ErrDumpCorrupt) && !errors.Is(err, ErrUnknownTable) {
			t.Fatalf("untyped error: %v", err)
		}
	})
}

// TestPostgresBackupOlderSchema: a deployment at an older schema version
// (fewer tables) is backed up and restored at that version; a node of
// this build then migrates the restored database forward.
func TestPostgresBackupOlderSchema(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	pool, conn, _, err := openPGConn(ctx, secret.New([]byte(dsn)), "test")
	if err != nil {
		t.Fatal(err)
	}
	known, err := loadPGMigrations(nil)
	if err != nil {
		t.Fatal(err)
	}
	const old = 6
	for _, m := range known[:old] {
		if err := applyStep(ctx, conn, m, time.Now, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ('older', 'kept')"); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	pool.Close()

	dump, rep := dumpOf(t, dsn)
	if rep.SchemaVersion != old || slices.ContainsFunc(rep.Tables, func(d DumpTable) bool { return d.Table == "invitations" }) {
		t.Fatalf("dump of a version-%d database: %+v", old, rep)
	}
	dst := pgtest.NewDatabase(t)
	rrep, err := RestorePostgres(ctx, RestoreOptions{DSN: secret.New([]byte(dst)), Expect: expectOf(rep.Tables)}, bytes.NewReader(dump))
	if err != nil || rrep.SchemaVersion != old {
		t.Fatalf("restore: %+v, %v", rrep, err)
	}
	db := openPG(t, dst, PostgresOptions{}) // migrates to this build's version
	if v, err := db.SchemaVersion(ctx); err != nil || v != len(known) {
		t.Fatalf("schema version after a node opened it: %d, %v", v, err)
	}
	var got string
	if err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow("SELECT value FROM meta WHERE key = 'older'").Scan(&got)
	}); err != nil || got != "kept" {
		t.Fatalf("meta row after restore and migration: %q, %v", got, err)
	}
}
