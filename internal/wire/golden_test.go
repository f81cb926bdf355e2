package wire

import (
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/golden fixtures from the current encoding")

// goldenMessages holds one fully populated value of every envelope and
// message. Adding a message to the protocol means adding it here; a change of
// encoding for an existing one fails the test (the protocol is additive).
//
// Each protocol area registers its own set from an init func in its own
// golden_<area>_test.go file.
var goldenSets = map[string]func() map[string]proto.Message{"envelope": envelopeGolden}

func goldenMessages() map[string]proto.Message {
	all := map[string]proto.Message{}
	for _, set := range goldenSets {
		for name, m := range set() {
			all[name] = m
		}
	}
	return all
}

func envelopeGolden() map[string]proto.Message {
	return map[string]proto.Message{
		"request": &qpcv1.Request{Version: ProtocolVersion, Method: "Ping", RequestId: 42,
			AccessToken: "tok", Body: []byte{1, 2, 3}},
		// Issue 18: the optional W3C trace context (fields 6 and 7).
		"request_traced": &qpcv1.Request{Version: ProtocolVersion, Method: "Ping", RequestId: 42,
			AccessToken: "tok", Body: []byte{1, 2, 3},
			Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Tracestate: "qpc=1"},
		"response": &qpcv1.Response{Version: ProtocolVersion, RequestId: 42, Status: qpcv1.Status_STATUS_RESOURCE_EXHAUSTED,
			Message: "slow down", RetryAfterMs: 250, Body: []byte{4, 5}},
		// Kept streams: several RPCs in turn on one stream (field 8 / 7).
		"request_keep_stream": &qpcv1.Request{Version: ProtocolVersion, Method: "Ping", RequestId: 43,
			AccessToken: "tok", Body: []byte{1, 2, 3}, KeepStream: true},
		"response_stream_kept": &qpcv1.Response{Version: ProtocolVersion, RequestId: 43, Status: qpcv1.Status_STATUS_OK,
			Body: []byte{4, 5}, StreamKept: true},
		"ping_request":  &qpcv1.PingRequest{Echo: "hello", HoldMs: 10},
		"ping_response": &qpcv1.PingResponse{Echo: "hello", ServerTimeUnixMs: 1764000000000, ServerVersion: "1.0.0", ProtocolVersion: 1},
		"ping_response_mls_policy": &qpcv1.PingResponse{Echo: "hello", ServerTimeUnixMs: 1764000000000, ServerVersion: "1.0.0", ProtocolVersion: 1,
			MlsPolicy: &qpcv1.MLSPolicy{AllowedSuites: []uint32{0xF00D, 1}, MinimumSuite: 1}},
		"ping_response_features": &qpcv1.PingResponse{Echo: "hello", ServerTimeUnixMs: 1764000000000, ServerVersion: "1.0.0", ProtocolVersion: 1,
			MlsPolicy: &qpcv1.MLSPolicy{AllowedSuites: []uint32{1}, MinimumSuite: 1}, Features: []string{"ratchet_tree"}},
	}
}

func TestGoldenWire(t *testing.T) {
	for name, msg := range goldenMessages() {
		t.Run(name, func(t *testing.T) {
			got, err := Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", name+".hex")
			if *updateGolden {
				if err := os.WriteFile(path, []byte(hex.EncodeToString(got)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("missing fixture %s (run go test ./internal/wire -run Golden -update once, for a new message only): %v", path, err)
			}
			if g, w := hex.EncodeToString(got), strings.TrimSpace(string(want)); g != w {
				t.Fatalf("encoding of %s changed:\n got %s\nwant %s", name, g, w)
			}
			back := msg.ProtoReflect().New().Interface()
			raw, _ := hex.DecodeString(strings.TrimSpace(string(want)))
			if err := proto.Unmarshal(raw, back); err != nil || !proto.Equal(back, msg) {
				t.Fatalf("fixture does not decode to the same message: %v", err)
			}
		})
	}
}
