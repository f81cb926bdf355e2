// Package servertest runs a real qpcd (server.New + Run) on loopback for the tests of other packages.
package servertest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// Server is a running qpcd. Stop and Start restart it on the same data
// directory and (after the first start) the same UDP port, so clients that
// remember the address and pin reconnect to it.
type Server struct {
	Config config.Config
	// Now is the server's clock (nil: time.Now); set it before Start to
	// test retention and expiry without sleeping.
	Now func() time.Time
	// LieInResponse is server.Options.LieInResponse: set it before Start
	// to make this a malicious server (tests of what clients detect).
	LieInResponse func(ctx context.Context, call *server.Call, method string, resp proto.Message)
	// Tracing is server.Options.Tracing: set it before Start to record
	// the server's spans (tests of tracing). Stop shuts it down, so a
	// restarted server needs a new one.
	Tracing *tracing.Provider
	srv     *server.Server
	cancel  context.CancelFunc
	done    chan error
	addr    string
	pin     string
}

// Config is qpcd's default configuration with a fresh data directory and
// OS-chosen loopback ports.
func Config(t testing.TB) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	return cfg
}

// Start starts a server with cfg (usually Config(t), adjusted) and stops
// it when the test ends.
func Start(t testing.TB, cfg config.Config) *Server {
	t.Helper()
	return StartWith(t, cfg, nil)
}

// StartWith is Start on the clock now (nil: time.Now).
func StartWith(t testing.TB, cfg config.Config, now func() time.Time) *Server {
	t.Helper()
	s := &Server{Config: cfg, Now: now}
	s.Start(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// StartLying is Start with a LieInResponse hook: the real server, except
// that lie may change any response before it is sent.
func StartLying(t testing.TB, cfg config.Config, lie func(ctx context.Context, call *server.Call, method string, resp proto.Message)) *Server {
	t.Helper()
	s := &Server{Config: cfg, LieInResponse: lie}
	s.Start(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// Start (re)starts a stopped server.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if s.srv != nil {
		t.Fatal("servertest: Start on a running server")
	}
	cfg := s.Config
	if s.addr != "" {
		cfg.Listen = s.addr
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("servertest: config invalid: %v", err)
	}
	srv, err := server.New(context.Background(), server.Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: s.Now,
		LieInResponse: s.LieInResponse, Tracing: s.Tracing})
	if err != nil {
		t.Fatalf("servertest: server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.srv, s.cancel, s.done = srv, cancel, make(chan error, 1)
	go func() { s.done <- srv.Run(ctx) }()
	s.addr, s.pin = srv.QUICAddr(), srv.CertFingerprint()
	deadline := time.Now().Add(15 * time.Second)
	for !ready(srv.OpsAddr()) {
		if time.Now().After(deadline) {
			t.Fatal("servertest: server not ready within 15s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop drains and stops the server (no-op when stopped).
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.srv == nil {
		return
	}
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("servertest: server did not stop within 30s")
	}
	s.srv = nil
}

// Addr is the server's QUIC address (host:port).
func (s *Server) Addr() string { return s.addr }

// Pin is the SHA-256 fingerprint of the server's certificate.
func (s *Server) Pin() string { return s.pin }

// Server is the running server (nil when stopped).
func (s *Server) Server() *server.Server { return s.srv }

func ready(ops string) bool {
	resp, err := http.Get("http://" + ops + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
