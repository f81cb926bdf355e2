package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func TestDecodeRequest(t *testing.T) {
	good, _ := Marshal(&qpcv1.Request{Version: ProtocolVersion, Method: "Ping", RequestId: 7})
	if req, err := DecodeRequest(good); err != nil || req.GetMethod() != "Ping" {
		t.Fatalf("good request: %v", err)
	}
	v2, _ := Marshal(&qpcv1.Request{Version: 2, Method: "Ping", Body: []byte{0xff, 0xff}})
	if _, err := DecodeRequest(v2); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("v2: %v", err)
	}
	if _, err := DecodeRequest([]byte{0xff, 0xff, 0xff}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
	noMethod, _ := Marshal(&qpcv1.Request{Version: ProtocolVersion})
	if _, err := DecodeRequest(noMethod); !errors.Is(err, ErrInvalidField) {
		t.Fatalf("no method: %v", err)
	}
	// Invalid UTF-8 in a proto3 string is refused by the decoder itself.
	bad := append([]byte{0x08, 0x01, 0x12, 0x02}, 0xff, 0xfe)
	if _, err := DecodeRequest(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad utf8: %v", err)
	}
}

func TestDecodeBodyValidates(t *testing.T) {
	long, _ := Marshal(&qpcv1.PingRequest{Echo: strings.Repeat("x", 1025)})
	if err := DecodeBody(long, &qpcv1.PingRequest{}); !errors.Is(err, ErrInvalidField) {
		t.Fatalf("long echo: %v", err)
	}
	ok, _ := Marshal(&qpcv1.PingRequest{Echo: "hi"})
	var p qpcv1.PingRequest
	if err := DecodeBody(ok, &p); err != nil || p.GetEcho() != "hi" {
		t.Fatalf("ok: %v", err)
	}
}

func TestStatusError(t *testing.T) {
	err := error(Errorf(qpcv1.Status_STATUS_STALE_EPOCH, "epoch %d", 3))
	if Code(err) != qpcv1.Status_STATUS_STALE_EPOCH || Code(nil) != qpcv1.Status_STATUS_OK || Code(errors.New("x")) != qpcv1.Status_STATUS_INTERNAL {
		t.Fatal("Code mapping wrong")
	}
	for s := range qpcv1.Status_name {
		if strings.HasPrefix(StatusName(qpcv1.Status(s)), "status_") {
			t.Errorf("status %d has no short name", s)
		}
	}
}

// AppendMessageFrame writes the same bytes as framing Marshal's output, after
// whatever dst already holds.
func TestAppendMessageFrameMatchesMarshal(t *testing.T) {
	msg := &qpcv1.Response{Version: ProtocolVersion, RequestId: 99, Status: qpcv1.Status_STATUS_OK, Body: bytes.Repeat([]byte{7}, 3000)}
	plain, err := Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	want := AppendFrame([]byte("prefix"), plain)
	got, err := AppendMessageFrame([]byte("prefix"), msg)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("err=%v, frames differ: %d and %d bytes", err, len(got), len(want))
	}
	body, err := ReadFrame(bytes.NewReader(got[len("prefix"):]), DefaultMaxFrame)
	if err != nil || !bytes.Equal(body, plain) {
		t.Fatalf("read back: err=%v", err)
	}
	got, err = AppendMarshal([]byte("x"), msg)
	if err != nil || !bytes.Equal(got[1:], plain) || got[0] != 'x' {
		t.Fatalf("AppendMarshal: err=%v", err)
	}
}

// The server gives a request's frame buffer back to its pool as soon as the
// envelope is decoded, and the body's buffer once the method's message is:
// so neither decoded message may refer to its input. Bytes, strings and
// unknown fields are all checked.
func TestDecodedMessagesDoNotAliasInput(t *testing.T) {
	body, _ := Marshal(&qpcv1.EnqueueRequest{ChannelId: bytes.Repeat([]byte{1}, 16),
		MessageId: "0193a3c4-6b1e-7cc2-9b4f-2a9e7d3c1f00", MlsMessage: bytes.Repeat([]byte{2}, 1024)})
	frame, _ := Marshal(&qpcv1.Request{Version: ProtocolVersion, RequestId: 5, Method: "Enqueue", AccessToken: "qpcat1.x.y", Body: body})
	frame = append(frame, 0xa2, 0x06, 0x03, 'u', 'n', 'k') // field 100, bytes: an unknown field
	req, err := DecodeRequest(frame)
	if err != nil {
		t.Fatal(err)
	}
	wantReq, _ := Marshal(req)
	in := &qpcv1.EnqueueRequest{}
	if err := DecodeBody(req.GetBody(), in); err != nil {
		t.Fatal(err)
	}
	wantIn, _ := Marshal(in)
	for i := range frame {
		frame[i] = 0
	}
	if got, _ := Marshal(req); !bytes.Equal(got, wantReq) {
		t.Fatal("the request envelope changed with its frame's buffer")
	}
	for i := range req.Body {
		req.Body[i] = 0
	}
	if got, _ := Marshal(in); !bytes.Equal(got, wantIn) {
		t.Fatal("the method's message changed with the envelope's body")
	}
}
