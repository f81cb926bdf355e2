package delivery

import (
	"fmt"
	"testing"
	"time"
)

// The heads map must stay the size of the recently active channels, while
// a head still closes the read/register race for as long as it matters.
func TestHubHeadsArePruned(t *testing.T) {
	h := newHub(newMetrics())
	now := time.Unix(1764000000, 0)
	h.now = func() time.Time { return now }

	h.publishChannel([]byte("chan-a"), 5)
	w := h.newWaiter()
	if !h.addChannel(w, []byte("chan-a"), 4) {
		t.Fatal("a publish between read and registration was not reported")
	}
	h.remove(w)

	// Many channels published once, spread over ten minutes.
	for i := 0; i < 10000; i++ {
		now = now.Add(60 * time.Millisecond)
		h.publishChannel([]byte(fmt.Sprintf("chan-%d", i)), 1)
	}
	if n := len(h.heads); n > 2200 {
		t.Fatalf("heads holds %d channels; only about a minute's worth (1000) should stay", n)
	}
	if _, ok := h.heads[channelKey([]byte("chan-a"))]; ok {
		t.Fatal("an idle channel's head was never pruned")
	}
	// A recent head is still there and still closes the race.
	w = h.newWaiter()
	if !h.addChannel(w, []byte("chan-9999"), 0) {
		t.Fatal("a recent head was pruned")
	}
	h.remove(w)
}
