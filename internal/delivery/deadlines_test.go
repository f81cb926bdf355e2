package delivery

import (
	"testing"
	"time"
)

// TestPollDeadlines: deadlines close in time order from the one timer,
// including one added later with an earlier time; a removed deadline never
// closes; a zero timeout is closed at once.
func TestPollDeadlines(t *testing.T) {
	p := newPollDeadlines()
	closed := func(pd *pollDeadline) bool {
		select {
		case <-pd.done:
			return true
		default:
			return false
		}
	}
	waitClosed := func(what string, pd *pollDeadline) {
		t.Helper()
		select {
		case <-pd.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not closed", what)
		}
	}
	late := p.add(40 * time.Millisecond)
	hour := p.add(time.Hour)
	removed := p.add(20 * time.Millisecond)
	early := p.add(10 * time.Millisecond) // earlier than every other: re-arms the timer
	p.remove(removed)
	if zero := p.add(0); !closed(zero) {
		t.Fatal("a zero timeout is not closed at once")
	}
	waitClosed("the earliest deadline", early)
	if closed(late) {
		t.Fatal("the 40 ms deadline closed with the 10 ms one")
	}
	waitClosed("the later deadline", late)
	if closed(removed) {
		t.Fatal("a removed deadline closed")
	}
	if closed(hour) || p.pending() != 1 {
		t.Fatalf("the hour's deadline: closed %v, %d pending", closed(hour), p.pending())
	}
	p.remove(hour)
	p.remove(hour) // twice: nothing happens
	if p.pending() != 0 {
		t.Fatalf("%d pending after removal", p.pending())
	}
}
