package chaos

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/chaos/faultproxy"
	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
)

// requirePostgres skips a cluster scenario when the run excludes the
// PostgreSQL backend (QPC_TEST_BACKENDS=sqlcipher): several nodes need a
// shared database.
func requirePostgres(t *testing.T) {
	t.Helper()
	bs, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(bs, store.BackendPostgres) {
		t.Skip("a cluster shares a PostgreSQL database; QPC_TEST_BACKENDS excludes it")
	}
}

// startCluster starts n qpcd nodes (real binaries, each its own data
// directory, certificate and ports) on one new PostgreSQL database.
func startCluster(t *testing.T, n int, env ...string) []*node {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	env = append([]string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN=" + dsn}, env...)
	var nodes []*node
	for range n {
		nd := newNode(t, "", env...)
		nd.start()
		nodes = append(nodes, nd)
	}
	return nodes
}

// clusterClient is an SDK client given every node (its list starting at
// node first) and every node's pin, registered as name.
func clusterClient(t *testing.T, nodes []*node, first int, name string, idle time.Duration) *client.Client {
	t.Helper()
	var addrs, pins []string
	for k := range nodes {
		nd := nodes[(first+k)%len(nodes)]
		addrs = append(addrs, nd.listen)
		pins = append(pins, nd.pin)
	}
	ctx, cancel := callCtx(2 * time.Minute)
	defer cancel()
	c, err := client.Init(ctx, client.Options{Home: filepath.Join(t.TempDir(), name), IdleTimeout: idle},
		client.ServerTrust{Addr: strings.Join(addrs, ","), PinSHA256: strings.Join(pins, ",")}, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Register(ctx, client.RegisterParams{AccountName: name}); err != nil {
		t.Fatal(err)
	}
	return c
}

// chatRoom puts every client in one group and returns each client's local
// name for it (a joined member knows the group by the name the first
// message gives it).
func chatRoom(t *testing.T, ctx context.Context, cs []*client.Client, names []string) []string {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cs[0].CreateGroup(ctx, "room"))
	must(cs[0].AddMembers(ctx, "room", names[1:]))
	for _, c := range cs[1:] {
		_, err := acceptAll(ctx, c)
		must(err)
	}
	_, err := cs[0].Send(ctx, "room", "hello", "")
	must(err)
	rooms := make([]string, len(cs))
	for i, c := range cs {
		waitFor(t, 30*time.Second, names[i]+" in the room", func() bool {
			_, err := c.Sync(ctx, 0)
			must(err)
			gs, err := c.Groups(ctx)
			must(err)
			for _, g := range gs {
				if g.Kind == "group" && g.Status == "active" {
					rooms[i] = g.Name
					return true
				}
			}
			return false
		})
	}
	return rooms
}

// chatter sends and long-polls through one client until stopped.
type chatter struct {
	c    *client.Client
	name string
	room string

	mu      sync.Mutex
	acked   []string    // message ids whose Send returned success
	ackedAt []time.Time // when each Send returned
	queued  int         // Sends that left the message queued (an error, not lost)
	syncErr int
}

func (ch *chatter) run(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() { // sender
		defer wg.Done()
		for k := 0; ctx.Err() == nil; k++ {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			id, err := ch.c.Send(sctx, ch.room, fmt.Sprintf("%s-%d", ch.name, k), "")
			cancel()
			if ctx.Err() != nil && err != nil {
				return // the run ended under it; the outbox keeps it (flushed below)
			}
			ch.mu.Lock()
			if err == nil {
				ch.acked = append(ch.acked, id)
				ch.ackedAt = append(ch.ackedAt, time.Now())
			} else if id != "" {
				ch.queued++
			}
			ch.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	go func() { // receiver: a long poll, as qpc watch runs it
		defer wg.Done()
		for ctx.Err() == nil {
			if _, err := ch.c.Sync(ctx, 2*time.Second); err != nil && ctx.Err() == nil {
				ch.mu.Lock()
				ch.syncErr++
				ch.mu.Unlock()
			}
		}
	}()
}

// firstAckAfter is how long after t the client's first acknowledged send
// completed (-1: none).
func (ch *chatter) firstAckAfter(t time.Time) time.Duration {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	for _, at := range ch.ackedAt {
		if at.After(t) {
			return at.Sub(t)
		}
	}
	return -1
}

// checkExactlyOnce flushes every outbox, waits until every client holds
// every message any client delivered, and fails on a message acknowledged
// but missing or held twice. It returns how many messages were delivered.
func checkExactlyOnce(t *testing.T, ctx context.Context, chs []*chatter) int {
	t.Helper()
	delivered := map[string]bool{}
	waitFor(t, 2*time.Minute, "every outbox delivered", func() bool {
		done := true
		for _, ch := range chs {
			fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, _ = ch.c.Flush(fctx)
			cancel()
			ob, err := ch.c.Outbox(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ob {
				switch e.Status {
				case "sent":
				case "failed":
					t.Fatalf("%s: outbox entry %s failed for good: %s", ch.name, e.MessageID, e.LastError)
				default:
					done = false
				}
			}
		}
		return done
	})
	for _, ch := range chs {
		h, err := ch.c.History(ctx, ch.room, 1_000_000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range h {
			if m.Event == nil && m.Outgoing {
				delivered[m.MessageID] = true
			}
		}
	}
	for _, ch := range chs {
		for _, id := range ch.acked {
			if !delivered[id] {
				t.Errorf("%s: acknowledged message %s is not in its own history as sent", ch.name, id)
			}
		}
	}
	for _, ch := range chs {
		var got map[string]int
		waitFor(t, 2*time.Minute, ch.name+" holds every delivered message", func() bool {
			sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, _ = ch.c.Sync(sctx, 0)
			cancel()
			h, err := ch.c.History(ctx, ch.room, 1_000_000)
			if err != nil {
				t.Fatal(err)
			}
			got = map[string]int{}
			for _, m := range h {
				if m.Event == nil {
					got[m.MessageID]++
				}
			}
			for id := range delivered {
				if got[id] == 0 {
					return false
				}
			}
			return true
		})
		for id, n := range got {
			if n != 1 {
				t.Errorf("%s holds message %s %d times", ch.name, id, n)
			}
		}
	}
	return len(delivered)
}

// Kill one node of three (SIGKILL of the real qpcd) while SDK clients
// spread over the nodes chat through one group and long-poll: the killed
// node's clients move to another node within seconds, and every client
// ends with every acknowledged message exactly once. The short mode uses
// a 3 s connection idle timeout (how fast a silent node is given up on);
// the long mode the SDK's default (client.DefaultIdleTimeout) and more
// clients and chat.
func TestChaosClusterNodeKill(t *testing.T) {
	requirePostgres(t)
	users := pick(4, 6)
	idle := pick(3*time.Second, time.Duration(0))
	before, after := pick(2*time.Second, 10*time.Second), pick(2*time.Second, 10*time.Second)
	nodes := startCluster(t, 3, "QPC_LIMITS_LONG_POLL_MAX=5s")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	names := make([]string, users)
	cs := make([]*client.Client, users)
	for i := range cs {
		names[i] = fmt.Sprintf("user%d", i)
		cs[i] = clusterClient(t, nodes, i%len(nodes), names[i], idle)
	}
	rooms := chatRoom(t, ctx, cs, names)
	chs := make([]*chatter, users)
	for i := range cs {
		chs[i] = &chatter{c: cs[i], name: names[i], room: rooms[i]}
	}
	chatCtx, stopChat := context.WithCancel(ctx)
	defer stopChat()
	var wg sync.WaitGroup
	for _, ch := range chs {
		ch.run(chatCtx, &wg)
	}
	time.Sleep(before) // chat for a while (the scenario's length, not a wait for a condition)

	victim := nodes[0]
	var onVictim []*chatter
	for _, ch := range chs {
		if _, cur := ch.c.Servers(); cur == victim.listen {
			onVictim = append(onVictim, ch)
		}
	}
	if len(onVictim) == 0 {
		t.Fatal("no client was on the node to kill")
	}
	victim.kill9()
	killed := time.Now()
	var took []time.Duration
	waitFor(t, 2*time.Minute, "every client of the killed node sends through another", func() bool {
		took = took[:0]
		for _, ch := range onVictim {
			d := ch.firstAckAfter(killed)
			if d < 0 {
				return false
			}
			took = append(took, d)
		}
		return true
	})
	for _, ch := range onVictim {
		if _, cur := ch.c.Servers(); cur == victim.listen {
			t.Errorf("%s still names the killed node as current", ch.name)
		}
	}
	time.Sleep(after) // more chat on two nodes
	stopChat()
	wg.Wait()

	n := checkExactlyOnce(t, ctx, chs)
	acked, queued, syncErrs := 0, 0, 0
	for _, ch := range chs {
		acked += len(ch.acked)
		queued += ch.queued
		syncErrs += ch.syncErr
	}
	if acked == 0 {
		t.Fatal("no message was acknowledged")
	}
	slices.Sort(took)
	effIdle := idle
	if effIdle == 0 {
		effIdle = client.DefaultIdleTimeout
	}
	summary(t, "3 nodes on one PostgreSQL, %d clients (%d on the killed node), idle timeout %s: failover (kill to first acknowledged send on another node) %v, max %s; "+
		"%d messages acknowledged, %d left queued by Send and delivered from the outbox, %d delivered in all; lost 0, duplicated 0; %d long polls failed and resumed",
		users, len(onVictim), effIdle, roundAll(took), took[len(took)-1].Round(time.Millisecond),
		acked, queued, n, syncErrs)
}

func roundAll(ds []time.Duration) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond).String()
	}
	return out
}

// A node cut off from the database (the TCP fault proxy partitions its
// PostgreSQL link; the QUIC side stays up) answers UNAVAILABLE: its SDK
// client moves to a node that still reaches the database and its call
// succeeds there, without waiting for the partition to heal.
func TestChaosClusterNodeUnavailable(t *testing.T) {
	requirePostgres(t)
	dsn := pgtest.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p, err := faultproxy.ListenTCP("127.0.0.1:0", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	proxied := *u
	proxied.Host = p.Addr()
	env := []string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_STATEMENT_TIMEOUT=2s", "QPC_POSTGRES_CONNECT_TIMEOUT=2s"}
	a := newNode(t, "", append(env, "QPC_POSTGRES_DSN="+proxied.String())...)
	a.start()
	b := newNode(t, "", append(env, "QPC_POSTGRES_DSN="+dsn)...)
	b.start()
	c := clusterClient(t, []*node{a, b}, 0, "uma", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, cur := c.Servers(); cur != a.listen {
		t.Fatalf("on %s before the partition, not node A", cur)
	}
	p.Set(faultproxy.Faults{Partition: true})
	cut := time.Now()
	// A fetch needs the database (WhoAmI may be answered from caches).
	if _, err := c.Sync(ctx, 0); err != nil {
		t.Fatalf("fetch with node A cut off from the database: %v", err)
	}
	took := time.Since(cut)
	if _, cur := c.Servers(); cur != b.listen {
		t.Fatalf("on %s after node A answered UNAVAILABLE, want node B", cur)
	}
	if !a.alive() {
		t.Fatal("node A exited; the test is about a live node that answers UNAVAILABLE")
	}
	summary(t, "node A cut off from PostgreSQL (statement timeout 2s): the client's call answered by node B %s after the cut", took.Round(time.Millisecond))
}
