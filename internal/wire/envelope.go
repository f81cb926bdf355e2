package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// ProtocolVersion is the only envelope version this build speaks.
const ProtocolVersion = 1

// Envelope decoding errors.
var (
	ErrMalformed          = errors.New("wire: malformed message")
	ErrUnsupportedVersion = errors.New("wire: unsupported protocol version")
)

var unmarshalStrict = proto.UnmarshalOptions{DiscardUnknown: false}

// DecodeRequest parses a request envelope and checks its version before the
// method body is looked at; the body stays opaque bytes until DecodeBody.
func DecodeRequest(frame []byte) (*qpcv1.Request, error) {
	req := &qpcv1.Request{}
	if err := unmarshalStrict.Unmarshal(frame, req); err != nil {
		return nil, fmt.Errorf("%w: request envelope: %v", ErrMalformed, err)
	}
	if req.GetVersion() != ProtocolVersion {
		return req, fmt.Errorf("%w: got %d, server speaks %d", ErrUnsupportedVersion, req.GetVersion(), ProtocolVersion)
	}
	if err := Validate(req); err != nil {
		return req, err
	}
	return req, nil
}

// DecodeResponse parses a response envelope.
func DecodeResponse(frame []byte) (*qpcv1.Response, error) {
	resp := &qpcv1.Response{}
	if err := unmarshalStrict.Unmarshal(frame, resp); err != nil {
		return nil, fmt.Errorf("%w: response envelope: %v", ErrMalformed, err)
	}
	return resp, nil
}

// DecodeBody parses a method's message and validates it against its field rules.
func DecodeBody(body []byte, msg proto.Message) error {
	if err := unmarshalStrict.Unmarshal(body, msg); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, msg.ProtoReflect().Descriptor().Name(), err)
	}
	return Validate(msg)
}

var marshalDeterministic = proto.MarshalOptions{Deterministic: true}

// Marshal encodes deterministically, so the same message is always the same bytes.
func Marshal(msg proto.Message) ([]byte, error) {
	return marshalDeterministic.Marshal(msg)
}

// AppendMarshal is Marshal appending to dst (a reused buffer).
func AppendMarshal(dst []byte, msg proto.Message) ([]byte, error) {
	return marshalDeterministic.MarshalAppend(dst, msg)
}

// AppendMessageFrame appends msg, marshalled as Marshal does, as one frame
// to dst: the same bytes as AppendFrame(dst, Marshal(msg)) without the
// intermediate copy.
func AppendMessageFrame(dst []byte, msg proto.Message) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst, err := marshalDeterministic.MarshalAppend(dst, msg)
	if err != nil {
		return dst[:start], err
	}
	n := len(dst) - start - FrameHeaderLen
	if uint64(n) > uint64(^uint32(0)) {
		return dst[:start], fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(n))
	return dst, nil
}
