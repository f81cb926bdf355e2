package wire

import (
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

// Marshal encodes deterministically, so the same message is always the same bytes.
func Marshal(msg proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(msg)
}
