package diskwatch

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is a watch on a real small filesystem with a fake clock and a
// ticker the test fires.
type harness struct {
	w       *Watch
	dir     string
	clock   *fakeClock
	tick    chan time.Time
	mu      sync.Mutex
	changes []Status
}

func newHarness(t *testing.T, dir string) *harness {
	t.Helper()
	h := &harness{dir: dir, clock: &fakeClock{t: time.Unix(1_700_000_000, 0)}, tick: make(chan time.Time)}
	h.w = New(Options{
		Dir: dir, Now: h.clock.Now,
		NewTicker: func(time.Duration) (<-chan time.Time, func()) { return h.tick, func() {} },
		OnChange: func(s Status) {
			h.mu.Lock()
			h.changes = append(h.changes, s)
			h.mu.Unlock()
		},
	})
	return h
}

func (h *harness) flips() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.changes) }

func noProbeLeft(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, ProbeName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("probe file left behind: %v", err)
	}
}

// A refused write makes the state full at once; a probe that fits clears
// it; a full filesystem is found by the probe alone (no write needed), and
// once space is freed the next tick clears it.
func TestWatchFollowsARealFilesystem(t *testing.T) {
	dir := testutil.SmallFS(t, 8<<20)
	h := newHarness(t, dir)
	stop := h.w.Start()
	defer stop()
	st := h.w.Status()
	if st.Full || st.Avail == 0 || st.Size != 8<<20 || st.Where != dir {
		t.Fatalf("fresh filesystem: %+v", st)
	}

	h.w.Failed(errors.New("store: disk full: test"))
	if st := h.w.Status(); !st.Full || st.Cause == "" || !st.Since.Equal(h.clock.Now()) {
		t.Fatalf("after a refused write: %+v, want full since now", st)
	}
	h.clock.Advance(time.Minute)
	h.tick <- h.clock.Now()
	testutil.WaitFor(t, 5*time.Second, time.Millisecond, "probe clears the state", func() bool { return !h.w.Status().Full })
	if st := h.w.Status(); !st.Since.Equal(h.clock.Now()) {
		t.Fatalf("cleared at %v, want %v", st.Since, h.clock.Now())
	}
	noProbeLeft(t, dir)

	filler := testutil.Fill(t, dir, "filler")
	h.tick <- h.clock.Now()
	testutil.WaitFor(t, 5*time.Second, time.Millisecond, "probe finds the full filesystem", func() bool { return h.w.Status().Full })
	if st := h.w.Status(); st.Avail >= DefaultProbeBytes {
		t.Fatalf("full filesystem reports %d bytes available", st.Avail)
	}
	noProbeLeft(t, dir)

	// Still full: a tick changes nothing.
	h.tick <- h.clock.Now()
	h.tick <- h.clock.Now() // the second send returns once the first check is done
	if !h.w.Status().Full {
		t.Fatal("cleared while the filesystem is still full")
	}
	filler.Remove(t)
	h.tick <- h.clock.Now()
	testutil.WaitFor(t, 5*time.Second, time.Millisecond, "freed space clears the state", func() bool { return !h.w.Status().Full })
	if n := h.flips(); n != 4 {
		t.Fatalf("%d state changes, want 4 (full, clear, full, clear)", n)
	}
	noProbeLeft(t, dir)
}

// While full, a successful commit asks for an early probe (no tick).
func TestCommitWhileFullProbesEarly(t *testing.T) {
	dir := testutil.SmallFS(t, 8<<20)
	h := newHarness(t, dir)
	stop := h.w.Start()
	defer stop()
	h.w.Failed(syscall.ENOSPC)
	h.clock.Advance(DefaultMinProbeGap) // early probes are at most one per gap
	h.w.Succeeded()
	testutil.WaitFor(t, 5*time.Second, time.Millisecond, "early probe clears the state", func() bool { return !h.w.Status().Full })
}

// With plenty of space nothing is written: checks only read statfs.
func TestNoProbeWhileSpaceIsPlentiful(t *testing.T) {
	dir := testutil.SmallFS(t, 8<<20)
	h := newHarness(t, dir)
	h.w.Check()
	h.w.mu.Lock()
	probed := !h.w.lastProbe.IsZero()
	h.w.mu.Unlock()
	if probed {
		t.Fatal("probed although the filesystem has plenty of space")
	}
}

// Without a directory (PostgreSQL), the state follows the last write.
func TestWatchWithoutDirFollowsWrites(t *testing.T) {
	w := New(Options{Where: "PostgreSQL server db:5432/qpc"})
	stop := w.Start()
	defer stop()
	w.Failed(errors.New("53100"))
	if st := w.Status(); !st.Full || st.Where != "PostgreSQL server db:5432/qpc" {
		t.Fatalf("%+v", st)
	}
	w.Succeeded()
	if w.Status().Full {
		t.Fatal("a committed write did not clear the state")
	}
}
