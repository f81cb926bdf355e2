package auth

import (
	"crypto/sha256"
	"sync"
	"time"
)

// The two caches below take the per-RPC cost of Authenticate from an
// Ed25519 verification plus a database read (~110 µs here) to two map
// look-ups. Neither changes an outcome:
//
//   - verifiedTokens remembers tokens whose signature (and key) checked out.
//     A token's bytes never change, so neither does that result; expiry is
//     still checked against the clock on every call.
//   - deviceStates remembers a device's account, status and token generation.
//     Every write that changes them (revoke, disable, enable, refresh reuse)
//     calls invalidate after its transaction, and an epoch makes sure a read
//     that raced such a write cannot put stale state back. The short TTL only
//     bounds changes made outside this process.

// maxCached bounds each cache; when full it is emptied (cheap, and rare).
const maxCached = 1 << 16

// deviceStateTTL bounds how long a cached device state is trusted.
const deviceStateTTL = 5 * time.Second

type tokenKey [sha256.Size]byte

type verifiedTokens struct {
	mu sync.Mutex
	m  map[tokenKey]Claims
}

func (v *verifiedTokens) get(tok string) (tokenKey, Claims, bool) {
	k := tokenKey(sha256.Sum256([]byte(tok)))
	v.mu.Lock()
	c, ok := v.m[k]
	v.mu.Unlock()
	return k, c, ok
}

func (v *verifiedTokens) put(k tokenKey, c Claims) {
	v.mu.Lock()
	if v.m == nil || len(v.m) >= maxCached {
		v.m = make(map[tokenKey]Claims)
	}
	v.m[k] = c
	v.mu.Unlock()
}

// deviceState is what Authenticate needs to know about a token's device.
type deviceState struct {
	accountID, accountName string
	deviceActive           bool
	accountActive          bool
	gen                    uint64
	fetched                time.Time
}

type deviceStates struct {
	mu    sync.Mutex
	epoch uint64
	m     map[string]deviceState
}

// lookup returns a fresh cached state and the epoch to pass to store.
func (d *deviceStates) lookup(deviceID string, now time.Time) (deviceState, uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.m[deviceID]
	if ok && now.Sub(st.fetched) < deviceStateTTL && !now.Before(st.fetched) {
		return st, d.epoch, true
	}
	return deviceState{}, d.epoch, false
}

// store caches st unless an invalidation happened since lookup returned epoch.
func (d *deviceStates) store(deviceID string, st deviceState, epoch uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if epoch != d.epoch {
		return
	}
	if d.m == nil || len(d.m) >= maxCached {
		d.m = make(map[string]deviceState)
	}
	d.m[deviceID] = st
}

// invalidate forgets every cached state. Device and account state changes are
// rare admin or security events, so dropping everything keeps it simple.
func (d *deviceStates) invalidate() {
	d.mu.Lock()
	d.epoch++
	d.m = nil
	d.mu.Unlock()
}
