package server

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/quicprochat/quicprochat/internal/delivery"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Rate-limit scopes (the metric's label values).
const (
	scopeIP      = obs.ScopeIP
	scopeAccount = obs.ScopeAccount
	scopeDevice  = obs.ScopeDevice
	// scopeAccountBytes buckets hold payload bytes, not requests.
	scopeAccountBytes = obs.ScopeAccountBytes
)

// Limiter-table bounds: at most maxLimiters token buckets live at once.
// A bucket idle long enough to have refilled completely is the same as a
// new one, so dropping it loses nothing; that is what a sweep removes.
const (
	defaultMaxLimiters = 100_000
	sweepEvery         = time.Minute
	// auditEvery: at most one ratelimit.hit audit event per key per interval
	// (the metric counts every refusal), so a flood cannot flood the audit log.
	auditEvery = time.Second
)

type limiterKey struct {
	scope, key string
}

type limiterEntry struct {
	lim        *rate.Limiter
	last       time.Time // last request seen
	lastAudit  time.Time
	suppressed int // refusals since the last audit event
}

// rateLimits holds one token bucket per source IP, account and device,
// all with limits.rate_limit per second and limits.rate_burst; a second
// table (bytes set) holds one bucket of payload bytes per account, with
// limits.byte_rate and limits.byte_burst. Time comes from the server's
// clock, so tests drive it.
type rateLimits struct {
	limit   rate.Limit
	burst   int
	bytes   bool // the tokens are payload bytes (refusals say so)
	now     func() time.Time
	metrics *obs.Metrics
	audit   *obs.Audit
	max     int

	mu        sync.Mutex
	m         map[limiterKey]*limiterEntry
	lastSweep time.Time
}

func newRateLimits(perSecond float64, burst int, now func() time.Time, m *obs.Metrics, a *obs.Audit) *rateLimits {
	return &rateLimits{
		limit: rate.Limit(perSecond), burst: burst, now: now, metrics: m, audit: a,
		max: defaultMaxLimiters, m: map[limiterKey]*limiterEntry{}, lastSweep: now(),
	}
}

// idleAfter is how long a bucket takes to refill from empty to full.
func (r *rateLimits) idleAfter() time.Duration {
	return time.Duration(float64(r.burst) / float64(r.limit) * float64(time.Second))
}

// allow takes one token from the bucket of (scope, key) or refuses with
// RESOURCE_EXHAUSTED and the time until a token is available.
func (r *rateLimits) allow(ctx context.Context, scope, key string) error {
	return r.allowN(ctx, scope, key, 1)
}

// allowN takes n tokens, or refuses with RESOURCE_EXHAUSTED and the time
// until n are available. n above the burst is taken as the burst: the size
// caps refuse such requests anyway, and a bucket never holds more.
func (r *rateLimits) allowN(ctx context.Context, scope, key string, n int) error {
	if key == "" || n <= 0 {
		return nil
	}
	n = min(n, r.burst)
	now := r.now()
	r.mu.Lock()
	k := limiterKey{scope, key}
	e, ok := r.m[k]
	if !ok {
		if len(r.m) >= r.max || now.Sub(r.lastSweep) >= sweepEvery {
			r.sweepLocked(now)
		}
		e = &limiterEntry{lim: rate.NewLimiter(r.limit, r.burst)}
		r.m[k] = e
	}
	e.last = now
	res := e.lim.ReserveN(now, n)
	delay := res.DelayFrom(now)
	if res.OK() && delay == 0 {
		r.mu.Unlock()
		return nil
	}
	if res.OK() {
		res.CancelAt(now)
	} else {
		delay = time.Second // burst < 1 cannot happen (config), but never answer "retry now"
	}
	var audit bool
	var suppressed int
	if now.Sub(e.lastAudit) >= auditEvery || now.Before(e.lastAudit) {
		audit, suppressed = true, e.suppressed
		e.lastAudit, e.suppressed = now, 0
	} else {
		e.suppressed++
	}
	r.mu.Unlock()

	retry := max(delay.Round(time.Millisecond), time.Millisecond)
	r.metrics.RateLimited.WithLabelValues(scope).Inc()
	if audit {
		r.audit.Event(ctx, "ratelimit.hit", slog.String("scope", scope), slog.String("subject", key),
			slog.Int64("retry_after_ms", retry.Milliseconds()), slog.Int("suppressed", suppressed))
	}
	e2 := wire.Errorf(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, "rate limit (%s) exceeded; retry later", scope)
	if r.bytes {
		e2 = wire.Errorf(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED,
			"byte rate limit exceeded: this request stores %s; an account may store %s/s with bursts of %s (limits.byte_rate, limits.byte_burst); retry in %s",
			delivery.FormatBytes(int64(n)), delivery.FormatBytes(int64(r.limit)), delivery.FormatBytes(int64(r.burst)), retry)
	}
	e2.RetryAfter = retry
	return e2
}

// sweepLocked drops buckets that have refilled completely; if the table is
// still full (a flood of distinct keys), it drops arbitrary buckets down to
// 90% of the cap, so memory stays bounded at the cost of forgetting some
// partly used buckets.
func (r *rateLimits) sweepLocked(now time.Time) {
	r.lastSweep = now
	idle := r.idleAfter()
	for k, e := range r.m {
		if now.Sub(e.last) >= idle {
			delete(r.m, k)
		}
	}
	for k := range r.m {
		if len(r.m) < r.max*9/10 {
			break
		}
		delete(r.m, k)
	}
}

// size is the number of live buckets (tests).
func (r *rateLimits) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// ipKey is the per-IP bucket key: the address for IPv4, the /64 prefix for
// IPv6 (one host usually owns a whole /64).
func ipKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, err := a.Prefix(64)
	if err != nil {
		return a.String()
	}
	return p.String()
}
