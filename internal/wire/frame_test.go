package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, size := range []int{1, 100, 64 << 10, 64<<10 + 1, 300_000} {
		body := bytes.Repeat([]byte{0xab}, size)
		var buf bytes.Buffer
		if err := WriteFrame(&buf, body); err != nil {
			t.Fatal(err)
		}
		got, err := ReadFrame(&buf, DefaultMaxFrame)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("size %d: err=%v equal=%v", size, err, bytes.Equal(got, body))
		}
	}
}

func TestFrameErrors(t *testing.T) {
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty input", nil, io.EOF},
		{"short header", []byte{0, 0}, ErrFrameTruncated},
		{"zero length", hdr(0), ErrEmptyFrame},
		{"over cap", hdr(DefaultMaxFrame + 1), ErrFrameTooLarge},
		{"4 GiB", hdr(^uint32(0)), ErrFrameTooLarge},
		{"short body", append(hdr(10), 1, 2, 3), ErrFrameTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(c.in), DefaultMaxFrame)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// A peer that announces a frame just under the cap and then sends a few bytes
// must not make the reader allocate the announced size.
func TestFrameAnnouncedButNotSentAllocatesLittle(t *testing.T) {
	in := append(binary.BigEndian.AppendUint32(nil, DefaultMaxFrame), make([]byte, 10)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := ReadFrame(bytes.NewReader(in), DefaultMaxFrame)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrFrameTruncated) {
		t.Fatalf("got %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<10 {
		t.Fatalf("allocated %d bytes for a 10-byte body announced as %d", grew, DefaultMaxFrame)
	}
}

// Over-cap frames are refused from the header: the body is never read.
func TestFrameOverCapReadsOnlyHeader(t *testing.T) {
	r := bytes.NewReader(append(binary.BigEndian.AppendUint32(nil, 1<<30), make([]byte, 1000)...))
	if _, err := ReadFrame(r, DefaultMaxFrame); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatal(err)
	}
	if r.Len() != 1000 {
		t.Fatalf("reader consumed %d body bytes", 1000-r.Len())
	}
}

// ReadFrameInto reads into the buffer it is given while it fits, and still
// reads frames larger than that buffer whole.
func TestReadFrameIntoReusesBuffer(t *testing.T) {
	reuse := make([]byte, 0, 4096)
	for _, size := range []int{1, 1000, 4096, 4097, 200_000} {
		body := bytes.Repeat([]byte{byte(size)}, size)
		var buf bytes.Buffer
		if err := WriteFrame(&buf, body); err != nil {
			t.Fatal(err)
		}
		got, err := ReadFrameInto(&buf, DefaultMaxFrame, reuse)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("size %d: err=%v equal=%v", size, err, bytes.Equal(got, body))
		}
		if same := size <= cap(reuse) && &got[0] == &reuse[:1][0]; size <= cap(reuse) && !same {
			t.Fatalf("size %d: a frame that fits the buffer was read into a new one", size)
		}
	}
	// The announced size is still checked before anything is read.
	over := binary.BigEndian.AppendUint32(nil, 5000)
	if _, err := ReadFrameInto(bytes.NewReader(over), 4000, reuse); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("over the cap: %v", err)
	}
}
