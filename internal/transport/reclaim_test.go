package transport

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

func TestReclaimRule(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	r := reclaimRule{minDrop: 100, every: time.Minute}
	steps := []struct {
		after time.Duration
		open  int
		want  bool
	}{
		{0, 50, false},                  // growing
		{time.Second, 1000, false},      // high-water mark 1000
		{2 * time.Second, 600, false},   // falling, above half
		{3 * time.Second, 500, false},   // at half, still falling
		{4 * time.Second, 300, false},   // still falling
		{5 * time.Second, 300, true},    // settled: reclaim; the mark restarts at 300
		{6 * time.Second, 100, false},   // a further drop
		{7 * time.Second, 100, false},   // settled, but within the minute
		{66 * time.Second, 1200, false}, // a new crowd
		{67 * time.Second, 1150, false}, // a small drop
		{68 * time.Second, 10, false},   // they all left
		{69 * time.Second, 10, true},    // settled, 62 s since the last reclaim
		{130 * time.Second, 0, false},   // only 10 since: below minDrop
		{131 * time.Second, 0, false},
	}
	for i, s := range steps {
		if got := r.observe(t0.Add(s.after), s.open); got != s.want {
			t.Fatalf("step %d (%v, %d open): reclaim %v, want %v (rule %+v)", i, s.after, s.open, got, s.want, r)
		}
	}
}

// Buffers parked in a sync.Pool, as quic-go parks its packet buffers,
// survive one GC in the pool's victim cache, which is why freeMemory
// collects twice: whatever collections ran before it (a background GC may
// already have moved them to the victim cache), after it the pooled memory
// is freed and returned to the OS.
func TestFreeMemoryFreesPooledBuffers(t *testing.T) {
	const n, size = 64, 1 << 20
	// No collection between filling the pool and measuring it.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var pool sync.Pool
	for range n {
		pool.Put(make([]byte, size))
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	freeMemory()
	runtime.ReadMemStats(&after)
	if after.HeapInuse > before.HeapInuse-n*size/2 {
		t.Fatalf("heap in use %d -> %d after freeMemory: the %d MiB in the pool were not freed", before.HeapInuse, after.HeapInuse, n*size>>20)
	}
	if after.HeapReleased < before.HeapReleased+n*size/4 {
		t.Fatalf("released to the OS %d -> %d: want most of %d MiB more", before.HeapReleased, after.HeapReleased, n*size>>20)
	}
	runtime.KeepAlive(&pool)
}

// When a crowd of real QUIC connections leaves, the sweep reclaims their
// memory once; a handful more closing does not trigger it again.
func TestReclaimAfterConnectionsLeave(t *testing.T) {
	var reclaims atomic.Int32
	l := listen(t, ListenerConfig{
		FirstStreamTimeout: time.Minute, IdleTimeout: time.Minute, RefusalLogEvery: 40 * time.Millisecond, // sweep every 10 ms
		ReclaimMinDrop: 12, ReclaimEvery: time.Hour,
		reclaimed: func() { reclaims.Add(1) },
	}, echo{})
	const n = 16
	conns := make([]*quic.Conn, n)
	for i := range conns {
		conns[i] = l.dial(t, "")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := roundTrip(ctx, conns[i], "hi"); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
	}
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "every connection admitted", func() bool { return l.Connections() == n })
	sweeps := l.sweeps.Load()
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "two sweeps with the crowd connected", func() bool { return l.sweeps.Load() >= sweeps+2 })
	if got := reclaims.Load(); got != 0 {
		t.Fatalf("%d reclaims while every connection is open", got)
	}
	for _, c := range conns[:n-2] {
		_ = c.CloseWithError(0, "bye")
	}
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "a reclaim after 14 of 16 left", func() bool { return reclaims.Load() == 1 })
	_ = conns[n-2].CloseWithError(0, "bye")
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "the last but one closed", func() bool { return l.Connections() == 1 })
	sweeps = l.sweeps.Load()
	testutil.WaitFor(t, 10*time.Second, 5*time.Millisecond, "two more sweeps", func() bool { return l.sweeps.Load() >= sweeps+2 })
	if got := reclaims.Load(); got != 1 {
		t.Fatalf("%d reclaims, want 1: one more closing is no crowd", got)
	}
}
