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

// FuzzDecodeEnqueueBatch feeds arbitrary bodies through the server's
// decoding of an EnqueueBatch request and the client's of its response: a
// request that decodes holds at most 64 valid items (the documented cap)
// and re-encodes to something that decodes again; no input panics.
func FuzzDecodeEnqueueBatch(f *testing.F) {
	g := goldenMessages()
	for _, name := range []string{"delivery_enqueue_batch_request", "delivery_enqueue_batch_response", "delivery_enqueue_request"} {
		b, _ := Marshal(g[name])
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		var req qpcv1.EnqueueBatchRequest
		if err := DecodeBody(in, &req); err == nil {
			if n := len(req.GetItems()); n > 64 {
				t.Fatalf("a request of %d items passed validation", n)
			}
			for i, it := range req.GetItems() {
				if len(it.GetChannelId()) != 16 || it.GetMessageId() == "" || len(it.GetMlsMessage()) == 0 {
					t.Fatalf("item %d passed validation without its required fields: %v", i, it)
				}
			}
			re, err := Marshal(&req)
			if err != nil {
				t.Fatalf("valid request does not re-encode: %v", err)
			}
			var again qpcv1.EnqueueBatchRequest
			if err := DecodeBody(re, &again); err != nil {
				t.Fatalf("re-encoded request does not decode: %v", err)
			}
		}
		var resp qpcv1.EnqueueBatchResponse
		if err := DecodeBody(in, &resp); err == nil {
			for _, r := range resp.GetResults() {
				_ = StatusName(r.GetStatus())
			}
		}
	})
}
