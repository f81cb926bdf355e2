package wire

import (
	"bytes"
	"testing"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// FuzzDecodeFrame feeds arbitrary bytes through the server's whole request
// path up to dispatch: frame, envelope, version, validation, Ping body.
func FuzzDecodeFrame(f *testing.F) {
	for _, m := range goldenMessages() {
		b, _ := Marshal(m)
		f.Add(AppendFrame(nil, b))
	}
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		// As the server reads: into a reused buffer, which goes back to
		// its pool (and to the next request) once the envelope is decoded.
		body, err := ReadFrameInto(bytes.NewReader(in), 1<<16, make([]byte, 0, 512))
		if err != nil {
			return
		}
		req, err := DecodeRequest(body)
		if err != nil {
			return
		}
		before, _ := Marshal(req)
		for i := range body {
			body[i] ^= 0xff
		}
		if after, _ := Marshal(req); !bytes.Equal(before, after) {
			t.Fatal("the decoded request refers to its frame's buffer")
		}
		_ = DecodeBody(req.GetBody(), &qpcv1.PingRequest{})
		re, err := Marshal(req)
		if err != nil {
			t.Fatalf("valid request does not re-encode: %v", err)
		}
		if _, err := DecodeRequest(re); err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	b, _ := Marshal(goldenMessages()["response"])
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		resp, err := DecodeResponse(in)
		if err != nil {
			return
		}
		_ = Validate(resp)
	})
}
