// Package faultproxy is a userspace network fault injector for the chaos
// suite: a UDP proxy that drops, delays, reorders, duplicates and
// partitions datagrams, and a TCP proxy that partitions streams.
//
// The kernels the suite runs on have no netem qdisc, so faults are made in
// the proxy: the client talks to the proxy's address, the proxy to the
// server. Faults can be changed at any time (Set), so a scenario scripts
// them step by step; every random choice comes from one seeded RNG, so a
// scenario's fault pattern is reproducible from its seed.
package faultproxy

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Faults describe what happens to each packet (UDP) or byte (TCP: only
// Partition applies). The zero value forwards everything at once.
type Faults struct {
	// Loss is the probability that a datagram is dropped, per direction.
	Loss float64
	// Latency is the one-way delay added to every datagram, and Jitter the
	// largest deviation from it (uniform in [Latency-Jitter, Latency+Jitter]).
	// Jitter alone already reorders datagrams sent closer than 2*Jitter.
	Latency, Jitter time.Duration
	// Reorder is the probability that a datagram is held back by an extra
	// ReorderDelay (default 3*Jitter, at least 20 ms) so later ones overtake it.
	Reorder      float64
	ReorderDelay time.Duration
	// Duplicate is the probability that a datagram is delivered twice.
	Duplicate float64
	// Partition drops every datagram (UDP) or stops moving bytes (TCP:
	// connections stay open and nothing flows, as across a cut link;
	// what was held flows again when the partition heals).
	Partition bool
}

// Stats count what a proxy did, over both directions.
type Stats struct {
	Forwarded   int64 // datagrams (UDP) or chunks (TCP) delivered, duplicates included
	Dropped     int64 // lost to Loss
	Partitioned int64 // dropped (UDP) by a partition
	Duplicated  int64 // extra copies sent
	Reordered   int64 // held back by Reorder
}

// faultState is the RNG and the current faults, shared by the proxies.
type faultState struct {
	mu     sync.Mutex
	faults Faults
	rng    *rand.Rand
	stats  Stats
	healed chan struct{} // closed when no partition is in force
}

func newFaultState(seed uint64) *faultState {
	h := make(chan struct{})
	close(h)
	return &faultState{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), healed: h}
}

func (s *faultState) set(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.faults.Partition
	s.faults = f
	switch {
	case f.Partition && !was:
		s.healed = make(chan struct{})
	case !f.Partition && was:
		close(s.healed)
	}
}

func (s *faultState) get() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

func (s *faultState) snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// waitHealed returns a channel closed once no partition is in force.
func (s *faultState) waitHealed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healed
}

// plan decides the fate of one datagram: the delays at which to deliver its
// copies (none: dropped).
func (s *faultState) plan() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults
	if f.Partition {
		s.stats.Partitioned++
		return nil
	}
	if f.Loss > 0 && s.rng.Float64() < f.Loss {
		s.stats.Dropped++
		return nil
	}
	copies := 1
	if f.Duplicate > 0 && s.rng.Float64() < f.Duplicate {
		copies = 2
		s.stats.Duplicated++
	}
	out := make([]time.Duration, copies)
	for i := range out {
		d := f.Latency
		if f.Jitter > 0 {
			d += time.Duration(s.rng.Int64N(int64(2*f.Jitter)+1)) - f.Jitter
		}
		if i == 0 && f.Reorder > 0 && s.rng.Float64() < f.Reorder {
			extra := f.ReorderDelay
			if extra == 0 {
				extra = max(3*f.Jitter, 20*time.Millisecond)
			}
			d += extra
			s.stats.Reordered++
		}
		out[i] = max(d, 0)
	}
	s.stats.Forwarded += int64(copies)
	return out
}
