package keydir

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ErrFetchLimited: a fetch was refused because the KeyPackages of its
// target account were fetched too often (RESOURCE_EXHAUSTED). errors.As
// gives the *FetchLimitError with the retry time.
var ErrFetchLimited = errors.New("keydir: KeyPackage fetch limit reached")

// Reasons a fetch is refused (the label values of
// qpcd_keypackages_fetch_refused_total).
const (
	// ReasonPair: the fetcher used up its fetches of the target.
	ReasonPair = "pair"
	// ReasonTarget: all fetchers together used up the target's fetches.
	ReasonTarget = "target"
)

// FetchLimits bound how fast the pool of one account can be consumed. A
// fetch uses one KeyPackage of each of the target's devices; the server
// keeps about 10 per device (the client's default stock), so a fetcher
// that could fetch freely would empty it in a second, and every adder
// after it would get the same last-resort KeyPackage.
//
// Both limits are token buckets holding Per… fetches and refilled evenly
// over Window; a fetch takes a token from both or from neither.
type FetchLimits struct {
	// PerPair is how many fetches one account may make of another's
	// KeyPackages per Window; default 5. Adding someone to a group takes
	// one fetch (qpc keeps the fetched KeyPackages in its queued commit,
	// so a retried commit fetches nothing), so five cover adding a person
	// to a few groups at once; the bucket refills one fetch every
	// Window/PerPair (12 minutes by default).
	PerPair int
	// PerTarget is how many fetches of one account's KeyPackages all
	// fetchers together may make per Window; default 30. It stops many
	// accounts (one person's sybils) from draining the pool at PerPair
	// each; while it is used up the target cannot be added by anyone, so it
	// is well above what one person needs and refusals raise an alert.
	PerTarget int
	// Window is the refill period of both buckets; default 1h.
	Window time.Duration
}

func (l FetchLimits) withDefaults() FetchLimits {
	if l.PerPair <= 0 {
		l.PerPair = 5
	}
	if l.PerTarget <= 0 {
		l.PerTarget = 30
	}
	if l.Window <= 0 {
		l.Window = time.Hour
	}
	return l
}

// FetchLimitError is a refused fetch.
type FetchLimitError struct {
	// Its text does not repeat RetryAfter: the wire status carries it.
	Reason     string        // ReasonPair or ReasonTarget
	Target     string        // the target account's name
	Limit      int           // fetches per Window
	Window     time.Duration // refill period
	RetryAfter time.Duration // until the next fetch is allowed
}

func (e *FetchLimitError) Error() string {
	if e.Reason == ReasonPair {
		return fmt.Sprintf("%v: you may fetch the KeyPackages of %q %d times per %s (each fetch uses up one of each of their devices'); "+
			"retry after the wait", ErrFetchLimited, e.Target, e.Limit, e.Window)
	}
	return fmt.Sprintf("%v: the KeyPackages of %q were fetched %d times per %s by all accounts together, the most allowed; "+
		"their devices are refilling; retry after the wait", ErrFetchLimited, e.Target, e.Limit, e.Window)
}

// Is makes errors.Is(err, ErrFetchLimited) true.
func (e *FetchLimitError) Is(target error) bool { return target == ErrFetchLimited }

// maxBuckets bounds each bucket table. A bucket that has refilled is the
// same as none, so sweeps drop those first; only a flood of distinct
// (fetcher, target) pairs, itself bounded by the request rate limits, can
// make a sweep drop partly used ones.
const maxBuckets = 100_000

// buckets is a table of token buckets with one refill rate and burst.
type buckets struct {
	every     rate.Limit
	burst     int
	full      time.Duration // time to refill from empty
	m         map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim      *rate.Limiter
	seen     time.Time
	refusing bool // the last request was refused (audit once per run of refusals)
}

func newBuckets(n int, window time.Duration) buckets {
	return buckets{every: rate.Limit(float64(n) / window.Seconds()), burst: n, full: window, m: map[string]*bucket{}}
}

func (b *buckets) get(now time.Time, key string) *bucket {
	if e, ok := b.m[key]; ok {
		e.seen = now
		return e
	}
	if len(b.m) >= maxBuckets || now.Sub(b.lastSweep) >= b.full {
		b.lastSweep = now
		for k, e := range b.m {
			if now.Sub(e.seen) >= b.full {
				delete(b.m, k)
			}
		}
		for k := range b.m {
			if len(b.m) < maxBuckets*9/10 {
				break
			}
			delete(b.m, k)
		}
	}
	e := &bucket{lim: rate.NewLimiter(b.every, b.burst), seen: now}
	b.m[key] = e
	return e
}

// fetchLimiter applies FetchLimits. Time comes from the caller (the
// directory's injected clock).
type fetchLimiter struct {
	lim FetchLimits

	mu     sync.Mutex
	pair   buckets // key: fetcher account id, target account id
	target buckets // key: target account id
}

func newFetchLimiter(l FetchLimits) *fetchLimiter {
	l = l.withDefaults()
	return &fetchLimiter{lim: l, pair: newBuckets(l.PerPair, l.Window), target: newBuckets(l.PerTarget, l.Window)}
}

// admit takes one fetch of target by fetcher from both buckets, or none.
// On refusal it returns the error and whether this is the first refusal
// since the bucket last admitted a fetch (worth an audit event).
func (f *fetchLimiter) admit(now time.Time, fetcherID, targetID, targetName string) (*FetchLimitError, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.pair.get(now, fetcherID+"\x00"+targetID)
	pr := p.lim.ReserveN(now, 1)
	if d := pr.DelayFrom(now); d > 0 {
		pr.CancelAt(now)
		first := !p.refusing
		p.refusing = true
		return f.refusal(ReasonPair, targetName, f.lim.PerPair, d), first
	}
	t := f.target.get(now, targetID)
	tr := t.lim.ReserveN(now, 1)
	if d := tr.DelayFrom(now); d > 0 {
		tr.CancelAt(now)
		pr.CancelAt(now) // the fetcher keeps its token for when the target refills
		first := !t.refusing
		t.refusing = true
		return f.refusal(ReasonTarget, targetName, f.lim.PerTarget, d), first
	}
	p.refusing, t.refusing = false, false
	return nil, false
}

func (f *fetchLimiter) refusal(reason, target string, limit int, delay time.Duration) *FetchLimitError {
	// Whole seconds: the wait is minutes long, and a rounded-up figure never
	// sends the client back early.
	retry := delay.Truncate(time.Second) + time.Second
	return &FetchLimitError{Reason: reason, Target: target, Limit: limit, Window: f.lim.Window, RetryAfter: retry}
}
