package transport

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

// fakeClock is a settable clock for the inactivity rules.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// echo answers each stream with its own bytes; hold, when set, keeps the
// stream open until it is closed.
type echo struct{ hold chan struct{} }

func (e echo) ServeStream(ctx context.Context, c *Conn, s *quic.Stream) {
	b, err := io.ReadAll(s)
	if err != nil {
		s.CancelWrite(1)
		return
	}
	if e.hold != nil && string(b) == "hold" {
		select {
		case <-e.hold:
		case <-ctx.Done():
		}
	}
	_, _ = s.Write(b)
	_ = s.Close()
}

// counters records listener events.
type counters struct {
	mu     sync.Mutex
	counts map[string]int
}

func (c *counters) add(what string) {
	c.mu.Lock()
	if c.counts == nil {
		c.counts = map[string]int{}
	}
	c.counts[what]++
	c.mu.Unlock()
}

func (c *counters) get(what string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[what]
}

func (c *counters) events() Events {
	return Events{
		ConnAccepted: func() { c.add("accepted") },
		ConnRejected: func(r string) { c.add("rejected_" + r) },
		ConnReaped:   func(r string) { c.add("reaped_" + r) },
	}
}

// syncBuffer is a log sink safe for the listener's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range strings.Split(s.b.String(), "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

type testListener struct {
	*Listener
	pin string
}

func devCert(t *testing.T) *CertStore {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := EnsureDevCertificate(certFile, keyFile, time.Now()); err != nil {
		t.Fatal(err)
	}
	cs, err := NewCertStore(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func listen(t *testing.T, cfg ListenerConfig, h Handler) *testListener {
	t.Helper()
	cs := devCert(t)
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	cfg.TLS = cs.ServerTLSConfig()
	l, err := Listen(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = l.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Shutdown(ctx)
	})
	return &testListener{Listener: l, pin: cs.Fingerprint()}
}

func (l *testListener) dial(t *testing.T, from string) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := Dial(ctx, l.Addr().String(), DialOptions{PinSHA256: l.pin, ServerName: "localhost", LocalAddr: from})
	if err != nil {
		t.Fatalf("dial from %q: %v", from, err)
	}
	t.Cleanup(func() { _ = qc.CloseWithError(0, "") })
	return qc
}

// dialFlood dials as one connection of a flood over a limit: the server
// closes a refused connection right after its handshake, and on a busy
// machine that close can reach the client before Dial has returned. Such a
// dial returns nil (refused); any other failure fails the test.
func (l *testListener) dialFlood(t *testing.T, from string) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := Dial(ctx, l.Addr().String(), DialOptions{PinSHA256: l.pin, ServerName: "localhost", LocalAddr: from})
	if IsConnectionLimit(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("dial from %q: %v", from, err)
	}
	t.Cleanup(func() { _ = qc.CloseWithError(0, "") })
	return qc
}

func roundTrip(ctx context.Context, qc *quic.Conn, msg string) (string, error) {
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return "", err
	}
	if _, err := s.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = s.Close()
	b, err := io.ReadAll(s)
	return string(b), err
}

func closedWith(qc *quic.Conn) error {
	if qc.Context().Err() == nil {
		return nil
	}
	return context.Cause(qc.Context())
}

// One host opening silent connections (a handshake, then nothing) could
// take every connection slot: before the per-address cap and the reaping
// of silent connections, 40 of them filled a server capped at 40 and the
// next client, from another address, was refused. Now the host gets 32,
// the other client gets in, and the silent ones are closed once they have
// sent no request for the bound.
func TestSilentFloodFromOneHostLocksNobodyOut(t *testing.T) {
	clock := newFakeClock()
	var ev counters
	logs := &syncBuffer{}
	l := listen(t, ListenerConfig{
		MaxConnections: 40, // the per-address cap keeps its default, 32
		Now:            clock.Now,
		Events:         ev.events(),
		Logger:         slog.New(slog.NewTextHandler(logs, nil)),
	}, echo{})

	const flood = 45
	silent := make([]*quic.Conn, flood)
	refusedAtDial := 0
	for i := range silent {
		if silent[i] = l.dialFlood(t, "127.0.0.1:0"); silent[i] == nil {
			refusedAtDial++
		}
	}
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "every flood connection admitted or refused", func() bool {
		return ev.get("accepted")+ev.get("rejected_per_address")+ev.get("rejected_limit") == flood
	})
	if got := ev.get("accepted"); got != 32 {
		t.Fatalf("admitted %d connections from one address, want the per-address cap 32", got)
	}
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "the refusals to reach the clients", func() bool {
		n := refusedAtDial
		for _, qc := range silent {
			if qc != nil && qc.Context().Err() != nil {
				n++
			}
		}
		return n == flood-32
	})
	silent = slices.DeleteFunc(silent, func(qc *quic.Conn) bool { return qc == nil })
	for _, qc := range silent {
		if err := closedWith(qc); err != nil {
			if !IsConnectionLimit(err) || !strings.Contains(err.Error(), "too many connections from your address") {
				t.Fatalf("refused connection closed with %v, want the connection-limit code and a reason naming the address", err)
			}
		}
	}

	other := l.dial(t, "127.0.0.2:0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := roundTrip(ctx, other, "hello"); err != nil || got != "hello" {
		t.Fatalf("client from another address: %q, %v (locked out)", got, err)
	}

	clock.Advance(10*time.Second + time.Millisecond)
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "silent connections reaped", func() bool {
		return l.Connections() == 1
	})
	if got := ev.get("reaped_silent"); got != 32 {
		t.Fatalf("reaped %d silent connections, want 32", got)
	}
	for _, qc := range silent {
		select {
		case <-qc.Context().Done():
		case <-ctx.Done():
			t.Fatal("a silent connection was not closed on the client side")
		}
		if err := closedWith(qc); !IsConnectionLimit(err) && !IsIdleClose(err) {
			t.Fatalf("silent connection closed with %v, want the idle code", err)
		}
	}
	if other.Context().Err() != nil {
		t.Fatalf("the active client was closed too: %v", closedWith(other))
	}
	// The host may connect again once its silent connections are gone.
	again := l.dial(t, "127.0.0.1:0")
	if got, err := roundTrip(ctx, again, "back"); err != nil || got != "back" {
		t.Fatalf("reconnect after the reaping: %q, %v", got, err)
	}
	// Refusals and reaping were each logged once, not once per connection.
	if n := logs.lines("level=WARN"); n > 2 {
		t.Fatalf("%d WARN lines for one flood, want at most 2 (one per reason):\n%s", n, logs.b.String())
	}
}

// A refusal flood writes O(1) log lines: the first refusal at once, then
// one summary per interval carrying the count.
func TestRefusalLogIsRateLimited(t *testing.T) {
	clock := newFakeClock()
	var ev counters
	logs := &syncBuffer{}
	l := listen(t, ListenerConfig{
		MaxConnectionsPerAddr: 2,
		RefusalLogEvery:       time.Minute,
		FirstStreamTimeout:    time.Hour,
		Now:                   clock.Now,
		Events:                ev.events(),
		Logger:                slog.New(slog.NewTextHandler(logs, nil)),
	}, echo{})
	const flood = 60
	for range flood {
		l.dialFlood(t, "127.0.0.1:0")
	}
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "every refusal counted", func() bool {
		return ev.get("rejected_per_address") == flood-2
	})
	if n := logs.lines("level=WARN"); n != 1 {
		t.Fatalf("%d WARN lines for %d refusals within one interval, want 1:\n%s", n, flood-2, logs.b.String())
	}
	clock.Advance(time.Minute)
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "the summary line", func() bool {
		return logs.lines("(summary)") == 1
	})
	if n := logs.lines("count=57"); n != 1 {
		t.Fatalf("summary does not carry the %d refusals held back:\n%s", flood-3, logs.b.String())
	}
	if n := logs.lines("level=WARN"); n != 2 {
		t.Fatalf("%d WARN lines, want 2", n)
	}
}

// A connection that made requests and then only keeps alive (PINGs are
// not requests) is closed after the idle timeout; one with a request in
// flight is not, however long it takes.
func TestIdleConnectionsAreClosedDespiteKeepAlives(t *testing.T) {
	clock := newFakeClock()
	var ev counters
	hold := make(chan struct{})
	defer close(hold)
	l := listen(t, ListenerConfig{IdleTimeout: 30 * time.Second, RefusalLogEvery: 100 * time.Millisecond, Now: clock.Now, Events: ev.events()}, echo{hold: hold})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	idle, busy := l.dial(t, "127.0.0.1:0"), l.dial(t, "127.0.0.1:0")
	if got, err := roundTrip(ctx, idle, "x"); err != nil || got != "x" {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	held := make(chan error, 1)
	go func() { _, err := roundTrip(ctx, busy, "hold"); held <- err }()
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "the held stream to start", func() bool {
		return l.streams.count() == 1
	})

	clock.Advance(29 * time.Second)
	// Neither is reaped before the idle timeout: wait a few sweeps.
	for range 3 {
		before := ev.get("reaped_idle")
		swept := l.sweeps.Load()
		testutil.WaitFor(t, 5*time.Second, time.Millisecond, "a sweep", func() bool { return l.sweeps.Load() > swept })
		if ev.get("reaped_idle") != before {
			t.Fatal("a connection was reaped before the idle timeout")
		}
	}
	clock.Advance(time.Second)
	select {
	case <-idle.Context().Done():
	case <-ctx.Done():
		t.Fatal("idle connection not closed after the idle timeout")
	}
	if err := closedWith(idle); !IsIdleClose(err) {
		t.Fatalf("idle connection closed with %v, want the idle code", err)
	}
	if busy.Context().Err() != nil {
		t.Fatalf("connection with a request in flight was closed: %v", closedWith(busy))
	}
	hold <- struct{}{}
	if err := <-held; err != nil {
		t.Fatalf("held request: %v", err)
	}
}

// After a crash (the process gone without closing its connections) and a
// restart on the same address with the same stateless reset secret, a
// client's next request fails at once with a stateless reset, instead of
// waiting for its idle timeout (60 s by default) as it did when qpcd had
// no reset key.
func TestRestartedListenerResetsOldConnections(t *testing.T) {
	key, err := LoadStatelessResetKey(filepath.Join(t.TempDir(), ResetSecretFile))
	if err != nil {
		t.Fatal(err)
	}
	cs := devCert(t)
	start := func(addr string) *Listener {
		l, err := Listen(ListenerConfig{Addr: addr, TLS: cs.ServerTLSConfig(), StatelessResetKey: key}, echo{})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = l.Serve() }()
		return l
	}
	first := start("127.0.0.1:0")
	addr := first.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	qc, err := Dial(ctx, addr, DialOptions{PinSHA256: cs.Fingerprint(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	if got, err := roundTrip(ctx, qc, "before"); err != nil || got != "before" {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	// Crash: the socket goes away and no CONNECTION_CLOSE is sent.
	_ = first.tr.Close()
	_ = first.udp.Close()
	second := start(addr)
	defer second.Shutdown(ctx)

	began := time.Now()
	_, err = roundTrip(ctx, qc, "after")
	took := time.Since(began)
	var reset *quic.StatelessResetError
	if !errors.As(err, &reset) {
		t.Fatalf("request on the old connection: %v after %v, want a stateless reset", err, took)
	}
	if took > 5*time.Second {
		t.Fatalf("stateless reset took %v, want well under the 60s idle timeout", took)
	}
	t.Logf("old connection reset %v after the first request to the restarted listener", took.Round(time.Millisecond))
}

// The secret is created 0600 on first use, reused afterwards, refused
// when others can read it, and the key is not the secret itself.
func TestStatelessResetSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), ResetSecretFile)
	k1, err := LoadStatelessResetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %o, want 600", fi.Mode().Perm())
	}
	k2, err := LoadStatelessResetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if *k1 != *k2 {
		t.Fatal("a second start derived another key: resets would not match the first start's connections")
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), hex.EncodeToString(k1[:])) {
		t.Fatal("the key is stored as is; it should be derived")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadStatelessResetKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable secret: %v, want a refusal naming chmod 600", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadStatelessResetKey(path); err == nil || !strings.Contains(err.Error(), "64 hex characters") {
		t.Fatalf("garbage secret: %v", err)
	}
}
