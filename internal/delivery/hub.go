package delivery

import (
	"encoding/hex"
	"strconv"
	"strings"
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
	resyncs   int // wakeAll calls

	// broadcast tells the other nodes of a PostgreSQL deployment (nil: one
	// node). Their hubs apply it with applyRemote.
	broadcast func(topic, payload string)

	// views: what each device's last long-poll read found (hubview.go),
	// by device id, and the devices with a view by account id. listen is
	// store.DB.ListenState (nil: no views are kept).
	views        map[string]*view
	accountViews map[string]map[string]struct{}
	listen       func() (up bool, flips int64)

	// recent: the last messages this node committed to channels with
	// waiters, by channel key (hubrecent.go), while memoryServe. fence
	// counts writes in progress that may take a device's access away;
	// fenceGen counts every fence raised.
	memoryServe bool
	recent      map[string]*recentLog
	recentBytes int
	fence       int
	fenceGen    uint64
}

// Broadcast topics: a channel's new head ("hexid:seq") and a device or
// account key (hex of the key).
const (
	topicChannel = "delivery.channel"
	topicKey     = "delivery.key"
)

// head is a channel's last published sequence number and when it moved.
type head struct {
	seq uint64
	at  time.Time
}

// headTTL is how long an idle channel's head is remembered.
const headTTL = time.Minute

type waiter struct {
	ch      chan struct{} // buffered 1: a wake-up is never lost, never blocks
	keys    []string
	counted bool // in the waiters gauge
	// dirty: a key it watches (its account or device) was published, or
	// every waiter was woken, since its read began (beginRead).
	dirty bool
	// fenceGen: the hub's when its read began (hubrecent.go).
	fenceGen uint64
}

func newHub(m *metrics) *hub {
	return &hub{watch: map[string]map[*waiter]struct{}{}, heads: map[string]head{}, now: time.Now, metrics: m,
		views: map[string]*view{}, accountViews: map[string]map[string]struct{}{}, recent: map[string]*recentLog{}}
}

func channelKey(id []byte) string { return "c" + string(id) }
func deviceKey(id string) string  { return "d" + id }
func accountKey(id string) string { return "a" + id }

func (h *hub) newWaiter() *waiter {
	return &waiter{ch: make(chan struct{}, 1)}
}

// waiting counts w in qpcd_long_poll_waiters from the moment it is
// registered on everything it reads and blocks (once per waiter), so the
// gauge says how many fetchers an enqueue would wake right now.
func (h *hub) waiting(w *waiter) {
	if !w.counted {
		w.counted = true
		h.metrics.waiters.Inc()
	}
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
	if w.counted {
		h.metrics.waiters.Dec()
	}
}

// publishChannel records committed messages up to seq and wakes the
// channel's waiters once, here and on the other nodes. msgs are the
// messages as a read would return them, if the caller has them (none, or
// nil: a woken waiter reads).
func (h *hub) publishChannel(id []byte, seq uint64, msgs ...*cachedMessage) {
	h.publishChannelLocal(id, seq, msgs...)
	if h.broadcast != nil {
		h.broadcast(topicChannel, hex.EncodeToString(id)+":"+strconv.FormatUint(seq, 10))
	}
}

func (h *hub) publishChannelLocal(id []byte, seq uint64, msgs ...*cachedMessage) {
	key := channelKey(id)
	now := h.now()
	h.mu.Lock()
	if hd := h.heads[key]; seq > hd.seq {
		h.heads[key] = head{seq: seq, at: now}
	}
	if len(msgs) == 0 {
		h.keepRecentLocked(key, nil, now)
	}
	for _, m := range msgs {
		h.keepRecentLocked(key, m, now)
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
	h.publishLocal(key)
	if h.broadcast != nil {
		h.broadcast(topicKey, hex.EncodeToString([]byte(key)))
	}
}

func (h *hub) publishLocal(key string) {
	h.mu.Lock()
	for w := range h.watch[key] {
		w.dirty = true
	}
	h.forgetLocked(key)
	n := h.wakeLocked(key)
	h.mu.Unlock()
	h.metrics.wakeups.Add(float64(n))
}

// applyRemote applies another node's broadcast to this node's waiters, as
// if the write had been made here. resync (broadcasts may have been lost)
// wakes every waiter: each reads again and waits again if nothing is new.
func (h *hub) applyRemote(topic, payload string, resync bool) {
	if resync {
		h.wakeAll()
		return
	}
	switch topic {
	case topicChannel:
		idHex, seqStr, ok := strings.Cut(payload, ":")
		id, err1 := hex.DecodeString(idHex)
		seq, err2 := strconv.ParseUint(seqStr, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return
		}
		h.publishChannelLocal(id, seq, nil)
	case topicKey:
		key, err := hex.DecodeString(payload)
		if err != nil {
			return
		}
		h.publishLocal(string(key))
	}
}

// wakeAll wakes every waiter and starts a new generation, so that a waiter
// between its read and its registration reads again too (see generation).
func (h *hub) wakeAll() {
	h.mu.Lock()
	n := 0
	for key, set := range h.watch {
		for w := range set {
			w.dirty = true
		}
		n += h.wakeLocked(key)
	}
	h.forgetAllLocked()
	h.resyncs++
	h.mu.Unlock()
	h.metrics.wakeups.Add(float64(n))
}

// generation changes with every wakeAll. A waiter notes it before a read
// and reads again if it changed by the time it has registered.
func (h *hub) generation() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.resyncs
}

// beginRead is generation for a waiter about to read: it also clears the
// waiter's dirty mark, so that afterwards the mark tells whether a key it
// watches was published since.
func (h *hub) beginRead(w *waiter) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	w.dirty = false
	w.fenceGen = h.fenceGen
	return h.resyncs
}

// watching is how many waiters are registered on key (tests).
func (h *hub) watching(key string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.watch[key])
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
			h.dropRecentLocked(k, h.recent[k])
		}
	}
	h.pruneViewsLocked(now)
	h.lastPrune = now
}
