package delivery

import "time"

// A device's view: what its last long-poll read found, kept by the hub so
// that the poll it sends next can park without reading the database when
// nothing can have changed (in a fan-out, every receiver's next poll finds
// nothing: half of the reads per receipt).
//
// The view records, per channel the device reads, the channel's head in the
// read's snapshot and a lower bound of the device's acknowledged position
// (its cursor or its membership's start), and that the inbox was empty
// beyond inboxAfter. It stays true while no key the read depends on is
// published:
//
//   - the channels the device reads and its inbox change only with a
//     publish of its account or device key (membership changes, inbox
//     items), which deletes the view;
//   - a channel's head moves only with a channel publish, which the hub
//     records in heads; a view younger than headTTL/2 can trust heads,
//     since a head published after the view was made is not pruned for
//     headTTL;
//   - a cursor only moves forward (Ack), so the lower bound stays one;
//   - expiry and the retention sweep only take messages away.
//
// So a poll whose read-ahead positions reach the view's head of every
// channel, while no channel's head has moved since, with an inbox position
// at least the view's, would read nothing, and parks on the view's
// channels at once. Where heads have moved since, by messages this node
// committed and still keeps (hubrecent.go), the same poll is answered with
// them, as a woken poll would be, instead of reading. It parks at the
// view's heads, never further: a head that moved since may be another
// node's removal of the device, and a position past it would let a memory
// answer skip it (hubrecent.go; TestParkedPositionStaysWhereTheViewWas).
// A publish made between the commit and the hub's knowledge of it wakes
// the parked poll like any waiter: the view can make a poll wait for a
// wake-up that is already on its way, never miss one. On PostgreSQL other nodes' commits
// arrive through LISTEN; a view is only made and used while that
// connection is up and has not been lost in between (store.ListenState),
// and a resync (wakeAll) forgets every view.

// viewTTL bounds a view's age (see heads and headTTL).
const viewTTL = headTTL / 2

// maxViewChannels bounds the channels a view records; a device in more
// channels always reads.
const maxViewChannels = 256

type view struct {
	account    string
	chans      []channelPos // head: the snapshot's; base: a lower bound of the acknowledged position
	inboxAfter uint64
	at         time.Time
	gen        int    // the hub's generation when made
	fenceGen   uint64 // the hub's fence generation when the read it stands on began (hubrecent.go)
	flips      int64  // store.ListenState's counter when made
}

// setView stores what w's read found for device c, unless a key w watches
// was published since the read began (w.dirty) or a resync happened since
// gen. Nothing is stored for a device in too many channels or a read
// whose reply was cut short (the caller checks).
func (h *hub) setView(w *waiter, c Caller, chans []channelPos, inboxAfter uint64, gen int) {
	if len(chans) > maxViewChannels || h.listen == nil {
		return
	}
	up, flips := h.listen()
	if !up {
		return
	}
	v := &view{chans: chans, inboxAfter: inboxAfter, at: h.now(), gen: gen, fenceGen: w.fenceGen, flips: flips}
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.dirty || h.resyncs != gen {
		return
	}
	if old := h.views[c.DeviceID]; old != nil && old.account != c.AccountID {
		h.dropViewLocked(c.DeviceID)
	}
	v.account = c.AccountID
	h.views[c.DeviceID] = v
	devs := h.accountViews[c.AccountID]
	if devs == nil {
		devs = map[string]struct{}{}
		h.accountViews[c.AccountID] = devs
	}
	devs[c.DeviceID] = struct{}{}
}

// fromView answers device c's poll with read-ahead positions after from
// its view, without a read, when it can: ok with an empty batch means the
// read would find nothing and the poll parks on chans, each at the
// position the poll stands at; ok with messages means those are what a
// read would return: the channels' messages committed on this node since
// the view, all of them still kept (hubrecent.go), under the same rules
// as a woken poll's answer from memory (no fence raised since the view's
// read, nothing missing, within limit and budget); chans then stand after
// them.
func (h *hub) fromView(c Caller, after After, limit, budget int, nowMS int64) (b Batch, chans []channelPos, ok bool) {
	if h.listen == nil {
		return Batch{}, nil, false
	}
	up, flips := h.listen()
	if !up {
		return Batch{}, nil, false
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.views[c.DeviceID]
	if v == nil || v.account != c.AccountID || v.flips != flips || v.gen != h.resyncs || now.Sub(v.at) >= viewTTL || now.Before(v.at) {
		return Batch{}, nil, false
	}
	if after.Inbox < v.inboxAfter {
		return Batch{}, nil, false
	}
	// Messages may be answered only while no write that takes access away
	// is in progress or has been since the view's read.
	answerable := h.memoryServe && h.fence == 0 && h.fenceGen == v.fenceGen
	out := make([]channelPos, len(v.chans))
	for i, p := range v.chans {
		pos := max(p.base, after.Channels[string(p.id)])
		if pos < p.head {
			return Batch{}, nil, false
		}
		head := h.heads[channelKey(p.id)].seq
		if head > p.head {
			// Committed since the view. The poll must stand exactly at
			// the view's head, where the device was last served: a head
			// published since may be another node's removal of this
			// device whose key publish is still on its way (the view
			// would then be gone), and a position past it, which only a
			// client claiming what it was never sent can hold, must not
			// be taken on trust (TestParkedPositionStaysWhereTheViewWas).
			// The removal holds a seq of its own that is never kept, so
			// collecting from the view's head finds it missing and reads.
			if pos != p.head || !answerable || !h.collectLocked(&b, p.id, p.head, head, limit, &budget, nowMS) {
				return Batch{}, nil, false
			}
			out[i] = channelPos{id: p.id, kind: p.kind, pos: head, head: head, base: p.base}
			continue
		}
		out[i] = channelPos{id: p.id, kind: p.kind, pos: p.head, head: p.head, base: p.base}
	}
	return b, out, true
}

// forgetLocked deletes the views a publish of key makes stale.
func (h *hub) forgetLocked(key string) {
	if len(h.views) == 0 || len(key) == 0 {
		return
	}
	switch key[0] {
	case 'a':
		for d := range h.accountViews[key[1:]] {
			delete(h.views, d)
		}
		delete(h.accountViews, key[1:])
	case 'd':
		h.dropViewLocked(key[1:])
	}
}

// forgetAllLocked deletes every view (a resync).
func (h *hub) forgetAllLocked() {
	clear(h.views)
	clear(h.accountViews)
}

func (h *hub) dropViewLocked(device string) {
	v := h.views[device]
	if v == nil {
		return
	}
	delete(h.views, device)
	if devs := h.accountViews[v.account]; devs != nil {
		delete(devs, device)
		if len(devs) == 0 {
			delete(h.accountViews, v.account)
		}
	}
}

// pruneViewsLocked drops views too old to be used.
func (h *hub) pruneViewsLocked(now time.Time) {
	for d, v := range h.views {
		if now.Sub(v.at) >= viewTTL {
			h.dropViewLocked(d)
		}
	}
}
