// Package diskwatch follows whether qpcd's writes are refused for lack of
// disk space, from the store's reports and, for a local database, from
// probes of the data directory's filesystem, so that the condition shows on
// /readyz and a metric and clears by itself when space returns.
//
// The store reports every write refused by a full disk (Failed) and every
// commit (Succeeded). For a local database (Options.Dir set) a refusal makes
// the state full at once; it clears only when a probe of the data directory
// succeeds (ProbeBytes written, synced and removed) with no refusal reported
// while the probe ran. That hysteresis keeps the state from flapping on each
// small commit that still fits into reused WAL pages while larger writes
// fail. Probes run every Interval while full (and when statfs shows less
// than ProbeBytes available), and early, at most once per MinProbeGap, when
// a commit succeeds while full; while space is plentiful nothing is written.
// Without Dir (PostgreSQL: the space is the database server's) the state
// simply follows the last write: refused, or committed.
package diskwatch

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Defaults for Options.
const (
	DefaultInterval    = 2 * time.Second
	DefaultProbeBytes  = 1 << 20
	DefaultMinProbeGap = time.Second
)

// ProbeName is the file a probe writes (and removes) in the data directory.
const ProbeName = ".qpcd-disk-probe"

// Options configures New.
type Options struct {
	// Dir is the data directory whose filesystem holds the database; ""
	// when the database is elsewhere (PostgreSQL): no statfs, no probes.
	Dir string
	// Where names the space in messages when Dir is "" (for example
	// "PostgreSQL server db:5432/qpc").
	Where string
	// Interval between checks; default 2s (DefaultInterval).
	Interval time.Duration
	// ProbeBytes is what a probe writes; default 1 MiB. It is the margin a
	// recovery needs: less free space than this still counts as full.
	ProbeBytes int
	// MinProbeGap bounds how often a successful commit may trigger an early
	// probe while full; default 1s.
	MinProbeGap time.Duration
	// Now is the clock (nil: time.Now); NewTicker makes the check ticker
	// (nil: time.NewTicker). Tests inject both and drive checks themselves.
	Now       func() time.Time
	NewTicker func(d time.Duration) (c <-chan time.Time, stop func())
	// Logger gets one line when the disk fills and one when it has room
	// again (nil: discard).
	Logger *slog.Logger
	// OnChange, if set, is called (without locks held) after the state
	// flips, with the new state.
	OnChange func(Status)
}

// Status is the watch's view of the disk.
type Status struct {
	Full  bool
	Since time.Time // when the current state began (zero: never full)
	Where string    // the directory (or server) whose space is meant
	// Avail and Size are the data directory filesystem's bytes available to
	// qpcd and its size, from the last statfs (0 without Dir).
	Avail, Size uint64
	// Cause is the error that made it full ("" when not full).
	Cause string
}

// Watch follows the disk-full condition. Its methods are safe for
// concurrent use.
type Watch struct {
	o       Options
	pattern []byte // probe contents: incompressible, so compression cannot fake space

	mu        sync.Mutex
	st        Status
	failures  uint64    // refusals reported so far
	lastProbe time.Time // start of the last probe
	probeErr  string    // last non-space probe failure, logged once

	wake chan struct{}
}

// New returns a watch in the "not full" state; Start runs its checks.
func New(o Options) *Watch {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.ProbeBytes <= 0 {
		o.ProbeBytes = DefaultProbeBytes
	}
	if o.MinProbeGap <= 0 {
		o.MinProbeGap = DefaultMinProbeGap
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.NewTicker == nil {
		o.NewTicker = func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(d)
			return t.C, t.Stop
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	where := o.Where
	if o.Dir != "" {
		where = o.Dir
	}
	w := &Watch{o: o, wake: make(chan struct{}, 1), st: Status{Where: where}}
	if o.Dir != "" {
		w.pattern = make([]byte, 64<<10)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range w.pattern {
			w.pattern[i] = byte(r.Uint32())
		}
	}
	return w
}

// Status returns the current state.
func (w *Watch) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

// Failed records a write refused because the disk is full: the state turns
// full at once.
func (w *Watch) Failed(err error) {
	w.mu.Lock()
	w.failures++
	changed := w.setLocked(true, err)
	w.mu.Unlock()
	w.changed(changed)
}

// Succeeded records a committed write. Without Dir it clears the state;
// with Dir it asks for an early probe while full.
func (w *Watch) Succeeded() {
	w.mu.Lock()
	full := w.st.Full
	if !full || w.o.Dir != "" {
		w.mu.Unlock()
		if full {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
		return
	}
	changed := w.setLocked(false, nil)
	w.mu.Unlock()
	w.changed(changed)
}

// Start runs Check every Interval, and early when a commit succeeds while
// full, until stop is called. It checks once before returning.
func (w *Watch) Start() (stop func()) {
	w.Check()
	tick, stopTick := w.o.NewTicker(w.o.Interval)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer stopTick()
		for {
			select {
			case <-quit:
				return
			case <-tick:
				w.Check()
			case <-w.wake:
				w.mu.Lock()
				due := w.o.Now().Sub(w.lastProbe) >= w.o.MinProbeGap
				w.mu.Unlock()
				if due {
					w.Check()
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); <-done }) }
}

// Check reads the filesystem's free space and, if the state is full or the
// space is below ProbeBytes, probes whether a write fits. Without Dir it
// does nothing.
func (w *Watch) Check() {
	if w.o.Dir == "" {
		return
	}
	avail, size, statErr := statfs(w.o.Dir)
	w.mu.Lock()
	if statErr == nil {
		w.st.Avail, w.st.Size = avail, size
	}
	probe := w.st.Full || (statErr == nil && avail < uint64(w.o.ProbeBytes))
	if !probe {
		w.mu.Unlock()
		return
	}
	seen := w.failures
	w.lastProbe = w.o.Now()
	w.mu.Unlock()

	err := w.probe()
	after, afterSize, afterErr := statfs(w.o.Dir)
	w.mu.Lock()
	if err != nil && !isNoSpace(err) {
		// Not a space problem (permissions, a read-only remount, an I/O
		// error): say so once, but it tells nothing about free space.
		if msg := err.Error(); msg != w.probeErr {
			w.probeErr = msg
			w.o.Logger.Warn("disk check: probe write in the data directory failed", "dir", w.o.Dir, "err", err)
		}
		w.mu.Unlock()
		return
	}
	w.probeErr = ""
	if afterErr == nil {
		w.st.Avail, w.st.Size = after, afterSize
	}
	var changed bool
	switch {
	case err != nil:
		changed = w.setLocked(true, err)
	case w.failures == seen:
		changed = w.setLocked(false, nil)
	}
	w.mu.Unlock()
	w.changed(changed)
}

// setLocked moves to full (or not) and reports whether the state flipped.
func (w *Watch) setLocked(full bool, cause error) (flipped bool) {
	if w.st.Full == full {
		return false
	}
	now := w.o.Now()
	if full {
		w.st.Cause = fmt.Sprint(cause)
		w.o.Logger.Error("disk full: writes are refused until space is freed (clients get RESOURCE_EXHAUSTED and retry; see docs/runbooks/disk-full.md)",
			"where", w.st.Where, "avail_bytes", w.st.Avail, "err", w.st.Cause)
	} else {
		w.o.Logger.Info("disk has room again: writes resume", "where", w.st.Where, "full_for", now.Sub(w.st.Since).Round(time.Millisecond).String(), "avail_bytes", w.st.Avail)
		w.st.Cause = ""
	}
	w.st.Full, w.st.Since = full, now
	return true
}

func (w *Watch) changed(flipped bool) {
	if flipped && w.o.OnChange != nil {
		w.o.OnChange(w.Status())
	}
}

// probe writes ProbeBytes into a file in Dir, syncs it and removes it.
func (w *Watch) probe() (err error) {
	p := filepath.Join(w.o.Dir, ProbeName)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, f.Close(), os.Remove(p))
	}()
	for left := w.o.ProbeBytes; left > 0; {
		n := min(left, len(w.pattern))
		if _, err := f.Write(w.pattern[:n]); err != nil {
			return err
		}
		left -= n
	}
	return f.Sync()
}

func statfs(dir string) (avail, size uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
