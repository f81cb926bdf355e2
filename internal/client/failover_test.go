package client

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// fakeNow is a clock the test sets.
type fakeNow struct{ t time.Time }

func (f *fakeNow) now() time.Time { return f.t }

// The failover rules on an injected clock and jitter: the client stays on
// a node until it fails, moves to the next one that is not cooling down,
// and a failed node's cool-down grows (capped) with its consecutive
// failures and is forgotten once it answers.
func TestNodeListFailoverRules(t *testing.T) {
	clock := &fakeNow{t: time.Unix(1_700_000_000, 0)}
	top := func(n int64) int64 { return n - 1 } // the top of every jitter range
	b := Backoff{Base: 100 * time.Millisecond, Max: 2 * time.Second, Rand: top, Now: clock.now}
	l := newNodeList([]string{"a:1", "b:1", "c:1"}, b)
	cur := func() string { _, a := l.current(); return a }
	if cur() != "a:1" {
		t.Fatalf("starts on %s", cur())
	}
	l.ok(0)
	if l.failed(1) || cur() != "a:1" {
		t.Fatalf("a failure of a node not in use moved the client to %s", cur())
	}
	// a fails: b is cooling down (it just failed), so c.
	if !l.failed(0) || cur() != "c:1" {
		t.Fatalf("after a failed: %s", cur())
	}
	// c fails too: all three cool down until the same instant, so the
	// first after c in list order is used: a.
	if !l.failed(2) || cur() != "a:1" {
		t.Fatalf("after c failed: %s", cur())
	}
	// Cool-downs grow: a's second consecutive failure keeps it out 200ms,
	// its third 400ms, ... capped at Max.
	want := []time.Duration{200, 400, 800, 1600, 2000, 2000}
	for i, w := range want {
		l.failed(0)
		if got := l.until[0].Sub(clock.t); got != w*time.Millisecond {
			t.Fatalf("failure %d of a: cool-down %s, want %s", i+2, got, w*time.Millisecond)
		}
	}
	// Once cool-downs end, the next failure moves to the next node in order.
	clock.t = clock.t.Add(3 * time.Second)
	l.cur = 0
	if !l.failed(0) || cur() != "b:1" {
		t.Fatalf("after the cool-downs ended: %s", cur())
	}
	// An answer clears a node's record: its next failure is a first one.
	l.ok(0)
	if l.fails[0] != 0 || l.coolingDown(0) {
		t.Fatalf("ok left a cooling down: %d failures until %s", l.fails[0], l.until[0])
	}
	// A single node never moves.
	one := newNodeList([]string{"a:1"}, b)
	if one.failed(0) {
		t.Fatal("a single node moved")
	}
	// A remembered node is used; an unknown one is ignored.
	if !l.use("c:1") || cur() != "c:1" || l.use("d:1") || cur() != "c:1" {
		t.Fatalf("use: %s", cur())
	}
}

func TestServerListParsing(t *testing.T) {
	tr := ServerTrust{Addr: " a:1, b:2,,", PinSHA256: "x, y"}
	if got := tr.Addrs(); !slices.Equal(got, []string{"a:1", "b:2"}) {
		t.Fatalf("addrs %q", got)
	}
	if got := tr.Pins(); !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("pins %q", got)
	}
	for _, bad := range []ServerTrust{{Addr: ""}, {Addr: "a:1,a:1"}, {Addr: "a:1,nohost"}, {Addr: "a:1", PinSHA256: "abc"}} {
		if _, err := NewConn(bad, Backoff{}, nil); err == nil {
			t.Errorf("NewConn(%+v) accepted", bad)
		}
	}
}

// Failover between two real qpcd nodes (each its own certificate, both
// pinned): calls stick to the first node; when it drains, the next call
// moves to the second; when the first comes back, the client stays where
// it is (it moves only on failure). A client pinning only the first
// node's certificate refuses the second with a TrustError.
func TestConnFailsOverAndSticks(t *testing.T) {
	a := servertest.Start(t, servertest.Config(t))
	b := servertest.Start(t, servertest.Config(t))
	trust := ServerTrust{Addr: a.Addr() + "," + b.Addr(), PinSHA256: a.Pin() + "," + b.Pin()}
	var moves []string
	c, err := NewConn(trust, fastBackoff, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.OnMove(func(addr string) { moves = append(moves, addr) })
	ctx := ctxT(t)
	ping := func() error {
		var resp qpcv1.PingResponse
		return c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "x"}, &resp)
	}
	for range 3 {
		if err := ping(); err != nil {
			t.Fatal(err)
		}
	}
	if c.Current() != a.Addr() || len(moves) != 0 {
		t.Fatalf("on %s after three pings, moves %v", c.Current(), moves)
	}
	a.Stop(t)
	start := time.Now()
	if err := ping(); err != nil {
		t.Fatalf("ping with the first node stopped: %v", err)
	}
	t.Logf("failed over to the second node in %s", time.Since(start).Round(time.Millisecond))
	if c.Current() != b.Addr() || !slices.Equal(moves, []string{b.Addr()}) {
		t.Fatalf("on %s, moves %v", c.Current(), moves)
	}
	a.Start(t)
	for range 3 {
		if err := ping(); err != nil {
			t.Fatal(err)
		}
	}
	if c.Current() != b.Addr() {
		t.Fatalf("moved back to %s without a failure", c.Current())
	}

	// Only the first node's pin: the second node is not trusted.
	one, err := NewConn(ServerTrust{Addr: b.Addr() + "," + a.Addr(), PinSHA256: a.Pin()}, Backoff{MaxAttempts: 1, DialTimeout: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	// b is tried first, refused, and a answers.
	var resp qpcv1.PingResponse
	if err := one.Call(ctx, "Ping", "", &qpcv1.PingRequest{}, &resp); err != nil || one.Current() != a.Addr() {
		t.Fatalf("with b untrusted: on %s, %v", one.Current(), err)
	}
	a.Stop(t)
	err = one.Call(ctx, "Ping", "", &qpcv1.PingRequest{}, &resp)
	var te *TrustError
	if !errors.As(err, &te) || te.Addr != b.Addr() {
		t.Fatalf("with a down and b untrusted: %v", err)
	}
	// The advice keeps every node and the pin in force.
	if want := "qpc init --server " + b.Addr() + "," + a.Addr() + " --pin " + a.Pin() + "," + b.Pin(); !strings.Contains(err.Error(), want) {
		t.Fatalf("advice %q lacks %q", err, want)
	}
}

// A home made before several nodes existed (schema 0006: one address, one
// pin, no current_node) opens, migrates and works as a list of one.
func TestHomeFromBeforeClustersKeepsWorking(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c, o := newTestClient(t, srv, testKey(t))
	ctx := ctxT(t)
	// Turn the home back into a 0006 one.
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{
			`CREATE TABLE settings_0006 (id INTEGER PRIMARY KEY CHECK (id = 1), server_addr TEXT NOT NULL,
				pin_sha256 TEXT NOT NULL DEFAULT '', ca_file TEXT NOT NULL DEFAULT '', server_name TEXT NOT NULL DEFAULT '',
				kp_stock INTEGER NOT NULL DEFAULT 10)`,
			`INSERT INTO settings_0006 SELECT id, server_addr, pin_sha256, ca_file, server_name, kp_stock FROM settings`,
			`DROP TABLE settings`,
			`ALTER TABLE settings_0006 RENAME TO settings`,
			// Steps after 0006 go too (0009 creates its tables only if
			// missing), so the home is a 0006 one.
			`DROP TABLE keylog_pin`, `DROP TABLE keylog_heads`, `DROP TABLE keylog_gossip`, `DROP TABLE keylog_alarms`,
			`DELETE FROM schema_migrations WHERE version >= 7`,
		} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, o)
	if err != nil {
		t.Fatalf("open a 0006 home: %v", err)
	}
	defer c.Close()
	var last string
	if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT current_node FROM settings WHERE id = 1`).Scan(&last)
	}); err != nil || last != "" {
		t.Fatalf("migration 0007 on the old home: current_node %q, %v", last, err)
	}
	nodes, cur := c.Servers()
	if !slices.Equal(nodes, []string{srv.Addr()}) || cur != srv.Addr() {
		t.Fatalf("servers %v, current %s", nodes, cur)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// When every node fails, the waits between attempts grow as with one node
// (a failover does not turn an outage of them all into a tight loop).
func TestAllNodesDownBacksOff(t *testing.T) {
	var addrs []string
	for range 3 {
		addrs = append(addrs, freeUDPAddr(t))
	}
	var waits []time.Duration
	b := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second, MaxAttempts: 4, DialTimeout: 50 * time.Millisecond,
		Rand:  func(n int64) int64 { return n - 1 },
		Sleep: func(ctx context.Context, d time.Duration) error { waits = append(waits, d); return nil }}
	c, err := NewConn(ServerTrust{Addr: strings.Join(addrs, ","), PinSHA256: strings.Repeat("ab", 32)}, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	var resp qpcv1.PingResponse
	err = c.Call(ctxT(t), "Ping", "", &qpcv1.PingRequest{}, &resp)
	if !Retryable(err) {
		t.Fatalf("all nodes down: %v", err)
	}
	if want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}; !slices.Equal(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
}

// freeUDPAddr is a loopback UDP address nothing listens on.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}
