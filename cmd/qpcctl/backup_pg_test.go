package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// sendLog is what a chatter sending in the background had acknowledged,
// with when each Send returned.
type sendLog struct {
	mu    sync.Mutex
	texts []string
	ids   []string
	at    []time.Time
	err   error
}

func (l *sendLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.texts)
}

// keepSending has ch send until stop is closed (a pause between messages
// keeps the count far below MLS's generation gap).
func keepSending(ch *chatter, prefix string, stop <-chan struct{}, l *sendLog, wg *sync.WaitGroup) {
	defer wg.Done()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		text := fmt.Sprintf("%s %d", prefix, i)
		id, err := ch.c.Send(ctx, "team", text, "")
		cancel()
		l.mu.Lock()
		if err != nil {
			l.err = err
			l.mu.Unlock()
			return
		}
		l.texts, l.ids, l.at = append(l.texts, text), append(l.ids, id), append(l.at, time.Now())
		l.mu.Unlock()
	}
}

// messageIDs counts the rows per client message id in a PostgreSQL
// deployment's messages table.
func messageIDs(t *testing.T, dsn string) map[string]int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT message_id FROM messages")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out[id]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func writeBackupKey(t *testing.T, hexByte string) string {
	t.Helper()
	f := filepath.Join(shortDir(t), "backup.key")
	if err := os.WriteFile(f, []byte(strings.Repeat(hexByte, 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPostgresBackupEndToEnd: real clients chat through two qpcd nodes on
// PostgreSQL; `qpcctl backup create` runs while two of them keep sending;
// restore is refused while the nodes run and into the live (non-empty)
// database; the nodes stop; the backup is restored into a new database and
// two nodes serve it. Every message acknowledged before the backup started
// is there exactly once (and none acknowledged after it ended), and the
// same clients carry on with their tokens and cursors, no login.
func TestPostgresBackupEndToEnd(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	dsnFile := writeDSNFile(t, shortDir(t), dsn)
	// A short heartbeat: the nodes pick up the backup record sooner.
	env := []string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE=" + dsnFile, "QPC_CLUSTER_HEARTBEAT=500ms"}
	dirA, dirB := shortDir(t), shortDir(t)
	nodeA := startQPCD(t, dirA, env...)
	copyTree(t, filepath.Join(dirA, "tls"), filepath.Join(dirB, "tls"))
	nodeB := startQPCD(t, dirB, env...)
	pin := nodeA.pin
	if nodeB.pin != pin {
		t.Fatalf("node B's pin %s, node A's %s", nodeB.pin, pin)
	}

	var people []*chatter
	for i, name := range []string{"alice", "bob", "carol"} {
		ch := &chatter{name: name, home: filepath.Join(shortDir(t), "home")}
		node := nodeA
		if i == 1 {
			node = nodeB
		}
		ch.connect(t, node.quic, pin)
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
	for _, p := range []*chatter{bob, carol} {
		invs, err := p.c.Invitations(ctxMinute(t))
		if err != nil || len(invs) != 1 {
			t.Fatalf("%s's invitations: %v, %v", p.name, invs, err)
		}
		if _, err := p.c.AcceptInvitation(ctxMinute(t), invs[0].ID); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 2 {
		for _, p := range people {
			p.send(t, fmt.Sprintf("before %s %d", p.name, round))
			for _, q := range people {
				q.sync(t)
			}
		}
	}

	// alice (node A) and bob (node B) keep sending while the backup runs;
	// carol reads nothing meanwhile.
	keyFile := writeBackupKey(t, "5a")
	backup := filepath.Join(shortDir(t), "deployment.qpcbak")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	logs := map[*chatter]*sendLog{alice: {}, bob: {}}
	for _, p := range []*chatter{alice, bob} {
		wg.Add(1)
		go keepSending(p, "during "+p.name, stop, logs[p], &wg)
	}
	waitFor(t, 30*time.Second, "both senders under way", func() bool { return logs[alice].count() >= 2 && logs[bob].count() >= 2 })
	created := time.Now()
	var res admin.BackupResult
	ctlOK(t, dirA, &res, "backup", "create", "--out", backup, "--dsn-file", dsnFile, "--key-file", keyFile)
	finished := time.Now()
	na, nb := logs[alice].count(), logs[bob].count()
	waitFor(t, 30*time.Second, "both senders sent after the backup", func() bool { return logs[alice].count() >= na+2 && logs[bob].count() >= nb+2 })
	close(stop)
	wg.Wait()
	for p, l := range logs {
		if l.err != nil {
			t.Fatalf("%s's background send: %v", p.name, l.err)
		}
	}
	m := res.Manifest
	if m.Format != admin.BackupFormatPostgres || !m.IsPostgres() || m.Tables["accounts"] != 3 || len(m.Checksums) != len(m.Tables) ||
		m.Tables["nodes"] != 0 || m.PostgresVersion == "" || m.CreatedAt.Before(created.Add(-time.Minute)) {
		t.Fatalf("backup manifest %+v", m)
	}
	t.Logf("backup: %d bytes, %d messages, taken in %.2fs while alice and bob sent", res.Bytes, m.Tables["messages"], res.TookSeconds)
	// Recorded in the database; both nodes export it for QpcdBackupTooOld.
	if !res.Recorded {
		t.Fatal("the backup was not recorded in the database")
	}
	for _, n := range []*daemon{nodeA, nodeB} {
		waitFor(t, 20*time.Second, "node exports the backup time", func() bool {
			return metricValue(t, n, "qpcd_backup_last_success_timestamp_seconds") == float64(m.CreatedAt.UnixNano())/1e9
		})
	}

	// verify: OK with the key; JSON names the checks.
	var vr admin.VerifyReport
	ctlOK(t, dirA, &vr, "backup", "verify", backup, "--key-file", keyFile)
	if !strings.Contains(strings.Join(vr.Checks, ","), "table checksums") || vr.Tables["messages"] != m.Tables["messages"] {
		t.Fatalf("verify report %+v", vr)
	}

	// Restore is refused while nodes heartbeat on the target, and a node's
	// id is named; nothing is written.
	r := ctl(t, dirA, "restore", backup, "--dsn-file", dsnFile, "--backup-key-file", keyFile)
	if r.code != 1 || !strings.Contains(r.stderr, "nodes are running") {
		t.Fatalf("restore onto running nodes: exit %d, stderr %q", r.code, r.stderr)
	}

	nodeA.drain(t)
	nodeB.drain(t)
	for _, p := range people {
		_ = p.c.Close()
		p.c = nil
	}
	// The stopped deployment's own database is not empty: refused, naming tables.
	r = ctl(t, dirA, "backup", "restore", backup, "--dsn-file", dsnFile, "--backup-key-file", keyFile)
	if r.code != 1 || !strings.Contains(r.stderr, "not empty") || !strings.Contains(r.stderr, "accounts") || !strings.Contains(r.stderr, "messages") {
		t.Fatalf("restore into the live database: exit %d, stderr %q", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, pgPassword(t, dsn)) {
		t.Fatal("the database password appears in qpcctl's output")
	}

	// Restore into a new database.
	dsn2 := pgtest.NewDatabase(t)
	dsnFile2 := writeDSNFile(t, shortDir(t), dsn2)
	var rr admin.PostgresRestoreReport
	ctlOK(t, dirA, &rr, "backup", "restore", backup, "--dsn-file", dsnFile2, "--backup-key-file", keyFile)
	if !rr.TargetMigrated || rr.Rows == 0 || rr.SchemaVersion != m.SchemaVersion || rr.KeyPackagesInvalidated == 0 {
		t.Fatalf("restore report %+v", rr)
	}

	// Server side: each message acknowledged before the backup started is
	// there exactly once; none acknowledged after it ended is.
	ids := messageIDs(t, dsn2)
	var beforeBackup []string // texts of alice's and bob's background messages in the snapshot
	for p, l := range logs {
		in, after := 0, 0
		for i, id := range l.ids {
			switch {
			case l.at[i].Before(created):
				if ids[id] != 1 {
					t.Errorf("%s's %q, acknowledged before the backup, is in the restored database %d times", p.name, l.texts[i], ids[id])
				}
				in++
			case l.at[i].After(finished):
				if ids[id] != 0 {
					t.Errorf("%s's %q, acknowledged after the backup, is in the restored database", p.name, l.texts[i])
				}
				after++
			}
			if ids[id] == 1 {
				beforeBackup = append(beforeBackup, l.texts[i])
			}
		}
		if in == 0 || after == 0 {
			t.Fatalf("%s: %d messages before and %d after the backup; the test needs both", p.name, in, after)
		}
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("message %s is in the restored database %d times", id, n)
		}
	}

	// Two nodes on the restored database; the clients come back unchanged.
	env2 := []string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE=" + dsnFile2}
	nodeC := startQPCD(t, dirA, env2...)
	nodeD := startQPCD(t, dirB, env2...)
	alice.connect(t, nodeC.quic, pin)
	bob.connect(t, nodeD.quic, pin)
	carol.connect(t, nodeC.quic, pin)
	for _, p := range people {
		p.sync(t)
	}
	for round := range 2 {
		for _, p := range people {
			p.send(t, fmt.Sprintf("restored %s %d", p.name, round))
			for _, q := range people {
				q.sync(t)
			}
		}
	}

	// Everyone holds every message sent in the foreground (before and
	// after the restore) and every background message in the snapshot,
	// each exactly once.
	var want []string
	for _, p := range people {
		want = append(want, p.sent...)
	}
	want = append(want, beforeBackup...)
	sort.Strings(want)
	for _, p := range people {
		got := p.history(t)
		counts := map[string]int{}
		for _, g := range got {
			counts[g]++
		}
		for _, w := range want {
			if counts[w] != 1 {
				t.Errorf("%s holds %q %d times, want once", p.name, w, counts[w])
			}
		}
		for g, n := range counts {
			if n > 1 {
				t.Errorf("%s holds %q %d times", p.name, g, n)
			}
		}
	}
	for name, n := range map[string]*daemon{"C": nodeC, "D": nodeD} {
		ev := auditEvents(n.logText())
		if ev["account.register"]+ev["auth.login"]+ev["auth.token_rejected"]+ev["auth.login_failed"] != 0 {
			t.Errorf("node %s audit events %v: a client registered, logged in or was refused after the restore", name, ev)
		}
		if ev["delivery.enqueue"] == 0 {
			t.Errorf("node %s served no enqueue: %v", name, ev)
		}
	}
}

// TestPostgresBackupVerifyDetectsDamage: verify tells a flipped byte (in
// the payload and in the manifest), a truncated file, a wrong key and a
// missing key apart, each with exit 1 (2 for usage) and its own message.
func TestPostgresBackupVerifyDetectsDamage(t *testing.T) {
	nodes := startPGNodes(t, 1)
	dir := nodes[0].dataDir
	c := nodes[0].mustDial(t)
	if _, _, err := register(c, "dora"); err != nil {
		t.Fatal(err)
	}
	dsnFile := nodeDSNFile(t, nodes[0])
	keyFile := writeBackupKey(t, "5a")
	backup := filepath.Join(shortDir(t), "b.qpcbak")
	// Human output, with the nodes running.
	r := ctl(t, dir, "backup", "create", "--out", backup, "--dsn-file", dsnFile, "--key-file", keyFile)
	if r.code != 0 || !strings.Contains(r.stdout, "backend:        postgres") || !strings.Contains(r.stdout, "accounts") {
		t.Fatalf("backup create: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	// A second create without --force refuses to replace it.
	if r := ctl(t, dir, "backup", "create", "--out", backup, "--dsn-file", dsnFile, "--key-file", keyFile); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("second create: exit %d, stderr %q", r.code, r.stderr)
	}
	good, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	b, err := admin.OpenBackup(backup)
	if err != nil {
		t.Fatal(err)
	}
	payloadAt := len(good) - int(b.Manifest.DBBytes)
	manifestAt := 20
	variant := func(name string, data []byte) string {
		p := filepath.Join(shortDir(t), name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flip := func(at int) []byte {
		d := append([]byte(nil), good...)
		d[at] ^= 0x01
		return d
	}
	for _, tc := range []struct {
		name, file, key string
		code            int
		want            string
	}{
		{"good", backup, keyFile, 0, "OK "},
		{"flipped payload byte", variant("flip-payload", flip(payloadAt+len(good[payloadAt:])/2)), keyFile, 1, "damaged"},
		{"flipped manifest byte", variant("flip-manifest", flip(manifestAt)), keyFile, 1, "damaged"},
		{"truncated", variant("short", good[:len(good)-10]), keyFile, 1, "truncated"},
		{"wrong key", backup, writeBackupKey(t, "a5"), 1, "does not open with this"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ctl(t, dir, "backup", "verify", tc.file, "--key-file", tc.key)
			out := r.stdout + r.stderr
			if r.code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d (want %d), output %q (want %q)", r.code, tc.code, out, tc.want)
			}
		})
	}
	// A payload flipped and re-hashed (so the SHA-256 in the manifest
	// matches) still fails: the chunk no longer authenticates.
	forged := flip(payloadAt + 100)
	fb := variant("forged", forged)
	if err := rehash(fb, payloadAt); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, dir, "backup", "verify", fb, "--key-file", keyFile); r.code != 1 || !strings.Contains(r.stderr, "does not authenticate") {
		t.Fatalf("forged payload: exit %d, stderr %q", r.code, r.stderr)
	}
	// A SQLCipher data directory cannot take a PostgreSQL backup, and a
	// PostgreSQL database cannot take a SQLCipher backup.
	sq := shortDir(t)
	if r := ctl(t, sq, "restore", backup, "--backup-key-file", keyFile); r.code != 1 || !strings.Contains(r.stderr, "another storage backend") || !strings.Contains(r.stderr, "PostgreSQL deployment") {
		t.Fatalf("restore of a PostgreSQL backup into SQLCipher: exit %d, stderr %q", r.code, r.stderr)
	}
	page := filepath.Join(shortDir(t), "db")
	if err := os.WriteFile(page, []byte("a SQLCipher file's bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum, n, err := admin.FileSHA256(page)
	if err != nil {
		t.Fatal(err)
	}
	var sqb bytes.Buffer
	if err := admin.WriteBackup(&sqb, admin.Manifest{Format: admin.BackupFormat, SchemaVersion: 10, DBBytes: n, DBSHA256: sum, KeyID: "k"}, page); err != nil {
		t.Fatal(err)
	}
	sqFile := variant("sqlcipher.qpcbak", sqb.Bytes())
	if r := ctl(t, sq, "backup", "restore", sqFile, "--dsn-file", writeDSNFile(t, shortDir(t), pgtest.NewDatabase(t))); r.code != 1 || !strings.Contains(r.stderr, "another storage backend") || !strings.Contains(r.stderr, "migrate to-postgres") {
		t.Fatalf("restore of a SQLCipher backup into PostgreSQL: exit %d, stderr %q", r.code, r.stderr)
	}
}

// metricValue scrapes one unlabelled metric from a node's ops endpoint (-1: absent).
func metricValue(t *testing.T, d *daemon, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// nodeDSNFile finds the DSN file a startPGNodes node runs on (from its log).
func nodeDSNFile(t *testing.T, d *daemon) string {
	t.Helper()
	for _, kv := range d.cmd.Env {
		if v, ok := strings.CutPrefix(kv, "QPC_POSTGRES_DSN_FILE="); ok {
			return v
		}
	}
	t.Fatal("node has no QPC_POSTGRES_DSN_FILE")
	return ""
}

// rehash rewrites a backup's manifest with the SHA-256 of its (changed)
// payload, as an attacker without the key could.
func rehash(path string, payloadAt int) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(data[8:12])
	var m admin.Manifest
	if err := json.Unmarshal(data[12:12+n], &m); err != nil {
		return err
	}
	sum := sha256.Sum256(data[payloadAt:])
	m.DBSHA256 = hex.EncodeToString(sum[:])
	hdr, err := admin.BackupHeader(m)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(hdr, data[payloadAt:]...), 0o600)
}
