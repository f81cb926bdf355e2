package delivery

import (
	"container/heap"
	"sync"
	"time"
)

// pollDeadlines ends long polls at their timeouts from one runtime timer.
//
// A timer per parked poll doubles the runtime's timer heap (quic-go keeps
// one per connection), and the runtime scans a whole heap whenever a timer
// in it was moved earlier, which quic-go does on every packet (its ACK
// alarm): with 10 000 idle devices that scan was a sixth of qpcd's idle CPU
// (docs/benchmarks.md, "Idle connections"). Here the deadlines live in a
// heap of their own, and the one timer moves earlier only when a poll
// arrives with a deadline before every other's.
type pollDeadlines struct {
	mu    sync.Mutex
	h     deadlineHeap
	timer *time.Timer
	armed time.Time // when timer fires; zero: not armed
	now   func() time.Time
}

// pollDeadline is one poll's: done is closed at its time.
type pollDeadline struct {
	at   time.Time
	done chan struct{}
	i    int // index in the heap; -1 once fired or removed
}

func newPollDeadlines() *pollDeadlines {
	return &pollDeadlines{now: time.Now}
}

// add returns a deadline whose done channel is closed after d. The caller
// must remove it when the poll ends.
func (p *pollDeadlines) add(d time.Duration) *pollDeadline {
	pd := &pollDeadline{done: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	pd.at = p.now().Add(d)
	if d <= 0 {
		pd.i = -1
		close(pd.done)
		return pd
	}
	heap.Push(&p.h, pd)
	if p.armed.IsZero() || pd.at.Before(p.armed) {
		p.armLocked(pd.at)
	}
	return pd
}

// remove forgets pd (a poll that ended before its deadline). The timer is
// left as it is: if it was armed for pd it fires for nothing and re-arms.
func (p *pollDeadlines) remove(pd *pollDeadline) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pd.i >= 0 {
		heap.Remove(&p.h, pd.i)
		pd.i = -1
	}
}

func (p *pollDeadlines) armLocked(at time.Time) {
	p.armed = at
	d := at.Sub(p.now())
	if p.timer == nil {
		p.timer = time.AfterFunc(d, p.fire)
		return
	}
	p.timer.Reset(d)
}

// fire closes every deadline that has passed and arms the timer for the
// next one.
func (p *pollDeadlines) fire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for len(p.h) > 0 && !p.h[0].at.After(now) {
		pd := heap.Pop(&p.h).(*pollDeadline)
		pd.i = -1
		close(pd.done)
	}
	p.armed = time.Time{}
	if len(p.h) > 0 {
		p.armLocked(p.h[0].at)
	}
}

// pending is how many deadlines wait (tests).
func (p *pollDeadlines) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.h)
}

type deadlineHeap []*pollDeadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *deadlineHeap) Push(x any) {
	pd := x.(*pollDeadline)
	pd.i = len(*h)
	*h = append(*h, pd)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	pd := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return pd
}
