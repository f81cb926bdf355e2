package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// adminTestServer starts a server with its admin socket in a short temporary directory (Unix
// socket paths are limited to 108 bytes; t.TempDir() can be long).
func adminTestServer(t *testing.T) (*testServer, *admin.Client) {
	t.Helper()
	cfg := testConfig(t)
	dir, err := os.MkdirTemp("", "qa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.Admin.Socket = filepath.Join(dir, "admin.sock")
	ts := startServer(t, cfg)
	return ts, admin.NewClient(cfg.Admin.Socket)
}

func TestAdminSocketAndStatus(t *testing.T) {
	ts, c := adminTestServer(t)
	st, err := os.Stat(ts.cfg.Admin.Socket)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", st.Mode(), err)
	}
	s, err := c.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Ready || s.Readiness != "ready" || s.SchemaVersion == 0 || (s.DBKeyID == "") != storetest.Postgres() || s.TLSFingerprint != ts.CertFingerprint() || s.Counts.Accounts != 0 {
		t.Fatalf("status %+v", s)
	}
	ts.newDevice(t, "carol")
	s, err = c.Status(ctxT(t))
	if err != nil || s.Counts.Accounts != 1 || s.Counts.ActiveDevices != 1 || s.Connections < 1 {
		t.Fatalf("status after a registration: %+v %v", s, err)
	}
}

// TestSecondServerRefusedByLock: the data-directory lock keeps a second
// qpcd (or a restore) off files a running qpcd owns.
func TestSecondServerRefusedByLock(t *testing.T) {
	ts, _ := adminTestServer(t)
	cfg := ts.cfg
	cfg.Admin.Socket = filepath.Join(filepath.Dir(ts.cfg.Admin.Socket), "other.sock")
	_, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if !errors.Is(err, admin.ErrLocked) {
		t.Fatalf("second server on the same data dir: %v", err)
	}
	if _, err := os.Stat(cfg.Admin.Socket); !os.IsNotExist(err) {
		t.Fatalf("refused server left a socket: %v", err)
	}
}

// TestAdminDrainStopsRun: the admin drain ends Run as SIGTERM does, and the
// socket goes away.
func TestAdminDrainStopsRun(t *testing.T) {
	ts, c := adminTestServer(t)
	res, err := c.Drain(ctxT(t))
	if err != nil || res.AlreadyGoing {
		t.Fatalf("drain: %+v %v", res, err)
	}
	select {
	case err := <-ts.done:
		if err != nil {
			t.Fatalf("Run after drain: %v", err)
		}
		ts.done <- nil // for the cleanup's stop
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after drain")
	}
	if !c.Gone(ctxT(t)) {
		t.Fatal("admin socket still answers")
	}
	// The lock is released: a new server starts on the same data dir.
	cfg := ts.cfg
	srv, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("restart after drain: %v", err)
	}
	srv.closeAll()
}

// TestAdminOperationsConcurrently runs backups, key rotations, TLS reloads
// and status calls at the same time as registrations (run it with -race).
func TestAdminOperationsConcurrently(t *testing.T) {
	storetest.SQLCipherOnly(t, "backup and database-key rotation of the SQLCipher file")
	ts, c := adminTestServer(t)
	keyFile := filepath.Join(ts.cfg.DataDir, "db.key")
	oldKey, err := config.ReadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var registered atomic.Int64
	cl := ts.dial(t)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pub, _, _ := ed25519.GenerateKey(rand.Reader)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := cl.Call(ctx, MethodRegister, "", &qpcv1.RegisterRequest{AccountName: fmt.Sprintf("con%d", i), SignatureKey: pub}, &qpcv1.RegisterResponse{})
			cancel()
			if err == nil {
				registered.Add(1)
			}
		}
	}()
	dir := t.TempDir()
	errs := make(chan error, 16)
	var ops sync.WaitGroup
	for i := range 3 {
		ops.Add(1)
		go func() {
			defer ops.Done()
			if _, err := c.Backup(ctxT(t), filepath.Join(dir, fmt.Sprintf("b%d.qpcbak", i)), false, nil); err != nil {
				errs <- fmt.Errorf("backup %d: %w", i, err)
			}
		}()
	}
	ops.Add(3)
	go func() {
		defer ops.Done()
		if _, err := c.RotateDBKey(ctxT(t)); err != nil {
			errs <- fmt.Errorf("rotate db-key: %w", err)
		}
	}()
	go func() {
		defer ops.Done()
		if _, err := c.RotateTLS(ctxT(t)); err != nil {
			errs <- fmt.Errorf("rotate tls: %w", err)
		}
	}()
	go func() {
		defer ops.Done()
		for range 10 {
			if _, err := c.Status(ctxT(t)); err != nil {
				errs <- fmt.Errorf("status: %w", err)
				return
			}
		}
	}()
	ops.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	newKey, err := config.ReadKeyFile(keyFile)
	if err != nil || newKey.Equal(oldKey) {
		t.Fatalf("key file after rotation: %v", err)
	}
	// Each backup opens under the key that was current when it was taken.
	for i := range 3 {
		f := filepath.Join(dir, fmt.Sprintf("b%d.qpcbak", i))
		_, err1 := admin.VerifyBackup(ctxT(t), f, oldKey, "")
		_, err2 := admin.VerifyBackup(ctxT(t), f, newKey, "")
		if err1 != nil && err2 != nil {
			t.Errorf("backup %d verifies under neither key: %v / %v", i, err1, err2)
		}
	}
	st, err := c.Status(ctxT(t))
	if err != nil || st.Counts.Accounts != registered.Load() || st.LastBackup == nil {
		t.Fatalf("status %+v (registered %d): %v", st, registered.Load(), err)
	}
}

// TestInterruptedKeyRotationIsFinished: a crash between the database swap
// and the key-file rename leaves db.key.new; the next start finishes the
// rotation (or drops the unused new key).
func TestInterruptedKeyRotationIsFinished(t *testing.T) {
	storetest.SQLCipherOnly(t, "SQLCipher database-key rotation")
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	if err := ts.stop(t); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(cfg.DataDir, "db.key")
	oldKey, err := config.ReadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "qpcd.db")
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	newKey := secret.New(raw)

	// Case 1: rotation never swapped (db.key.new exists, database under the old key).
	if err := writeKeyFile(keyFile+".new", newKey); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	if err := ts.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(keyFile + ".new"); !os.IsNotExist(err) {
		t.Fatalf("unused new key kept: %v", err)
	}

	// Case 2: database swapped to the new key, key file not yet renamed.
	tmp := dbPath + ".x"
	if _, err := store.ExportFile(context.Background(), dbPath, oldKey, tmp, newKey); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dbPath); err != nil {
		t.Fatal(err)
	}
	if err := writeKeyFile(keyFile+".new", newKey); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	got, err := config.ReadKeyFile(keyFile)
	if err != nil || !got.Equal(newKey) {
		t.Fatalf("key file not finished: %v", err)
	}
	if _, err := os.Stat(keyFile + ".new"); !os.IsNotExist(err) {
		t.Fatalf("db.key.new left: %v", err)
	}
}
