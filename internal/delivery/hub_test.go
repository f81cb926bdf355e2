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

	h.publishChannel([]byte("chan-a"), 5, nil)
	w := h.newWaiter()
	if !h.addChannel(w, []byte("chan-a"), 4) {
		t.Fatal("a publish between read and registration was not reported")
	}
	h.remove(w)

	// Many channels published once, spread over ten minutes.
	for i := 0; i < 10000; i++ {
		now = now.Add(60 * time.Millisecond)
		h.publishChannel([]byte(fmt.Sprintf("chan-%d", i)), 1, nil)
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

// Another node's broadcasts act on this hub as local publishes do; a
// malformed payload is ignored; a resync wakes everyone and moves the
// generation, so a waiter between read and registration reads again.
func TestHubAppliesRemoteBroadcasts(t *testing.T) {
	h := newHub(newMetrics())
	var sent []string
	h.broadcast = func(topic, payload string) { sent = append(sent, topic+" "+payload) }
	woken := func(w *waiter) bool {
		select {
		case <-w.ch:
			return true
		default:
			return false
		}
	}

	w := h.newWaiter()
	if h.addChannel(w, []byte("chan"), 0) {
		t.Fatal("nothing was published yet")
	}
	h.applyRemote(topicChannel, "6368616e:7", false) // hex("chan"):7
	if !woken(w) || h.heads[channelKey([]byte("chan"))].seq != 7 {
		t.Fatal("a remote enqueue did not wake the channel's waiter or record its head")
	}
	h.add(w, deviceKey("d1"))
	h.applyRemote(topicKey, "646431", false) // hex(deviceKey("d1")) = hex("dd1")
	if !woken(w) {
		t.Fatal("a remote inbox item did not wake the device's waiter")
	}
	for _, bad := range []string{"", "zz:1", "6368616e", "6368616e:x"} {
		h.applyRemote(topicChannel, bad, false)
		h.applyRemote(topicKey, bad, false)
	}
	if woken(w) {
		t.Fatal("a malformed broadcast woke a waiter")
	}
	gen := h.generation()
	h.applyRemote(topicChannel, "", true)
	if !woken(w) || h.generation() == gen {
		t.Fatal("a resync did not wake every waiter and move the generation")
	}
	if len(sent) != 0 {
		t.Fatalf("remote broadcasts were sent on again: %v", sent)
	}
	h.remove(w)

	h.publishChannel([]byte("chan"), 8, nil)
	h.publish(accountKey("a1"))
	if len(sent) != 2 || sent[0] != topicChannel+" 6368616e:8" || sent[1] != topicKey+" 616131" { // hex("aa1")
		t.Fatalf("local publishes broadcast %q", sent)
	}
}
