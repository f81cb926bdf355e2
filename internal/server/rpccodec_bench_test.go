package server

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// benchRPC runs the request path's codec work for one RPC, without the
// network and the handler: read and decode the request frame, decode the
// body, encode the reply and write the response frame.
func benchRPC(b *testing.B, method string, reqBody []byte, newReq func() *qpcv1.EnqueueRequest, reply func() (*qpcv1.Response, func())) {
	frame, err := wire.Marshal(&qpcv1.Request{Version: wire.ProtocolVersion, RequestId: 7, Method: method,
		AccessToken: "qpcat1." + string(bytes.Repeat([]byte("A"), 108)) + "." + string(bytes.Repeat([]byte("B"), 86)), Body: reqBody})
	if err != nil {
		b.Fatal(err)
	}
	in := wire.AppendFrame(nil, frame)
	rd := bytes.NewReader(in)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		rd.Reset(in)
		f, release, err := readRequestFrame(rd, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		req, err := wire.DecodeRequest(f)
		release()
		if err != nil {
			b.Fatal(err)
		}
		if err := wire.DecodeBody(req.GetBody(), newReq()); err != nil {
			b.Fatal(err)
		}
		resp, releaseBody := reply()
		resp.Version = wire.ProtocolVersion
		if err := writeResponse(io.Discard, resp); err != nil {
			b.Fatal(err)
		}
		releaseBody()
	}
}

func enqueueBody(b *testing.B) []byte {
	body, err := wire.Marshal(&qpcv1.EnqueueRequest{ChannelId: make([]byte, 16),
		MessageId: "0193a3c4-6b1e-7cc2-9b4f-2a9e7d3c1f00", MlsMessage: make([]byte, 1024)})
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// BenchmarkRPCCodecEnqueue: a 1 KiB Enqueue and its small reply.
func BenchmarkRPCCodecEnqueue(b *testing.B) {
	benchRPC(b, MethodEnqueue, enqueueBody(b), func() *qpcv1.EnqueueRequest { return &qpcv1.EnqueueRequest{} }, func() (*qpcv1.Response, func()) {
		body, release, err := encodeBody(&qpcv1.EnqueueResponse{Seq: 12345, Epoch: 3, ServerTimeUnixMs: time.Now().UnixMilli()})
		if err != nil {
			b.Fatal(err)
		}
		return &qpcv1.Response{RequestId: 7, Status: qpcv1.Status_STATUS_OK, Body: body}, release
	})
}

// BenchmarkRPCCodecFetch: a FetchWait reply carrying 16 messages of 1 KiB
// (the request side is reused from Enqueue: its cost is not the point).
func BenchmarkRPCCodecFetch(b *testing.B) {
	msgs := make([]*qpcv1.ChannelMessage, 16)
	for i := range msgs {
		msgs[i] = &qpcv1.ChannelMessage{ChannelId: make([]byte, 16), Seq: uint64(1000 + i), MessageId: "0193a3c4-6b1e-7cc2-9b4f-2a9e7d3c1f00",
			SenderAccountId: "0123456789abcdef0123456789abcdef", SenderDeviceId: "0123456789abcdef0123456789abcdef",
			MlsMessage: make([]byte, 1024), ServerTimeUnixMs: 1765000000000, Epoch: 3}
	}
	benchRPC(b, MethodFetchWait, enqueueBody(b), func() *qpcv1.EnqueueRequest { return &qpcv1.EnqueueRequest{} }, func() (*qpcv1.Response, func()) {
		body, release, err := encodeBody(&qpcv1.FetchResponse{Messages: msgs})
		if err != nil {
			b.Fatal(err)
		}
		return &qpcv1.Response{RequestId: 7, Status: qpcv1.Status_STATUS_OK, Body: body}, release
	})
}
