package delivery

import (
	"bytes"
	"slices"
	"time"
)

// Serving a woken long poll from the messages this node just committed.
//
// In a fan-out every receiver's long poll wakes for one new message and
// would read it from the database, each in its own read transaction: a
// fifth of qpcd's CPU per receipt on SQLite. The hub keeps, for a channel
// that has waiters when a message is published, the last few messages this
// node committed to it (recent), and a woken waiter whose every channel's
// new messages are all there answers from them instead of reading.
//
// The answer must be one a read could have given. A read made at the
// moment the newest of those messages committed would return them, and
// possibly more: writes committed earlier whose publish has not reached
// the hub yet. Leaving those out is harmless where the write only adds
// (another channel's messages, a new membership, an inbox item): its
// publish is on its way and wakes the device's next poll, or drops the
// view (hubview.go) that poll would otherwise park on. It is not harmless
// where the write takes access away: a device removed from a channel must
// not be handed the channel's next message because the removal's publish
// was late. So every write that removes a membership raises a fence before
// it is queued and lowers it after its publish (raiseFence); while a fence
// is up, or if one was raised since the waiter's read, the waiter reads.
//
// Several nodes (PostgreSQL): another node's removal raises no fence here,
// and its publish may arrive after this node's next message. What keeps
// the answer safe there is that every removal is an event in the
// channel's log (RemoveMembers, RevertEpoch): it holds a seq of its own,
// below that of any message committed after it, and it is never in recent
// (events carry no body here, and another node's messages neither), so a
// waiter that stood before the removal needs a message that is missing and
// reads; one whose read came after it no longer has the channel. The fence
// covers the same window on one node, belt and braces
// (TestRemoteRemovalNeverAnsweredFromMemory).

// Bounds of what recent holds: a channel's last few messages, small ones
// only, and a total for the node.
const (
	recentPerChannel = 32
	recentMaxBody    = 64 << 10
	recentMaxBytes   = 16 << 20
)

// recentWanted is how long a channel's log is kept up after its last
// waiter: a device that has just been answered polls again moments later,
// and its view answers from the log what was committed in between.
const recentWanted = 10 * time.Second

// cachedMessage is a committed channel message as a read returns it, with
// its expiry.
type cachedMessage struct {
	Message
	expiresMS int64
}

// recentLog is a channel's last published messages in seq order, oldest
// first. It may have gaps: the messages of one batch commit are published
// by their callers in no particular order, and a waiter answers from it
// only if every message it needs is there.
type recentLog struct {
	msgs     []*cachedMessage
	bytes    int
	wantedAt time.Time // when a publish last found a waiter on the channel
}

// raiseFence marks a write that may take a device's access away as in
// progress; the returned function lowers it and must be called after the
// write's publish (or its failure).
func (h *hub) raiseFence() (lower func()) {
	h.mu.Lock()
	h.fence++
	h.fenceGen++
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		h.fence--
		h.mu.Unlock()
	}
}

// keepRecentLocked records m, just published on key, if a poll may want
// it: a waiter watches the channel, or one did within recentWanted (the
// device is between two polls, and its next one may be answered from its
// view, hubview.go). Otherwise it forgets the channel's log (a poll that
// needs a message not kept reads).
func (h *hub) keepRecentLocked(key string, m *cachedMessage, now time.Time) {
	if !h.memoryServe {
		return
	}
	log := h.recent[key]
	watched := len(h.watch[key]) > 0
	wanted := watched || (log != nil && now.Sub(log.wantedAt) < recentWanted)
	if m == nil || !wanted || len(m.Body) > recentMaxBody || h.recentBytes+len(m.Body) > recentMaxBytes {
		h.dropRecentLocked(key, log)
		return
	}
	if log == nil {
		log = &recentLog{}
		h.recent[key] = log
	}
	if watched {
		log.wantedAt = now
	}
	i := len(log.msgs)
	for i > 0 && log.msgs[i-1].Seq >= m.Seq {
		i--
	}
	switch {
	case i < len(log.msgs) && log.msgs[i].Seq == m.Seq:
		return // published twice
	case i == 0 && len(log.msgs) == recentPerChannel:
		return // older than everything kept
	}
	// A copy of its own: the caller's slices may be reused after the call.
	own := *m
	own.ChannelID, own.Body = bytes.Clone(m.ChannelID), bytes.Clone(m.Body)
	log.msgs = slices.Insert(log.msgs, i, &own)
	log.bytes += len(m.Body)
	h.recentBytes += len(m.Body)
	if len(log.msgs) > recentPerChannel {
		old := log.msgs[0]
		log.bytes -= len(old.Body)
		h.recentBytes -= len(old.Body)
		log.msgs = slices.Delete(log.msgs, 0, 1)
	}
}

func (h *hub) dropRecentLocked(key string, log *recentLog) {
	if log == nil {
		return
	}
	h.recentBytes -= log.bytes
	delete(h.recent, key)
}

// fromMemory answers w, woken, from the recent messages: for each channel
// of chans (where the device stood after its last read) the messages up to
// the head the hub knows. It reports false (read instead) when the answer
// could differ from a read's beyond leaving out writes still being
// published: a key w watches was published or a resync or fence happened
// since w's read began (gen), a message is not kept or has expired, or the
// answer would exceed limit messages or budget bytes. It also reports false
// when there is nothing to answer (a wake-up whose message w already had).
// The second result is chans moved to the answer's heads.
func (h *hub) fromMemory(w *waiter, chans []channelPos, gen int, limit, budget int, nowMS int64) (Batch, []channelPos, bool) {
	if !h.memoryServe {
		return Batch{}, nil, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.dirty || h.resyncs != gen || h.fence > 0 || h.fenceGen != w.fenceGen {
		return Batch{}, nil, false
	}
	var b Batch
	var moved []channelPos
	for i, p := range chans {
		head := h.heads[channelKey(p.id)].seq
		if head <= p.pos {
			continue
		}
		if !h.collectLocked(&b, p.id, p.pos, head, limit, &budget, nowMS) {
			return Batch{}, nil, false
		}
		if moved == nil {
			moved = append([]channelPos(nil), chans...)
		}
		moved[i].pos, moved[i].head = head, head
	}
	if b.empty() {
		return Batch{}, nil, false
	}
	return b, moved, true
}

// collectLocked appends to b channel id's kept messages after pos up to
// head, and reports false unless every one of them is kept, unexpired and
// within limit (messages in b) and budget (bytes, spent).
func (h *hub) collectLocked(b *Batch, id []byte, pos, head uint64, limit int, budget *int, nowMS int64) bool {
	log := h.recent[channelKey(id)]
	if log == nil {
		return false
	}
	want := pos + 1 // every message up to head, none missing
	for _, m := range log.msgs {
		if m.Seq < want || m.Seq > head {
			continue
		}
		if m.Seq != want || m.expiresMS <= nowMS || len(b.Messages) == limit || len(m.Body) > *budget {
			return false
		}
		want++
		*budget -= len(m.Body)
		b.Messages = append(b.Messages, m.Message)
	}
	return want == head+1
}
