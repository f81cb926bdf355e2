package tracing

import "go.opentelemetry.io/otel/attribute"

// Span attribute keys. These, and nothing else, may appear on a qpc span:
// Set drops every other key, TestSpanAttributesAllowListed (internal/client)
// walks a whole client session's spans against this list and
// TestJaegerEndToEnd every tag Jaeger stored. None of
// them can carry a token, key, ciphertext, account or device name or id, or
// anything the log redaction hides: they are method names, status names,
// sizes, counts and enumerations.
const (
	KeyRPCSystem      = "rpc.system"          // always "qpc"
	KeyRPCMethod      = "rpc.method"          // method name from the server's table ("unknown" otherwise)
	KeyRPCStatus      = "qpc.status"          // wire status name (ok, invalid_argument, ...)
	KeyRequestSize    = "qpc.request_size"    // request body bytes
	KeyResponseSize   = "qpc.response_size"   // response body bytes
	KeyRequestID      = "qpc.request_id"      // the client-chosen request id (a counter)
	KeyChannelKind    = "qpc.channel_kind"    // group, dm or unknown
	KeyResult         = "qpc.result"          // an operation's outcome label (ok, duplicate, stale_epoch, ...)
	KeyMessages       = "qpc.messages"        // messages in a fetch result
	KeyInboxItems     = "qpc.inbox_items"     // inbox items in a fetch result
	KeyPayloadSize    = "qpc.payload_size"    // bytes of ciphertext handled (never the bytes)
	KeyRecipients     = "qpc.recipients"      // recipient devices of a SendToInbox
	KeyKeyPackages    = "qpc.key_packages"    // KeyPackages uploaded or returned
	KeyWoken          = "qpc.woken"           // a long-poll ended by a wake-up (not the timeout)
	KeyTimeoutMS      = "qpc.timeout_ms"      // long-poll timeout asked for
	KeyDBSystem       = "db.system"           // sqlite or postgresql
	KeyBatchSize      = "qpc.batch_size"      // write functions committed together
	KeyExitCode       = "qpc.exit_code"       // a command's exit code
	KeyLinkedEnqueues = "qpc.linked_enqueues" // span links a fetch made to enqueuing spans
)

var allowed = map[string]bool{
	KeyRPCSystem: true, KeyRPCMethod: true, KeyRPCStatus: true, KeyRequestSize: true,
	KeyResponseSize: true, KeyRequestID: true, KeyChannelKind: true, KeyResult: true,
	KeyMessages: true, KeyInboxItems: true, KeyPayloadSize: true, KeyRecipients: true,
	KeyKeyPackages: true, KeyWoken: true, KeyTimeoutMS: true, KeyDBSystem: true,
	KeyBatchSize: true, KeyExitCode: true, KeyLinkedEnqueues: true,
}

// Allowed reports whether key may be a span attribute.
func Allowed(key string) bool { return allowed[key] }

// Attribute constructors for the common keys, so call sites read short.
func Method(m string) attribute.KeyValue      { return attribute.String(KeyRPCMethod, m) }
func Status(s string) attribute.KeyValue      { return attribute.String(KeyRPCStatus, s) }
func ChannelKind(k string) attribute.KeyValue { return attribute.String(KeyChannelKind, k) }
func Result(r string) attribute.KeyValue      { return attribute.String(KeyResult, r) }
func Int(key string, v int) attribute.KeyValue {
	return attribute.Int(key, v)
}
