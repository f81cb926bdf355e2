package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
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
	if !s.Ready || s.Readiness != "ready" || s.SchemaVersion == 0 || s.DBKeyID == "" || s.TLSFingerprint != ts.CertFingerprint() || s.Counts.Accounts != 0 {
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
