package mls

import (
	"bytes"
	"runtime"
	"testing"
)

// Bytes hands out an alias of the key; the key must stay intact as long as
// that alias is in use, even when the Secret itself is no longer referenced
// (the caller passes Bytes() on and drops the Secret, as DecryptWithLabel
// does). With the wipe tied to a separate owner object this zeroed the key
// under the reader after the next GC.
func TestSecretBytesOutliveTheSecret(t *testing.T) {
	for _, n := range []int{1, 16, 32, 33, 64, 66, 128, 129, 1024} {
		want := bytes.Repeat([]byte{0xA5}, n)
		b := NewSecret(want).Bytes() // the Secret is dropped right here
		for range 3 {
			runtime.GC()
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("%d-byte secret changed under a live alias after GC: %x", n, b)
		}
		runtime.KeepAlive(b)
	}
}

// adoptSecret takes the bytes over: the caller's buffer is zeroed, so no
// second, unwiped copy of the key stays behind.
func TestAdoptSecretClearsTheSource(t *testing.T) {
	src := bytes.Repeat([]byte{7}, 48)
	s := adoptSecret(src)
	if !bytes.Equal(src, make([]byte, 48)) {
		t.Fatal("adoptSecret left the source bytes in place")
	}
	if !bytes.Equal(s.Bytes(), bytes.Repeat([]byte{7}, 48)) {
		t.Fatal("adoptSecret lost the bytes")
	}
	s.Wipe()
	if !s.IsZero() {
		t.Fatal("Wipe left bytes")
	}
}
