package server

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
)

// testServer is a real qpcd (server.New + Run) on loopback ports chosen by the OS.
type testServer struct {
	*Server
	cfg    config.Config
	cancel context.CancelFunc
	done   chan error
	log    *lockedBuffer // what the server logged (info and above)
}

// logs is what the server has logged so far.
func (ts *testServer) logs() string { return ts.log.String() }

func testConfig(t *testing.T) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	if storetest.Postgres() {
		cfg.Store.Backend = config.BackendPostgres
		cfg.Postgres.DSN = secret.New([]byte(pgtest.NewDatabase(t)))
	}
	return cfg
}

func startServer(t *testing.T, cfg config.Config) *testServer {
	t.Helper()
	return startServerWith(t, cfg, nil)
}

// startServerWith starts a server on the clock now (nil: time.Now); tests of
// time-based behaviour pass a fake clock and advance it instead of sleeping.
func startServerWith(t *testing.T, cfg config.Config, now func() time.Time) *testServer {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	logBuf := &lockedBuffer{}
	srv, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(logBuf, nil)), Now: now})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: srv, cfg: cfg, cancel: cancel, done: make(chan error, 1), log: logBuf}
	go func() { ts.done <- srv.Run(ctx) }()
	t.Cleanup(func() { ts.stop(t) })
	waitFor(t, 10*time.Second, "server ready", func() bool { return ts.httpStatus("/readyz") == http.StatusOK })
	return ts
}

// stop drains the server and returns Run's error (idempotent).
func (ts *testServer) stop(t *testing.T) error {
	t.Helper()
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok {
			close(ts.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop within 30s")
		return nil
	}
}

func (ts *testServer) httpStatus(path string) int {
	resp, err := http.Get("http://" + ts.OpsAddr() + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (ts *testServer) dial(t *testing.T) *rpcclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rpcclient.Dial(ctx, ts.QUICAddr(), transport.DialOptions{PinSHA256: ts.CertFingerprint()})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitFor polls cond until it holds or the deadline passes: tests wait on
// conditions, never on fixed sleeps.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, within, 5*time.Millisecond, what, cond)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
