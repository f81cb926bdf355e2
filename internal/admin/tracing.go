package admin

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/tracing"
)

// tracedPaths name the admin operations worth a span; others (and any
// path with an id in it) are not traced.
var tracedPaths = map[string]string{
	PathBackup: "backup", PathBackupComplete: "backup_complete", PathRotateDBKey: "rotate_db_key",
	PathRotateTLS: "rotate_tls", PathRotateTokenKey: "rotate_token_key", PathDrain: "drain",
}

// Trace makes the long admin operations spans of t when the request
// continues a qpcctl trace (the W3C traceparent header), so `qpcctl backup
// create` shows qpcd's snapshot under the command. Call before Serve.
func (s *Server) Trace(t trace.Tracer) {
	inner := s.http.Handler
	s.http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op, ok := tracedPaths[r.URL.Path]
		ctx := tracing.Extract(r.Context(), r.Header.Get("traceparent"), r.Header.Get("tracestate"))
		if !ok || !trace.SpanContextFromContext(ctx).IsSampled() {
			inner.ServeHTTP(w, r)
			return
		}
		ctx, span := t.Start(ctx, "qpcd.admin."+op, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		inner.ServeHTTP(w, r.WithContext(ctx))
	})
}

// injectTrace puts the trace context of ctx (a traced qpcctl command) on
// an admin request.
func injectTrace(ctx context.Context, h http.Header) {
	if tp, ts := tracing.Inject(ctx); tp != "" {
		h.Set("traceparent", tp)
		if ts != "" {
			h.Set("tracestate", ts)
		}
	}
}
