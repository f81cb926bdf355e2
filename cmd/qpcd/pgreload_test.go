package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// loggedDaemon is a qpcd process whose JSON log lines are all kept, so a
// test can wait for a line without ever blocking qpcd's writes.
type loggedDaemon struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []map[string]any
	raw    strings.Builder
	exited chan struct{}
}

func startLogged(t *testing.T, env []string, args ...string) *loggedDaemon {
	t.Helper()
	cmd := exec.Command(qpcdBin, args...)
	cmd.Env = cleanEnv(env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &loggedDaemon{cmd: cmd, exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			_ = json.Unmarshal(sc.Bytes(), &m)
			d.mu.Lock()
			d.lines = append(d.lines, m)
			d.raw.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
		}
		_ = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("qpcd log:\n%s", d.log())
		}
	})
	return d
}

func (d *loggedDaemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.raw.String()
}

// waitMsg waits for the n-th log line (counting from 1) whose msg starts
// with prefix, and returns it.
func (d *loggedDaemon) waitMsg(t *testing.T, prefix string, n int) map[string]any {
	t.Helper()
	var found map[string]any
	testutil.WaitFor(t, 30*time.Second, 10*time.Millisecond, fmt.Sprintf("log line %d %q", n, prefix), func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		seen := 0
		for _, m := range d.lines {
			if strings.HasPrefix(fmt.Sprint(m["msg"]), prefix) {
				if seen++; seen == n {
					found = m
					return true
				}
			}
		}
		return false
	})
	return found
}

// TestPostgresPasswordRotationOnSIGHUP: the database password is rotated
// on a running node: ALTER ROLE, rewrite postgres.dsn_file, SIGHUP, then
// every backend of the role is killed, and requests keep succeeding on
// connections made with the new password. A file open to others, or one
// whose password does not log in, is refused with a log line naming it,
// and the credentials in use stay.
func TestPostgresPasswordRotationOnSIGHUP(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	role := fmt.Sprintf("qpcd_rot_%d", time.Now().UnixNano()%1e9)
	if err := c.CreateRole(ctx, role, "first-pw"); err != nil {
		t.Fatal(err)
	}
	super := func(database, stmt string) {
		t.Helper()
		db, err := sql.Open("pgx", c.DSN(database))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() { super("postgres", "DROP ROLE IF EXISTS "+role) })
	cfg, err := pgx.ParseConfig(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	super("postgres", "ALTER DATABASE "+cfg.Database+" OWNER TO "+role)

	dsnFile := filepath.Join(t.TempDir(), "postgres.dsn")
	writeDSN := func(password string, mode os.FileMode) {
		t.Helper()
		_ = os.Remove(dsnFile)
		if err := os.WriteFile(dsnFile, []byte(c.UserDSN(role, password, cfg.Database)+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dsnFile, mode); err != nil {
			t.Fatal(err)
		}
	}
	writeDSN("first-pw", 0o600)
	d := startLogged(t, []string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE=" + dsnFile},
		"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--log-format", "json", "--rate-limit", "10000")
	ready := d.waitMsg(t, "qpcd ready", 1)
	addr := strings.TrimSuffix(fmt.Sprint(ready["quic"]), "/udp")
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	rc, err := rpcclient.Dial(dctx, addr, transport.DialOptions{PinSHA256: fmt.Sprint(ready["cert_sha256"])})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	registered := 0
	register := func() error {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var resp qpcv1.RegisterResponse
		err := rc.Call(cctx, "Register", "", &qpcv1.RegisterRequest{AccountName: fmt.Sprintf("user%d", registered), SignatureKey: pub, DeviceName: "d"}, &resp)
		if err == nil {
			registered++
		}
		return err
	}
	if err := register(); err != nil {
		t.Fatal(err)
	}
	hup := func() {
		t.Helper()
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	super("postgres", "ALTER ROLE "+role+" PASSWORD 'second-pw'")
	// Open to others: refused, named.
	writeDSN("second-pw", 0o644)
	hup()
	m := d.waitMsg(t, "database credentials not reloaded", 1)
	if fmt.Sprint(m["file"]) != dsnFile || !strings.Contains(fmt.Sprint(m["err"]), "chmod") {
		t.Fatalf("refusal line %v", m)
	}
	// A password that does not log in: refused, named.
	writeDSN("third-pw", 0o600)
	hup()
	m = d.waitMsg(t, "database credentials not reloaded", 2)
	if fmt.Sprint(m["file"]) != dsnFile || !strings.Contains(fmt.Sprint(m["err"]), "password") {
		t.Fatalf("refusal line %v", m)
	}
	// The node still serves on its open connections.
	if err := register(); err != nil {
		t.Fatalf("after the refused reloads: %v", err)
	}
	writeDSN("second-pw", 0o600)
	hup()
	d.waitMsg(t, "database credentials reloaded", 1)

	super("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+role+"'")
	testutil.WaitFor(t, 20*time.Second, 20*time.Millisecond, "a request served after the backends were killed", func() bool { return register() == nil })
	for i := range 20 {
		if err := register(); err != nil {
			t.Fatalf("request %d after the rotation: %v", i, err)
		}
	}
	for _, pw := range []string{"first-pw", "second-pw", "third-pw"} {
		if strings.Contains(d.log(), pw) {
			t.Fatalf("password %q in qpcd's log", pw)
		}
	}
}
