package client

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/testutil"
)

// A long poll on a connection whose server stopped answering used to wait
// for QUIC's idle timeout (60 s; qpc watch showed messages 74 s late after
// a crash). Now Sync fails at the poll's deadline with a retryable error,
// drops the dead connection, and the next Sync redials and works.
func TestSyncOnADeadConnectionFailsAtItsDeadlineAndRedials(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	proxy := testutil.StartUDPProxy(t, srv.Addr())
	o := Options{
		Home: filepath.Join(t.TempDir(), "home"), Keys: testKey(t),
		Backoff:       Backoff{Base: 5 * time.Millisecond, Max: 50 * time.Millisecond, MaxAttempts: 1},
		CallDeadlines: rpcclient.Deadlines{Call: time.Second, LongPollMargin: time.Second},
	}
	ctx := ctxT(t)
	c, err := Init(ctx, o, ServerTrust{Addr: proxy.Addr(), PinSHA256: srv.Pin()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Register(ctx, RegisterParams{AccountName: "deadline"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sync(ctx, 0); err != nil {
		t.Fatalf("Sync before the outage: %v", err)
	}

	proxy.Blackhole()
	began := time.Now()
	_, err = c.Sync(ctx, 2*time.Second)
	took := time.Since(began)
	if err == nil || !Retryable(err) || !errors.Is(err, rpcclient.ErrCallDeadline) {
		t.Fatalf("long poll on a dead connection: %v after %v, want a retryable call-deadline error", err, took)
	}
	if took < 3*time.Second || took > 8*time.Second {
		t.Fatalf("long poll failed after %v, want at its deadline (2s wait + 1s margin)", took)
	}

	proxy.Resume()
	if _, err := c.Sync(ctx, 0); err != nil {
		t.Fatalf("Sync after the path came back: %v (the dead connection was kept?)", err)
	}
}
