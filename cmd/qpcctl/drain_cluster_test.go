package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/client"
)

// TestDrainMovesClients: three nodes on one PostgreSQL database; every
// SDK client lists node A first, so all of them use it. `qpcctl drain` on
// node A: while it drains, the clients move to another node (DRAINING or
// the GOAWAY close moves them) and carry on sending and long-polling; no
// acknowledged message is lost or held twice by anyone.
func TestDrainMovesClients(t *testing.T) {
	nodes := startPGNodes(t, 3)
	var addrs, pins []string
	for _, d := range nodes {
		addrs = append(addrs, d.quic)
		pins = append(pins, d.pin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const users = 3
	cs := make([]*client.Client, users)
	names := make([]string, users)
	for i := range cs {
		names[i] = fmt.Sprintf("user%d", i)
		c, err := client.Init(ctx, client.Options{Home: filepath.Join(t.TempDir(), names[i])},
			client.ServerTrust{Addr: strings.Join(addrs, ","), PinSHA256: strings.Join(pins, ",")}, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := c.Register(ctx, client.RegisterParams{AccountName: names[i]}); err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cs[0].CreateGroup(ctx, "room"))
	must(cs[0].AddMembers(ctx, "room", names[1:]))
	for _, c := range cs[1:] {
		invs, err := c.Invitations(ctx)
		must(err)
		for _, in := range invs {
			_, err := c.AcceptInvitation(ctx, in.ID)
			must(err)
		}
	}
	_, err := cs[0].Send(ctx, "room", "hello", "")
	must(err)
	rooms := make([]string, users)
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
		if _, cur := c.Servers(); cur != nodes[0].quic {
			t.Fatalf("%s uses %s before the drain, not node A", names[i], cur)
		}
	}

	var mu sync.Mutex
	acked := map[string]time.Time{} // message id -> when Send returned success
	ackedBy := make([][]string, users)
	chatCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for k := 0; chatCtx.Err() == nil; k++ {
				sctx, scancel := context.WithTimeout(chatCtx, 30*time.Second)
				id, err := c.Send(sctx, rooms[i], fmt.Sprintf("%s-%d", names[i], k), "")
				scancel()
				if err == nil {
					mu.Lock()
					acked[id] = time.Now()
					ackedBy[i] = append(ackedBy[i], id)
					mu.Unlock()
				}
				select {
				case <-chatCtx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		go func() {
			defer wg.Done()
			for chatCtx.Err() == nil {
				_, _ = c.Sync(chatCtx, 2*time.Second)
			}
		}()
	}
	waitFor(t, 30*time.Second, "messages flowing before the drain", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 10
	})
	drained := time.Now()
	nodes[0].drain(t) // qpcctl drain, waits until node A has stopped
	drainTook := time.Since(drained)
	moved := make([]time.Duration, users)
	waitFor(t, time.Minute, "every client sends through another node (10 messages each)", func() bool {
		for i, c := range cs {
			if _, cur := c.Servers(); cur == nodes[0].quic {
				return false
			}
			mu.Lock()
			moved[i] = -1
			after := 0
			for _, id := range ackedBy[i] {
				if at := acked[id]; at.After(drained) {
					after++
					if moved[i] < 0 || at.Sub(drained) < moved[i] {
						moved[i] = at.Sub(drained)
					}
				}
			}
			mu.Unlock()
			if after < 10 { // and keeps sending there
				return false
			}
		}
		return true
	})
	stop()
	wg.Wait()

	// Everything acknowledged (and anything left in an outbox when the
	// chat stopped) reaches every client exactly once.
	waitFor(t, time.Minute, "outboxes delivered", func() bool {
		for _, c := range cs {
			_, _ = c.Flush(ctx)
			ob, err := c.Outbox(ctx)
			must(err)
			for _, e := range ob {
				if e.Status == "failed" {
					t.Fatalf("outbox entry %s failed for good: %s", e.MessageID, e.LastError)
				}
				if e.Status != "sent" {
					return false
				}
			}
		}
		return true
	})
	for i, c := range cs {
		var got map[string]int
		waitFor(t, time.Minute, names[i]+" holds every acknowledged message", func() bool {
			_, _ = c.Sync(ctx, 0)
			h, err := c.History(ctx, rooms[i], 1_000_000)
			must(err)
			got = map[string]int{}
			for _, m := range h {
				if m.Event == nil {
					got[m.MessageID]++
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for id := range acked {
				if got[id] == 0 {
					return false
				}
			}
			return true
		})
		for id, n := range got {
			if n != 1 {
				t.Errorf("%s holds message %s %d times", names[i], id, n)
			}
		}
	}
	t.Logf("qpcctl drain of node A took %s; its %d clients sent through another node %v after the drain began; %d messages acknowledged, none lost or duplicated",
		drainTook.Round(time.Millisecond), users, moved, len(acked))
}
