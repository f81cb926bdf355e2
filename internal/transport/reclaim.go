package transport

import (
	"runtime/debug"
	"sync"
	"time"
)

// Memory return after a connection storm. Every QUIC connection holds tens
// of KiB of heap (quic-go's connection state, crypto/tls's handshake
// buffers, AES-GCM states, packet buffers in a sync.Pool) and four
// goroutine stacks. When a thousand devices leave at once that memory is
// garbage, but an idle server allocates nothing, so no GC runs until the
// runtime forces one every two minutes, and pooled buffers survive one GC
// more; RSS stays near the high-water mark for minutes
// (docs/benchmarks.md, "Idle connections"). The listener's sweep notices
// a large drop in open connections and frees the memory at once.

// Defaults of the reclaim rule.
const (
	// reclaimMinDrop is the least number of connections that must have
	// closed since the high-water mark: below it the memory is not worth
	// a forced collection (about 100 KiB each, so 256 is ~25 MiB).
	reclaimMinDrop = 256
	// reclaimEvery is the least time between two forced collections, so a
	// server whose connections come and go in waves pays at most one
	// full GC a minute for it.
	reclaimEvery = time.Minute
)

// reclaimRule decides when to return memory: once the open connections
// have stopped falling (so one reclaim covers the whole exodus), having
// fallen to half of their high-water mark since the last reclaim and by at
// least minDrop, and the last reclaim is at least every ago.
type reclaimRule struct {
	minDrop int
	every   time.Duration
	high    int
	prev    int // open connections at the previous observation
	last    time.Time
}

// observe records the number of open connections at now and reports
// whether to reclaim memory now.
func (r *reclaimRule) observe(now time.Time, open int) bool {
	falling := open < r.prev
	r.prev = open
	r.high = max(r.high, open)
	if falling || r.high-open < r.minDrop || open > r.high/2 || (!r.last.IsZero() && now.Sub(r.last) < r.every) {
		return false
	}
	r.high, r.last = open, now
	return true
}

// freeMemory collects twice (the first GC moves sync.Pool contents to the
// pools' victim caches, the second frees them) and returns the free pages
// to the operating system.
func freeMemory() {
	debug.FreeOSMemory()
	debug.FreeOSMemory()
}

// reclaimer runs freeMemory in the background when the rule says so, one
// run at a time.
type reclaimer struct {
	mu      sync.Mutex
	rule    reclaimRule
	running bool
	free    func()
	done    func() // called after each run (tests wait on it)
}

func (r *reclaimer) observe(now time.Time, open int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running || !r.rule.observe(now, open) {
		return
	}
	r.running = true
	go func() {
		r.free()
		r.mu.Lock()
		r.running = false
		r.mu.Unlock()
		if r.done != nil {
			r.done()
		}
	}()
}
