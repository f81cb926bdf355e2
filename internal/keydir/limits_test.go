package keydir

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The limiter's rules, without a database: per (fetcher, target) and per
// target, both or neither, refilled evenly over the window.
func TestFetchLimiterRules(t *testing.T) {
	c := newClock()
	f := newFetchLimiter(FetchLimits{PerPair: 3, PerTarget: 5, Window: time.Hour})
	admit := func(fetcher, target string) *FetchLimitError {
		t.Helper()
		e, _ := f.admit(c.Now(), fetcher, target, "name-"+target)
		return e
	}
	for i := range 3 {
		if e := admit("a", "t"); e != nil {
			t.Fatalf("a's fetch %d of t refused: %v", i+1, e)
		}
	}
	e := admit("a", "t")
	if e == nil || e.Reason != ReasonPair || e.Limit != 3 || e.Target != "name-t" {
		t.Fatalf("a's 4th fetch of t: %+v", e)
	}
	// One fetch comes back every 20 minutes; the client is told when.
	if e.RetryAfter < 20*time.Minute || e.RetryAfter > 20*time.Minute+time.Second {
		t.Fatalf("retry after %v, want about 20m", e.RetryAfter)
	}
	if e := admit("a", "u"); e != nil { // another target is another bucket
		t.Fatalf("a's fetch of u: %v", e)
	}
	// b may fetch t too, until all fetchers together reach 5.
	for i := range 2 {
		if e := admit("b", "t"); e != nil {
			t.Fatalf("b's fetch %d of t: %v", i+1, e)
		}
	}
	e = admit("b", "t")
	if e == nil || e.Reason != ReasonTarget || e.Limit != 5 {
		t.Fatalf("t's 6th fetch: %+v", e)
	}
	if e.RetryAfter < 12*time.Minute || e.RetryAfter > 12*time.Minute+time.Second {
		t.Fatalf("retry after %v, want about 12m (an hour / 5)", e.RetryAfter)
	}
	// Refusals by the target bucket cost b nothing: after 12 minutes t has
	// one fetch again and b (1 of 3 pair fetches left) gets it.
	for range 5 {
		if e := admit("b", "t"); e == nil || e.Reason != ReasonTarget {
			t.Fatalf("hammering t: %+v", e)
		}
	}
	c.Advance(12 * time.Minute)
	if e := admit("b", "t"); e != nil {
		t.Fatalf("b after t refilled one: %v", e)
	}
	if e := admit("c", "t"); e == nil || e.Reason != ReasonTarget {
		t.Fatalf("t has no fetch left: %+v", e)
	}
	// A full window later every bucket is full again.
	c.Advance(time.Hour)
	for i := range 3 {
		if e := admit("a", "t"); e != nil {
			t.Fatalf("a's fetch %d of t after the window: %v", i+1, e)
		}
	}
	if e := admit("a", "t"); e == nil || e.Reason != ReasonPair {
		t.Fatalf("a's 4th fetch after the window: %+v", e)
	}
}

// Only the first refusal of a run is audited (a flood cannot flood the
// audit log); an admitted fetch starts a new run.
func TestFetchLimiterFirstRefusal(t *testing.T) {
	c := newClock()
	f := newFetchLimiter(FetchLimits{PerPair: 1, PerTarget: 10, Window: time.Hour})
	if e, _ := f.admit(c.Now(), "a", "t", "t"); e != nil {
		t.Fatal(e)
	}
	var firsts int
	for range 5 {
		e, first := f.admit(c.Now(), "a", "t", "t")
		if e == nil {
			t.Fatal("admitted beyond the limit")
		}
		if first {
			firsts++
		}
	}
	if firsts != 1 {
		t.Fatalf("%d refusals marked first, want 1", firsts)
	}
	c.Advance(time.Hour)
	if e, _ := f.admit(c.Now(), "a", "t", "t"); e != nil {
		t.Fatal(e)
	}
	if _, first := f.admit(c.Now(), "a", "t", "t"); !first {
		t.Fatal("a new run of refusals is not marked first")
	}
}

// The bucket tables stay bounded by maxBuckets under a flood of pairs.
func TestFetchLimiterBounded(t *testing.T) {
	c := newClock()
	f := newFetchLimiter(FetchLimits{PerPair: 2, PerTarget: 1 << 30, Window: time.Hour})
	for i := range maxBuckets + 5000 {
		f.admit(c.Now(), fmt.Sprint(i), "t", "t")
	}
	if n := len(f.pair.m); n > maxBuckets {
		t.Fatalf("%d pair buckets, cap %d", n, maxBuckets)
	}
	// Buckets that refilled are dropped by the next sweep.
	c.Advance(time.Hour)
	f.admit(c.Now(), "new", "t", "t")
	if n := len(f.pair.m); n != 1 {
		t.Fatalf("%d pair buckets after a quiet window, want 1", n)
	}
}

// The drain from issue 23 against the directory and a real store: one
// fetcher gets PerPair KeyPackages, many fetchers together PerTarget; the
// owner's device is told to refill; refusals are counted.
func TestFetchDrainIsBounded(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.MaxPerAccount = 100
		o.FetchLimits = FetchLimits{PerPair: 5, PerTarget: 30, Window: time.Hour}
	})
	alice := e.devs.add(t, "alice", "dev-a1")
	if _, err := e.dir.Upload(ctx, alice.ID, e.kps(t, alice, 100), e.kp(t, alice, nil)); err != nil {
		t.Fatal(err)
	}
	if e.dir.NeedsRefill(alice.ID) {
		t.Fatal("refill signalled before any fetch")
	}
	drain := func(fetcher testDevice) (got int, err error) {
		for range 100 {
			res, err := e.dir.Fetch(ctx, fetcher.AccountID, fetcher.ID, "alice", "")
			if err != nil {
				return got, err
			}
			if len(res.Packages) != 1 || res.Packages[0].LastResort {
				t.Fatalf("fetch %d: %+v", got+1, res)
			}
			got++
		}
		return got, nil
	}
	mallory := e.devs.add(t, "mallory", "dev-m1")
	got, err := drain(mallory)
	var le *FetchLimitError
	if got != 5 || !errors.Is(err, ErrFetchLimited) || !errors.As(err, &le) || le.Reason != ReasonPair || le.RetryAfter <= 0 {
		t.Fatalf("one fetcher took %d KeyPackages, then %v", got, err)
	}
	if !e.dir.NeedsRefill(alice.ID) {
		t.Fatal("the owner's device is not told to refill")
	}
	if _, err := e.dir.Count(ctx, alice.AccountID, alice.ID); err != nil {
		t.Fatal(err)
	}
	if e.dir.NeedsRefill(alice.ID) {
		t.Fatal("counting its stock did not clear the refill signal")
	}
	// Sybils: each gets its 5 until the target's 30 are gone.
	total := got
	for i := range 20 {
		s := e.devs.add(t, fmt.Sprintf("sybil%d", i), fmt.Sprintf("dev-s%d", i))
		n, err := drain(s)
		total += n
		if err == nil {
			t.Fatal("a sybil was never refused")
		}
	}
	if total != 30 {
		t.Fatalf("all fetchers together took %d KeyPackages, want 30", total)
	}
	if c, _ := e.dir.Count(ctx, alice.AccountID, alice.ID); c.Device != 70 {
		t.Fatalf("pool left %d, want 70", c.Device)
	}
	// mallory and the first five sybils stop at their own limit, the other
	// fifteen at the target's.
	if v := testutil.ToFloat64(e.dir.metrics.fetchRefused.WithLabelValues(ReasonPair)); v != 6 {
		t.Fatalf("refused{pair} = %v", v)
	}
	if v := testutil.ToFloat64(e.dir.metrics.fetchRefused.WithLabelValues(ReasonTarget)); v != 15 {
		t.Fatalf("refused{target} = %v", v)
	}
	// An upload (the owner's refill) also clears the signal.
	if _, err := e.dir.Fetch(ctx, alice.AccountID, alice.ID, "alice", ""); err == nil {
		t.Fatal("the target's budget is spent for its own devices too")
	}
	e.clock.Advance(2 * time.Minute) // one target fetch per 2 minutes
	if _, err := e.dir.Fetch(ctx, mallory.AccountID, mallory.ID, "alice", ""); !errors.Is(err, ErrFetchLimited) {
		t.Fatalf("mallory after 2 minutes: %v (her pair bucket refills one per 12 minutes)", err)
	}
	bob := e.devs.add(t, "bob", "dev-b1")
	if _, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", ""); err != nil {
		t.Fatalf("bob after the target refilled one: %v", err)
	}
	if !e.dir.NeedsRefill(alice.ID) {
		t.Fatal("no refill signal after bob's fetch")
	}
	if _, err := e.dir.Upload(ctx, alice.ID, e.kps(t, alice, 1), nil); err != nil {
		t.Fatal(err)
	}
	if e.dir.NeedsRefill(alice.ID) {
		t.Fatal("uploading did not clear the refill signal")
	}
}
