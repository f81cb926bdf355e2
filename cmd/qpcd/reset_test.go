package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// After qpcd is killed (SIGKILL: no CONNECTION_CLOSE goes out) and started
// again on the same address and data directory, a client that was
// connected learns at its next call that its connection is gone: the new
// process answers the old connection's packets with a stateless reset,
// derived from the secret kept in the data directory. Before, qpcd had no
// reset key and the client waited for its idle timeout (qpc watch showed
// a message 73.8 s after the restarted server was ready).
func TestRestartAfterKillResetsConnectedClients(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDaemon(t, dir)
	addr := strings.TrimSuffix(fmt.Sprint(d.ready["quic"]), "/udp")
	pin := fmt.Sprint(d.ready["cert_sha256"])
	secretFile := filepath.Join(dir, transport.ResetSecretFile)
	st, err := os.Stat(secretFile)
	if err != nil {
		t.Fatalf("no stateless reset secret in the data dir: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %o, want 600", secretFile, st.Mode().Perm())
	}
	secret1, _ := os.ReadFile(secretFile)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := rpcclient.Dial(ctx, addr, transport.DialOptions{PinSHA256: pin})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pong qpcv1.PingResponse
	if err := c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "before"}, &pong); err != nil {
		t.Fatalf("Ping: %v", err)
	}

	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = d.cmd.Wait()
	d2 := startDaemon(t, dir, "--listen", addr)
	if got := strings.TrimSuffix(fmt.Sprint(d2.ready["quic"]), "/udp"); got != addr {
		t.Fatalf("restarted on %s, want %s", got, addr)
	}
	if secret2, _ := os.ReadFile(secretFile); string(secret2) != string(secret1) {
		t.Fatal("the stateless reset secret changed across the restart")
	}

	began := time.Now()
	err = c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "after"}, &pong)
	took := time.Since(began)
	var reset *quic.StatelessResetError
	if !errors.As(err, &reset) || !rpcclient.IsRetryable(err) {
		t.Fatalf("call on the old connection: %v after %v, want a retryable stateless reset", err, took)
	}
	if took > 5*time.Second {
		t.Fatalf("the old connection failed after %v, want well under the 60s idle timeout", took)
	}
	t.Logf("old connection reset %v after the call to the restarted qpcd", took.Round(time.Millisecond))

	c2, err := rpcclient.Dial(ctx, addr, transport.DialOptions{PinSHA256: pin})
	if err != nil {
		t.Fatalf("redial: %v", err)
	}
	defer c2.Close()
	if err := c2.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "again"}, &pong); err != nil || pong.GetEcho() != "again" {
		t.Fatalf("Ping after redial: %q, %v", pong.GetEcho(), err)
	}
	if code := d2.stop(t); code != 0 {
		t.Fatalf("SIGTERM exit code %d", code)
	}
}
