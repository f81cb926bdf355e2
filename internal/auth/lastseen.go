package auth

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// lastSeen remembers when this process last wrote each device's
// last_seen_at, so that a device making many calls costs one write per
// Service.seenEvery, not one per call. Several nodes each write at most as
// often; the UPDATE only ever moves the time forward.
type lastSeen struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// due reports whether deviceID's last-seen time should be written at now,
// and if so marks it written.
func (l *lastSeen) due(deviceID string, now time.Time, every time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.m[deviceID]; ok && now.Sub(t) < every && !now.Before(t) {
		return false
	}
	if l.m == nil || len(l.m) >= maxCached {
		l.m = make(map[string]time.Time)
	}
	l.m[deviceID] = now
	return true
}

// touch records that deviceID made an authenticated call at now (see
// lastSeen). A failed write is logged and does not fail the call: the
// time is informational (qpcctl devices list).
func (s *Service) touch(ctx context.Context, deviceID string, now time.Time) {
	if !s.seen.due(deviceID, now, s.seenEvery) {
		return
	}
	// Not cancelled with the call: a client that hangs up right after its
	// request still was seen.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE devices SET last_seen_at = ? WHERE id = ? AND last_seen_at < ?", ms(now), deviceID, ms(now))
		return err
	})
	if err != nil {
		s.log.Debug("auth: record a device's last-seen time", "device_id", deviceID, "error", err)
	}
}
