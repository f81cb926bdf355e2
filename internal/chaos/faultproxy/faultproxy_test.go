package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// udpEcho is a UDP server that sends every datagram back.
func udpEcho(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(socketBuffer)
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDP(buf[:n], from)
		}
	}()
	return c.LocalAddr().String()
}

func udpProxy(t *testing.T, seed uint64) *UDP {
	t.Helper()
	p, err := ListenUDP("127.0.0.1:0", udpEcho(t), seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func dialUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	ra, _ := net.ResolveUDPAddr("udp", addr)
	c, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(socketBuffer)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// exchange sends n numbered datagrams and collects what comes back until
// quiet for `quiet`; it returns the payloads in arrival order.
func exchange(t *testing.T, c *net.UDPConn, n int, quiet time.Duration) []string {
	t.Helper()
	for i := range n {
		if _, err := fmt.Fprintf(c, "%04d", i); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	buf := make([]byte, 64)
	for {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		k, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return got
			}
			t.Fatal(err)
		}
		got = append(got, string(buf[:k]))
	}
}

func TestUDPForwardsEverythingWithoutFaults(t *testing.T) {
	p := udpProxy(t, 1)
	got := exchange(t, dialUDP(t, p.Addr()), 200, 300*time.Millisecond)
	if len(got) != 200 {
		t.Fatalf("got %d of 200 datagrams back", len(got))
	}
	if s := p.Stats(); s.Forwarded != 400 || s.Dropped != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestUDPLossIsNearItsRate(t *testing.T) {
	p := udpProxy(t, 7)
	p.Set(Faults{Loss: 0.1})
	n := len(exchange(t, dialUDP(t, p.Addr()), 1000, 300*time.Millisecond))
	// Both directions lose 10 %: about 81 % come back.
	if n < 740 || n > 880 {
		t.Fatalf("%d of 1000 round trips survived 10%% loss each way; want about 810", n)
	}
}

// The same seed makes the same choices, datagram by datagram (which
// direction a choice applies to depends on arrival order, as on a network).
func TestSameSeedSamePlan(t *testing.T) {
	f := Faults{Loss: 0.1, Duplicate: 0.05, Reorder: 0.1, Latency: 200 * time.Millisecond, Jitter: 50 * time.Millisecond}
	a, b, c := newFaultState(42), newFaultState(42), newFaultState(43)
	for _, s := range []*faultState{a, b, c} {
		s.set(f)
	}
	differs := false
	for i := range 1000 {
		pa, pb, pc := a.plan(), b.plan(), c.plan()
		if fmt.Sprint(pa) != fmt.Sprint(pb) {
			t.Fatalf("datagram %d: seed 42 planned %v and %v", i, pa, pb)
		}
		if fmt.Sprint(pa) != fmt.Sprint(pc) {
			differs = true
		}
		for _, d := range pa {
			if d < 150*time.Millisecond || d > 250*time.Millisecond+max(3*f.Jitter, 20*time.Millisecond) {
				t.Fatalf("delay %s outside 200 ms +- 50 (+ reorder hold)", d)
			}
		}
	}
	if !differs {
		t.Fatal("seeds 42 and 43 planned the same")
	}
	if s := a.snapshot(); s.Dropped < 60 || s.Dropped > 140 || s.Duplicated == 0 || s.Reordered == 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestUDPDuplicateAndPartition(t *testing.T) {
	p := udpProxy(t, 3)
	c := dialUDP(t, p.Addr())
	p.Set(Faults{Duplicate: 1})
	// Every datagram is doubled each way: 4 copies per round trip.
	if got := exchange(t, c, 10, 300*time.Millisecond); len(got) != 40 {
		t.Fatalf("duplication: got %d, want 40", len(got))
	}
	p.Set(Faults{Partition: true})
	if got := exchange(t, c, 10, 300*time.Millisecond); len(got) != 0 {
		t.Fatalf("partition let %d through", len(got))
	}
	if s := p.Stats(); s.Partitioned != 10 {
		t.Fatalf("partitioned count %d, want 10", s.Partitioned)
	}
	p.Set(Faults{})
	if got := exchange(t, c, 10, 300*time.Millisecond); len(got) != 10 {
		t.Fatalf("after healing: got %d, want 10", len(got))
	}
}

func TestUDPLatencyJitterAndReorder(t *testing.T) {
	p := udpProxy(t, 5)
	c := dialUDP(t, p.Addr())
	p.Set(Faults{Latency: 100 * time.Millisecond, Jitter: 30 * time.Millisecond, Reorder: 0.2})
	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 140*time.Millisecond {
		t.Fatalf("round trip %s under 2 x (100 ms - 30 ms jitter)", rtt)
	}
	got := exchange(t, c, 200, 600*time.Millisecond)
	if len(got) != 200 {
		t.Fatalf("latency lost datagrams: %d of 200", len(got))
	}
	inversions := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inversions++
		}
	}
	if inversions == 0 || p.Stats().Reordered == 0 {
		t.Fatalf("no reordering under jitter and Reorder 0.2 (%d inversions, %+v)", inversions, p.Stats())
	}
}

func TestTCPPartitionHoldsBytesAndHeals(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	p, err := ListenTCP("127.0.0.1:0", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip := func(msg string, within time.Duration) error {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(within))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if !bytes.Equal(got, []byte(msg)) {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	if err := roundTrip("hello", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Set(Faults{Partition: true})
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("bytes crossed a partition: %d, %v", n, err)
	}
	// A connection opened during the partition is held too.
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _ = c2.Write([]byte("x"))
	_ = c2.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection crossed a partition: %v", err)
	}
	p.Set(Faults{})
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("held bytes after healing: %q %v", got, err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(c2, got[:1]); err != nil || got[0] != 'x' {
		t.Fatalf("held connection after healing: %v", err)
	}
	if p.Open() != 2 {
		t.Fatalf("open connections %d, want 2", p.Open())
	}
}
