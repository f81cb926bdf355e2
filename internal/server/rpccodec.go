package server

import (
	"io"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Every RPC reads a request frame, marshals its reply and then the response
// envelope around it, and writes that as a frame: three buffers the size of
// the payload, and a fourth copy when the envelope was copied into a frame.
// The profiles of bench-peers showed allocation and GC at 8-15 % of qpcd's
// CPU, so these buffers come from a pool. A buffer goes back only once
// nothing refers to it: the request frame after the envelope is decoded
// (protobuf's decoder copies bytes and strings out of its input), the reply
// and the frame after quic-go's Write has returned (it copies what it keeps,
// or has sent it), and never after a failed write.

// maxPooledBuffer keeps large one-off buffers (a 5 MiB fetch) out of the
// pool, so that its memory stays near the size of ordinary RPCs.
const maxPooledBuffer = 256 << 10

// initialBuffer fits a 1 KiB message with its envelope and a small reply.
const initialBuffer = 4 << 10

var rpcBuffers = sync.Pool{New: func() any {
	b := make([]byte, 0, initialBuffer)
	return &b
}}

func getBuffer() *[]byte { return rpcBuffers.Get().(*[]byte) }

func putBuffer(p *[]byte, b []byte) {
	if cap(b) > maxPooledBuffer {
		return
	}
	*p = b[:0]
	rpcBuffers.Put(p)
}

// readRequestFrame reads one request frame into a pooled buffer; release
// gives it back once the envelope has been decoded.
func readRequestFrame(r io.Reader, limit int) ([]byte, func(), error) {
	p := getBuffer()
	frame, err := wire.ReadFrameInto(r, limit, *p)
	if err != nil {
		putBuffer(p, *p)
		return nil, noRelease, err
	}
	return frame, func() { putBuffer(p, frame) }, nil
}

// encodeBody marshals a handler's reply into a pooled buffer; release gives
// it back once the response envelope holding it has been written.
func encodeBody(msg proto.Message) ([]byte, func(), error) {
	p := getBuffer()
	b, err := wire.AppendMarshal(*p, msg)
	if err != nil {
		putBuffer(p, *p)
		return nil, noRelease, err
	}
	return b, func() { putBuffer(p, b) }, nil
}

// writeResponse writes resp as one frame, marshalled straight into a pooled
// frame buffer, in one Write call.
func writeResponse(w io.Writer, resp *qpcv1.Response) error {
	p := getBuffer()
	out, err := wire.AppendMessageFrame(*p, resp)
	if err != nil {
		putBuffer(p, *p)
		return err
	}
	if _, err := w.Write(out); err != nil {
		// quic-go may still refer to a buffer whose write failed half way.
		return err
	}
	putBuffer(p, out)
	return nil
}
