package wire

import (
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func init() { goldenSets["app"] = appGolden }

// appGolden pins the application payload carried inside MLS application
// messages (proto/qpc/v1/app.proto).
func appGolden() map[string]proto.Message {
	return map[string]proto.Message{
		"app_message": &qpcv1.AppMessage{Version: 1, MessageId: "0b7e4c8a-3f1d-4e2b-9a6c-5d8f7e1a2b3c",
			Text: "hello, bob", SenderDisplayName: "Alice", SentUnixMs: 1764000000000,
			ReplyTo: "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"},
		"app_message_group": &qpcv1.AppMessage{Version: 1, MessageId: "0b7e4c8a-3f1d-4e2b-9a6c-5d8f7e1a2b3c", Text: "hi team",
			SenderDisplayName: "Alice", SentUnixMs: 1764000000000, GroupName: "team"},
		"app_message_minimal": &qpcv1.AppMessage{Version: 1, MessageId: "0b7e4c8a-3f1d-4e2b-9a6c-5d8f7e1a2b3c", Text: "hi"},
	}
}
