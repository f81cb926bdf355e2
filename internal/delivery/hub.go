package delivery

import (
	"sync"
	"time"
)

// hub wakes long-polling fetchers when something they may read was
// committed. Writers publish after their transaction committed; a waiter
// watches keys (its account, its device inbox, each channel it reads) and
// blocks on its channel. Nothing polls the database.
//
// The race between a waiter's database read and its registration on the
// channels that read returned is closed by heads: the hub remembers the
// last published sequence number of recently active channels, and a
// waiter that registers after reading compares it with the head its
// snapshot saw. A head only matters for the moment between a read and a
// registration, so heads idle longer than headTTL are pruned (at most once
// per headTTL): the map stays the size of the recently active channels, not
// of every channel since start. Were a waiter ever slower than that, it
// would wake at its long-poll timeout and read again; nothing is lost.
type hub struct {
	mu        sync.Mutex
	watch     map[string]map[*waiter]struct{}
	heads     map[string]head
	now       func() time.Time
	lastPrune time.Time
	metrics   *metrics
}

// head is a channel's last published sequence number and when it moved.
type head struct {
	seq uint64
	at  time.Time
}

// headTTL is how long an idle channel's head is remembered.
const headTTL = time.Minute

type waiter struct {
	ch   chan struct{} // buffered 1: a wake-up is never lost, never blocks
	keys []string
}

func newHub(m *metrics) *hub {
	return &hub{watch: map[string]map[*waiter]struct{}{}, heads: map[string]head{}, now: time.Now, metrics: m}
}

func channelKey(id []byte) string { return "c" + string(id) }
func deviceKey(id string) string  { return "d" + id }
func accountKey(id string) string { return "a" + id }

func (h *hub) newWaiter() *waiter {
	h.metrics.waiters.Inc()
	return &waiter{ch: make(chan struct{}, 1)}
}

// add registers w on key.
func (h *hub) add(w *waiter, key string) {
	h.mu.Lock()
	set := h.watch[key]
	if set == nil {
		set = map[*waiter]struct{}{}
		h.watch[key] = set
	}
	set[w] = struct{}{}
	h.mu.Unlock()
	w.keys = append(w.keys, key)
}

// addChannel registers w on a channel and reports whether a message beyond
// seen was published before the registration (the caller must read again).
func (h *hub) addChannel(w *waiter, id []byte, seen uint64) bool {
	key := channelKey(id)
	h.add(w, key)
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.heads[key].seq > seen
}

// remove unregisters w from every key.
func (h *hub) remove(w *waiter) {
	h.mu.Lock()
	for _, k := range w.keys {
		if set := h.watch[k]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(h.watch, k)
			}
		}
	}
	h.mu.Unlock()
	w.keys = nil
	h.metrics.waiters.Dec()
}

// publishChannel records a committed message and wakes the channel's waiters.
func (h *hub) publishChannel(id []byte, seq uint64) {
	key := channelKey(id)
	now := h.now()
	h.mu.Lock()
	if hd := h.heads[key]; seq > hd.seq {
		h.heads[key] = head{seq: seq, at: now}
	}
	if now.Sub(h.lastPrune) > headTTL {
		h.pruneLocked(now)
	}
	n := h.wakeLocked(key)
	h.mu.Unlock()
	h.metrics.wakeups.Add(float64(n))
}

// publish wakes the waiters of a device or account key.
func (h *hub) publish(key string) {
	h.mu.Lock()
	n := h.wakeLocked(key)
	h.mu.Unlock()
	h.metrics.wakeups.Add(float64(n))
}

func (h *hub) wakeLocked(key string) int {
	n := 0
	for w := range h.watch[key] {
		select {
		case w.ch <- struct{}{}:
			n++
		default:
		}
	}
	return n
}

// pruneLocked forgets heads idle for longer than headTTL.
func (h *hub) pruneLocked(now time.Time) {
	for k, hd := range h.heads {
		if now.Sub(hd.at) > headTTL {
			delete(h.heads, k)
		}
	}
	h.lastPrune = now
}
