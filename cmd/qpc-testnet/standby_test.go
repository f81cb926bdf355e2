package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPostgresWithStandby runs `qpc-testnet postgres --standby sync` (what
// `make testnet STANDBY=sync` starts) as its own process: it must write a
// DSN naming both hosts that connects to the read-write primary, run the
// second cluster as a standby in recovery that replays what the primary
// commits, and on SIGTERM stop both servers and remove both directories.
func TestPostgresWithStandby(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "qpc-testnet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building qpc-testnet: %v\n%s", err, out)
	}
	dir := t.TempDir()
	dsnFile, dirFile := filepath.Join(dir, "pg.dsn"), filepath.Join(dir, "pg.dir")
	cmd := exec.Command(bin, "postgres", "--standby", "sync", "--dsn-file", dsnFile, "--dir-file", dirFile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-exited
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if b, err := os.ReadFile(dsnFile); err == nil && len(b) > 0 {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("qpc-testnet postgres exited before it was ready: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no DSN after 2 minutes:\n%s", stderr.String())
		}
	}
	dsn := strings.TrimSpace(readFile(t, dsnFile))
	dirs := strings.Fields(readFile(t, dirFile))
	if len(dirs) != 2 {
		t.Fatalf("dir file names %d directories, want the primary's and the standby's: %q", len(dirs), dirs)
	}
	if !strings.Contains(dsn, "target_session_attrs=read-write") || strings.Count(strings.SplitN(strings.SplitN(dsn, "@", 2)[1], "/", 2)[0], ",") != 1 {
		t.Fatalf("DSN does not name two hosts with target_session_attrs=read-write: %s", dsn)
	}
	if _, err := os.Stat(filepath.Join(dirs[1], "data", "standby.signal")); err != nil {
		t.Fatalf("the second cluster is not a standby: %v", err)
	}
	if !strings.Contains(stderr.String(), "synchronous standby") {
		t.Errorf("start-up line does not say the standby is synchronous: %s", stderr.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect with the testnet DSN: %v", err)
	}
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("the DSN reached a server in recovery (%v): want the primary", err)
	}
	// Synchronous: a commit returns once the standby has it, so a standby
	// reached directly sees the row once it has replayed it.
	if _, err := conn.Exec(ctx, "CREATE TABLE drill (v int); INSERT INTO drill VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	standbyDSN := strings.Replace(dsn, "target_session_attrs=read-write", "target_session_attrs=standby", 1)
	// A synchronous commit waits for the standby to flush its WAL, not to
	// replay it: until the standby has replayed the creation of qpcd's
	// database, connecting to it fails with "database does not exist".
	var sconn *pgx.Conn
	for {
		sconn, err = pgx.Connect(ctx, standbyDSN)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the standby's replay, bounded by ctx
	}
	if err != nil {
		t.Fatalf("connect to the standby: %v", err)
	}
	var v int
	for {
		err = sconn.QueryRow(ctx, "SELECT v FROM drill").Scan(&v)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the standby's replay, bounded by ctx
	}
	sconn.Close(ctx)
	if err != nil || v != 42 {
		t.Fatalf("the standby never showed the primary's row: %v (v=%d)", err, v)
	}

	stopped = true
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("qpc-testnet postgres after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("qpc-testnet postgres did not stop within a minute of SIGTERM")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after SIGTERM (%v)", d, err)
		}
	}
}
