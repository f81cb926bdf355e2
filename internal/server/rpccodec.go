package server

import (
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// readRequestFrame reads one request frame; release gives its buffer back
// once the envelope has been decoded.
func readRequestFrame(r io.Reader, limit int) ([]byte, func(), error) {
	frame, err := wire.ReadFrame(r, limit)
	return frame, noRelease, err
}

// encodeBody marshals a handler's reply; release gives the buffer back once
// the response envelope holding it has been written.
func encodeBody(msg proto.Message) ([]byte, func(), error) {
	b, err := wire.Marshal(msg)
	return b, noRelease, err
}

// writeResponse writes resp as one frame.
func writeResponse(w io.Writer, resp *qpcv1.Response) error {
	out, err := wire.Marshal(resp)
	if err != nil {
		return err
	}
	return wire.WriteFrame(w, out)
}
