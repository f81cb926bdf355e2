package chaos

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/chaos/faultproxy"
	"github.com/quicprochat/quicprochat/internal/client"
	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// sdkClient initialises and registers a client SDK device reaching qpcd at addr.
func sdkClient(t *testing.T, addr, pin, name string) *client.Client {
	t.Helper()
	ctx, cancel := callCtx(2 * time.Minute)
	defer cancel()
	c, err := client.Init(ctx, client.Options{Home: filepath.Join(t.TempDir(), name)}, client.ServerTrust{Addr: addr, PinSHA256: pin}, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Register(ctx, client.RegisterParams{AccountName: name}); err != nil {
		t.Fatal(err)
	}
	return c
}

// acceptAll accepts c's pending invitations (joining is by consent) and
// returns how many.
func acceptAll(ctx context.Context, c *client.Client) (int, error) {
	invs, err := c.Invitations(ctx)
	if err != nil {
		return 0, err
	}
	for _, in := range invs {
		if _, err := c.AcceptInvitation(ctx, in.ID); err != nil {
			return 0, err
		}
	}
	return len(invs), nil
}

// lossy is the network of the fault scenario: 10 % loss each way, 200 ms ±
// 50 ms one-way latency, 5 % reordered, 5 % duplicated.
var lossy = faultproxy.Faults{Loss: 0.1, Latency: 200 * time.Millisecond, Jitter: 50 * time.Millisecond, Reorder: 0.05, Duplicate: 0.05}

// Network faults between client and server: the client SDK sends through
// the UDP fault proxy under loss, latency, reordering and duplication, then
// across a partition; a receiver long-polls throughout. Every message
// arrives exactly once, the long poll resumes after the partition, and qpcd
// holds no leftover connections or goroutines afterwards.
func TestChaosNetworkFaults(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		lossySends, partitionSends := pick(6, 40), pick(3, 10)
		partition := pick(5*time.Second, 30*time.Second)
		seed := uint64(time.Now().UnixNano())
		// A short idle timeout so connections abandoned in the partition are
		// reaped within the test's deadline (the promise: within idle_timeout).
		n := newNode(t, backend, "QPC_LIMITS_IDLE_TIMEOUT=10s", "QPC_LIMITS_KEEP_ALIVE=3s", "QPC_LIMITS_LONG_POLL_MAX=5s")
		n.start()
		waitFor(t, 10*time.Second, "metrics", func() bool { _, err := n.metrics(); return err == nil })
		base := footprint(t, n)
		p, err := faultproxy.ListenUDP("127.0.0.1:0", n.listen, seed)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })

		alice := sdkClient(t, p.Addr(), n.pin, "alice")
		bob := sdkClient(t, p.Addr(), n.pin, "bob")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if err := alice.CreateGroup(ctx, "team"); err != nil {
			t.Fatal(err)
		}
		if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
			t.Fatal(err)
		}
		// Joining is by consent: bob accepts the invitation.
		if k, err := acceptAll(ctx, bob); err != nil || k != 1 {
			t.Fatalf("bob accepted %d invitations: %v", k, err)
		}
		if _, err := bob.Sync(ctx, 0); err != nil {
			t.Fatal(err)
		}

		// Bob long-polls until stopped, as `qpc watch` does; transient
		// failures are counted and the poll resumes.
		var stop atomic.Bool
		var pollErrs, polls atomic.Int64
		var lastPollOK atomic.Int64 // unix ms of the last successful poll
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
				_, err := bob.Sync(pctx, 3*time.Second)
				pcancel()
				polls.Add(1)
				if err != nil {
					pollErrs.Add(1)
					continue
				}
				lastPollOK.Store(time.Now().UnixMilli())
			}
		}()
		defer func() { stop.Store(true); wg.Wait() }()

		send := func(text string, within time.Duration) (queuedOnly bool) {
			sctx, scancel := context.WithTimeout(ctx, within)
			defer scancel()
			id, err := alice.Send(sctx, "team", text, "")
			if id == "" {
				t.Fatalf("send %q: not even queued: %v", text, err)
			}
			return err != nil
		}

		p.Set(lossy)
		begin := time.Now()
		queued := 0
		for i := range lossySends {
			if send(fmt.Sprintf("lossy-%02d", i), 20*time.Second) {
				queued++
			}
		}
		lossyTook := time.Since(begin)

		p.Set(faultproxy.Faults{Partition: true})
		cut := time.Now()
		for i := range partitionSends {
			if !send(fmt.Sprintf("partition-%02d", i), 500*time.Millisecond) {
				t.Fatalf("a message was acknowledged across a partition")
			}
			queued++
		}
		// Hold the partition for its full length (the point is its length).
		time.Sleep(time.Until(cut.Add(partition)))
		p.Set(lossy)
		healed := time.Now()
		var ob []client.OutboxEntry
		waitFor(t, 2*time.Minute, "alice's outbox delivered after the partition", func() bool {
			fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
			_, _ = alice.Flush(fctx)
			fcancel()
			ob, err = alice.Outbox(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ob {
				if e.Status != "sent" {
					if e.Status == "failed" {
						t.Fatalf("outbox entry %s failed for good: %s", e.MessageID, e.LastError)
					}
					return false
				}
			}
			return true
		})
		outboxAfter := time.Since(healed)
		// Bob's long poll resumed and brought everything, once each.
		mine := map[string]bool{}
		hist, err := alice.History(ctx, "team", 100000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range hist {
			if m.Event == nil { // membership events are not messages
				mine[m.MessageID] = true
			}
		}
		got := map[string]int{}
		waitFor(t, 2*time.Minute, "bob's long poll brought every message", func() bool {
			hb, err := bob.History(ctx, "team", 100000)
			if err != nil {
				t.Fatal(err)
			}
			got = map[string]int{}
			for _, m := range hb {
				if m.Event == nil {
					got[m.MessageID]++
				}
			}
			for id := range mine {
				if got[id] == 0 {
					return false
				}
			}
			return true
		})
		bobAfter := time.Since(healed)
		dups := 0
		for id, c := range got {
			if c != 1 || !mine[id] {
				dups++
				t.Errorf("bob holds message %s %d times (alice sent it: %v)", id, c, mine[id])
			}
		}
		if len(mine) != lossySends+partitionSends {
			t.Errorf("alice's history holds %d messages, sent %d", len(mine), lossySends+partitionSends)
		}
		stop.Store(true)
		wg.Wait()
		st := p.Stats()

		// Clean network, clients gone: qpcd back to its baseline.
		p.Set(faultproxy.Faults{})
		_ = alice.Close()
		_ = bob.Close()
		settle := time.Now()
		var after serverFootprint
		waitFor(t, 45*time.Second, "qpcd connections and goroutines back to baseline", func() bool {
			after = footprint(t, n)
			return after.conns == 0 && after.goroutines <= base.goroutines+5
		})
		summary(t, "seed %d; lossy phase: %d messages in %s (%d left queued by Send); partition %s with %d queued; "+
			"after healing: outbox delivered in %s, receiver complete in %s; delivered %d, lost 0, duplicated %d; "+
			"long polls %d (%d failed and resumed); proxy %+v; goroutines %.0f -> %.0f, connections -> %.0f in %s",
			seed, lossySends, lossyTook.Round(time.Millisecond), queued-partitionSends, partition, partitionSends,
			outboxAfter.Round(time.Millisecond), bobAfter.Round(time.Millisecond), len(got), dups,
			polls.Load(), pollErrs.Load(), st, base.goroutines, after.goroutines, after.conns, time.Since(settle).Round(time.Millisecond))
	})
}

// A partition between qpcd and PostgreSQL (the TCP fault proxy in the
// database connection's path): the node turns not ready, requests fail
// fast with UNAVAILABLE, and it recovers without a restart once the
// partition heals.
func TestChaosDatabasePartition(t *testing.T) {
	bs, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(bs, store.BackendPostgres) {
		t.Skip("PostgreSQL only, and QPC_TEST_BACKENDS leaves it out")
	}
	n := newNode(t, store.BackendPostgres, "QPC_POSTGRES_STATEMENT_TIMEOUT=2s", "QPC_POSTGRES_CONNECT_TIMEOUT=2s")
	var dsn string
	for _, kv := range n.env {
		if v, ok := strings.CutPrefix(kv, "QPC_POSTGRES_DSN="); ok {
			dsn = v
		}
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("pgtest DSN: %v", err)
	}
	p, err := faultproxy.ListenTCP("127.0.0.1:0", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr()
	n.env = append(n.env, "QPC_POSTGRES_DSN="+u.String()) // the last one wins
	n.start()
	pid := n.pid()
	c := n.mustDial(t)
	d, err := registerDevice(c, "dbpart")
	if err != nil {
		t.Fatal(err)
	}
	list := func() error {
		return d.call(c, 30*time.Second, "ListChannels", &qpcv1.ListChannelsRequest{}, &qpcv1.ListChannelsResponse{})
	}
	if err := list(); err != nil {
		t.Fatal(err)
	}
	rounds := pick(1, 3)
	var unready, refusals, recoveries []time.Duration
	for r := range rounds {
		p.Set(faultproxy.Faults{Partition: true})
		cut := time.Now()
		waitFor(t, 20*time.Second, fmt.Sprintf("round %d: /readyz not ready during the partition", r), func() bool { return n.readyz() == http.StatusServiceUnavailable })
		unready = append(unready, time.Since(cut))
		// Several requests at once, so some land on pooled connections that
		// were open when the link was cut (those hang without a deadline of
		// qpcd's own) and some need a new connection.
		type outcome struct {
			name string
			err  error
			took time.Duration
		}
		calls := []struct {
			name string
			do   func() error
		}{
			{"ListChannels", list}, {"ListChannels", list}, {"ListChannels", list},
			{"Enqueue", func() error {
				return d.call(c, 30*time.Second, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: make([]byte, 16), MessageId: "x", MlsMessage: dt.Application(make([]byte, 32), 0, 64)}, &qpcv1.EnqueueResponse{})
			}},
		}
		results := make(chan outcome, len(calls))
		for _, call := range calls {
			go func() {
				start := time.Now()
				err := call.do()
				results <- outcome{call.name, err, time.Since(start)}
			}()
		}
		for range calls {
			o := <-results
			if statusOf(o.err) != qpcv1.Status_STATUS_UNAVAILABLE {
				t.Errorf("round %d: %s during the partition: %v (after %s), want UNAVAILABLE", r, o.name, o.err, o.took)
			}
			// Fast: within twice the statement timeout plus the connect
			// timeout (qpcd's own deadline per transaction) and a margin,
			// not for as long as the partition lasts.
			if o.took > 8*time.Second {
				t.Errorf("round %d: %s took %s to fail during the partition", r, o.name, o.took)
			}
			refusals = append(refusals, o.took)
		}
		if t.Failed() {
			t.FailNow()
		}
		p.Set(faultproxy.Faults{})
		healed := time.Now()
		waitFor(t, 30*time.Second, fmt.Sprintf("round %d: /readyz ready after healing", r), func() bool { return n.readyz() == http.StatusOK })
		waitFor(t, 30*time.Second, fmt.Sprintf("round %d: requests served after healing", r), func() bool { return list() == nil })
		recoveries = append(recoveries, time.Since(healed))
	}
	if !n.alive() || n.pid() != pid {
		t.Fatal("qpcd restarted or died; the promise is recovery without a restart")
	}
	summary(t, "rounds %d; partition to /readyz 503 max %s; requests refused with UNAVAILABLE after max %s; heal to serving again max %s; same process",
		rounds, maxDur(unready), maxDur(refusals), maxDur(recoveries))
}
