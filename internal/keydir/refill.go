package keydir

import (
	"sync"
	"time"
)

// refillSignals remembers the devices whose KeyPackages were handed out
// since the device last counted or uploaded its own, so the delivery
// service can tell the device to refill at once (FetchResponse's
// refill_key_packages) instead of at its next hourly check. It lives in
// memory on the node that served the fetch; a device served by another
// node learns of the drain at its hourly check or its next Welcome.
type refillSignals struct {
	mu sync.Mutex
	m  map[string]time.Time // device id -> when its stock was last taken from
}

func (r *refillSignals) mark(now time.Time, devices []string) {
	if len(devices) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range devices {
		r.m[d] = now
	}
}

func (r *refillSignals) clear(device string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, device)
}

func (r *refillSignals) pending(device string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.m[device]
	return ok
}

// forgetBefore drops signals older than t: a device that has not fetched
// for that long counts its stock when it comes back anyway.
func (r *refillSignals) forgetBefore(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for d, at := range r.m {
		if at.Before(t) {
			delete(r.m, d)
		}
	}
}

// NeedsRefill reports whether KeyPackages of deviceID were handed out (from
// its pool, or its last-resort one) since the device last counted or
// uploaded its KeyPackages on this node: it should run its upkeep now.
func (d *Directory) NeedsRefill(deviceID string) bool { return d.refill.pending(deviceID) }
