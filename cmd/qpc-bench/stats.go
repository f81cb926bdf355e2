package main

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// summary is a latency distribution.
type summary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func (s summary) String() string {
	if s.Count == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f / %.2f / %.2f", s.P50, s.P99, s.P999)
}

// samples collects latencies from many goroutines.
type samples struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *samples) add(d ...time.Duration) {
	s.mu.Lock()
	s.d = append(s.d, d...)
	s.mu.Unlock()
}

func (s *samples) summary() summary {
	s.mu.Lock()
	d := slices.Clone(s.d)
	s.mu.Unlock()
	return summarize(d)
}

// summarize returns nearest-rank percentiles of d.
func summarize(d []time.Duration) summary {
	if len(d) == 0 {
		return summary{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(q*float64(len(d))+0.999999) - 1
		i = min(max(i, 0), len(d)-1)
		return float64(d[i]) / float64(time.Millisecond)
	}
	return summary{Count: len(d), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: float64(d[len(d)-1]) / float64(time.Millisecond)}
}

// pacer spaces requests for a target total rate across workers; a zero
// rate never waits.
type pacer struct {
	mu       sync.Mutex
	next     time.Time
	interval time.Duration
}

func newPacer(rate float64) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	return &pacer{next: time.Now(), interval: time.Duration(float64(time.Second) / rate)}
}

// wait blocks until the next slot and returns its scheduled time (latency
// is measured from the schedule, so a slow server cannot hide queueing).
func (p *pacer) wait(stop <-chan struct{}) (time.Time, bool) {
	if p.interval == 0 {
		return time.Now(), true
	}
	p.mu.Lock()
	at := p.next
	p.next = p.next.Add(p.interval)
	p.mu.Unlock()
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-stop:
			return at, false
		}
	}
	return at, true
}

// window decides which requests count: those started after the warm-up
// and before the end; it also stops the run.
type window struct {
	start, end time.Time
	stop       chan struct{}
	once       sync.Once
	max        int64
	mu         sync.Mutex
	n          int64
}

func newWindow(warmup, dur time.Duration, max int) *window {
	now := time.Now()
	w := &window{start: now.Add(warmup), stop: make(chan struct{}), max: int64(max)}
	if dur > 0 {
		w.end = w.start.Add(dur)
	}
	return w
}

func (w *window) done() { w.once.Do(func() { close(w.stop) }) }

// running reports whether workers should go on.
func (w *window) running() bool {
	select {
	case <-w.stop:
		return false
	default:
	}
	if !w.end.IsZero() && time.Now().After(w.end) {
		w.done()
		return false
	}
	return true
}

// count records a finished request that started at t; it reports whether
// it is inside the measured window.
func (w *window) count(t time.Time) bool {
	if t.Before(w.start) || (!w.end.IsZero() && t.After(w.end)) {
		return false
	}
	w.mu.Lock()
	w.n++
	n := w.n
	w.mu.Unlock()
	if w.max > 0 && n >= w.max {
		w.done()
	}
	return true
}

func (w *window) counted() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// seconds is the measured span: from the warm-up's end to the end (or now).
func (w *window) seconds(stopped time.Time) float64 {
	end := stopped
	if !w.end.IsZero() && w.end.Before(end) {
		end = w.end
	}
	return max(end.Sub(w.start).Seconds(), 1e-9)
}
