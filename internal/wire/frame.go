package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// FrameHeaderLen is the size of a frame's big-endian length prefix.
const FrameHeaderLen = 4

// DefaultMaxFrame is the default cap on a frame's body (5 MiB).
const DefaultMaxFrame = 5 << 20

// Frame errors; ReadFrame wraps them with the offending sizes.
var (
	ErrFrameTooLarge  = errors.New("wire: frame exceeds the size cap")
	ErrFrameTruncated = errors.New("wire: frame truncated")
	ErrEmptyFrame     = errors.New("wire: empty frame")
)

// ReadFrame reads one frame and returns its body. A length above limit is
// refused from the 4-byte header alone, before anything of that size is
// allocated; the body buffer grows only as bytes actually arrive, so a peer
// that announces a large frame and sends little cannot make us allocate it.
func ReadFrame(r io.Reader, limit int) ([]byte, error) {
	return ReadFrameInto(r, limit, nil)
}

// ReadFrameInto is ReadFrame reading into buf's storage (a reused buffer)
// as far as its capacity goes; beyond that it grows as ReadFrame does.
func ReadFrameInto(r io.Reader, limit int, buf []byte) ([]byte, error) {
	var hdr [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: %d of %d header bytes", ErrFrameTruncated, 0, FrameHeaderLen)
		}
		return nil, err // io.EOF: the peer sent nothing
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, ErrEmptyFrame
	}
	if uint64(n) > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes announced, cap is %d", ErrFrameTooLarge, n, limit)
	}
	// Grow geometrically from 64 KiB as data arrives, never past n.
	const chunk = 64 << 10
	size := int(n)
	if buf = buf[:0]; cap(buf) < min(size, chunk) {
		buf = make([]byte, 0, min(size, chunk))
	}
	for len(buf) < size {
		want := min(size-len(buf), max(chunk, len(buf)))
		buf = slices.Grow(buf, want)
		got, err := io.ReadFull(r, buf[len(buf):len(buf)+want])
		buf = buf[:len(buf)+got]
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("%w: %d of %d body bytes", ErrFrameTruncated, len(buf), size)
			}
			return nil, err
		}
	}
	return buf, nil
}

// AppendFrame appends body as one frame to dst.
func AppendFrame(dst, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// WriteFrame writes body as one frame in a single Write call.
func WriteFrame(w io.Writer, body []byte) error {
	if uint64(len(body)) > uint64(^uint32(0)) {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(body))
	}
	_, err := w.Write(AppendFrame(make([]byte, 0, FrameHeaderLen+len(body)), body))
	return err
}
