package client

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is capped exponential backoff with full jitter: before retry n
// (n = 0, 1, ...) the client waits a uniformly random time in
// [0, min(Max, Base*2^n)], or the server's retry-after when that is longer.
type Backoff struct {
	Base        time.Duration // default 100ms
	Max         time.Duration // cap of one wait; default 10s
	MaxAttempts int           // calls in all, first included; default 8
	// DialTimeout bounds one attempt to connect (0: only the QUIC
	// handshake timeout, 10s); interactive commands set it shorter.
	DialTimeout time.Duration
	// OnRetry, if set, is told before each wait (attempt counts from 1):
	// the CLI shows it as progress on a terminal.
	OnRetry func(method string, attempt, maxAttempts int, wait time.Duration, err error)
	// Rand returns a uniform value in [0, n); nil: math/rand/v2. Tests
	// inject a fixed source.
	Rand func(n int64) int64
	// Sleep waits d or until ctx ends; nil: a real timer. Tests inject a
	// fake that records the waits.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now is the clock of the failover rules (how long a failed node is
	// avoided, failover.go); nil: time.Now. Tests inject a fake.
	Now func() time.Time
}

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = 100 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 10 * time.Second
	}
	if b.MaxAttempts <= 0 {
		b.MaxAttempts = 8
	}
	if b.Rand == nil {
		b.Rand = rand.Int64N
	}
	if b.Sleep == nil {
		b.Sleep = sleepCtx
	}
	if b.Now == nil {
		b.Now = time.Now
	}
	return b
}

// Delay is the wait before retry n (0-based), given the server's
// retry-after (0 if none).
func (b Backoff) Delay(n int, retryAfter time.Duration) time.Duration {
	b = b.withDefaults()
	ceil := b.Max
	if n < 40 {
		if c := b.Base << n; c > 0 && c < ceil {
			ceil = c
		}
	}
	d := time.Duration(b.Rand(int64(ceil) + 1))
	if retryAfter > d {
		d = min(retryAfter, b.Max)
	}
	return d
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
