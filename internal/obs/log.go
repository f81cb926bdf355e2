// Package obs sets up logging, audit events, Prometheus metrics and the ops HTTP endpoints.
package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// Errors returned by NewLogger for a level or format it does not know.
var (
	ErrLogLevel  = errors.New("obs: unknown log level (want debug, info, warn or error)")
	ErrLogFormat = errors.New("obs: unknown log format (want text or json)")
)

// ParseLevel maps debug, info, warn and error (any case) to a slog level.
func ParseLevel(level string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrLogLevel, level)
}

// NewLogger returns a logger writing text or JSON lines to w at the given
// level. Besides the secret types' own redaction, it replaces the value of
// any attribute whose key names a secret (token, key, password, secret,
// passphrase, authorization, ...) with the redaction marker, so a key passed
// as a plain string or []byte cannot reach the log either.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.LevelKey && len(groups) == 0 {
			if l, ok := a.Value.Any().(slog.Level); ok && l == LevelAudit {
				return slog.String(slog.LevelKey, "AUDIT")
			}
		}
		return redactAttr(groups, a)
	}}
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "text", "":
		return slog.New(TraceHandler{slog.NewTextHandler(w, opts)}), nil
	case "json":
		return slog.New(TraceHandler{slog.NewJSONHandler(w, opts)}), nil
	}
	return nil, fmt.Errorf("%w: %q", ErrLogFormat, format)
}

// TraceHandler adds trace_id and span_id to every record logged with a
// context that carries a valid span (an RPC's, when tracing is on), so a
// log line leads to its trace and a trace to its log lines. Without one it
// adds nothing and costs one context lookup.
type TraceHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h TraceHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			r = r.Clone()
			r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
		}
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h TraceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return TraceHandler{h.Handler.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (h TraceHandler) WithGroup(name string) slog.Handler {
	return TraceHandler{h.Handler.WithGroup(name)}
}

// secretWords are the words of an attribute key that mark its value secret.
var secretWords = map[string]bool{
	"token": true, "tokens": true, "key": true, "password": true, "passwd": true,
	"secret": true, "secrets": true, "passphrase": true, "authorization": true,
	"cookie": true, "credential": true, "credentials": true, "bearer": true,
	"apikey": true, "privkey": true, "seed": true,
}

// safeLastWords end a key that describes a secret without being one:
// key_id, token_ttl, key_file, secret_len, ...
var safeLastWords = map[string]bool{
	"id": true, "ids": true, "count": true, "len": true, "length": true, "size": true,
	"ttl": true, "expiry": true, "expires": true, "expired": true, "at": true,
	"fingerprint": true, "type": true, "kind": true, "file": true, "path": true,
	"version": true, "epoch": true, "index": true, "algorithm": true, "alg": true,
	"family": true, "status": true, "reason": true, "valid": true, "present": true,
}

// Attribute keys come from a small set fixed in the code, and every log
// line and audit event asks about each of its keys: remembering the answer
// took the redaction check from about a third of an audit event's cost to
// nothing. The cache is bounded in case keys are ever built at run time.
var (
	secretKeyCache  sync.Map // string -> bool
	secretKeyCached atomic.Int32
)

const maxCachedKeys = 4096

// secretKey reports whether an attribute key names a secret. Keys are split
// into words at '_', '-', '.', spaces and lower-to-upper case changes.
func secretKey(key string) bool {
	if v, ok := secretKeyCache.Load(key); ok {
		return v.(bool)
	}
	secret := keyNamesSecret(key)
	if secretKeyCached.Add(1) <= maxCachedKeys {
		secretKeyCache.Store(key, secret)
	}
	return secret
}

func keyNamesSecret(key string) bool {
	words := splitWords(key)
	if len(words) == 0 {
		return false
	}
	if safeLastWords[words[len(words)-1]] && len(words) > 1 {
		return false
	}
	for _, w := range words {
		if secretWords[w] {
			return true
		}
	}
	return false
}

func splitWords(key string) []string {
	var words []string
	var cur []rune
	prevLower := false
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	for _, r := range key {
		switch {
		case r == '_' || r == '-' || r == '.' || unicode.IsSpace(r):
			flush()
			prevLower = false
			continue
		case unicode.IsUpper(r) && prevLower:
			flush()
		}
		cur = append(cur, r)
		prevLower = unicode.IsLower(r) || unicode.IsDigit(r)
	}
	flush()
	return words
}

// redactAttr is the handlers' ReplaceAttr. Values arrive resolved, so a
// secret.Bytes is already the marker and is left alone.
func redactAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindGroup || !secretKey(a.Key) {
		return a
	}
	if a.Value.Kind() == slog.KindString && a.Value.String() == secret.Redacted {
		return a
	}
	// Absent values (nil, "") carry nothing to hide and help debugging.
	if a.Value.Kind() == slog.KindString && a.Value.String() == "" {
		return a
	}
	if a.Value.Kind() == slog.KindAny && a.Value.Any() == nil {
		return a
	}
	return slog.String(a.Key, secret.Redacted)
}

// Audit writes security events (logins, token issue and reuse, KeyPackage
// uploads, enqueue/fetch, rate-limit hits) as structured log lines marked
// audit=true, so they can be routed and kept apart from diagnostics.
type Audit struct {
	l *slog.Logger
}

// LevelAudit is above every diagnostic level, so no log.level setting drops
// security events; handlers from NewLogger print it as level=AUDIT.
const LevelAudit = slog.Level(12)

// NewAudit returns an Audit that writes through l at LevelAudit.
func NewAudit(l *slog.Logger) *Audit { return &Audit{l: l} }

// Event logs one audit event: message "audit", attributes audit=true,
// event=<event>, then attrs. A nil *Audit (or one without a logger) does nothing.
func (a *Audit) Event(ctx context.Context, event string, attrs ...slog.Attr) {
	if a == nil || a.l == nil {
		return
	}
	// On the stack for the events qpcd writes (enqueue has ten attributes
	// with these two): one allocation fewer per audit event.
	var stack [12]slog.Attr
	all := append(stack[:0], slog.Bool("audit", true), slog.String("event", event))
	all = append(all, attrs...)
	a.l.LogAttrs(ctx, LevelAudit, "audit", all...)
}
