package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/delivery"
	"github.com/quicprochat/quicprochat/internal/keydir"
	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Stream error codes for QUIC stream resets.
const (
	streamCodeRefused quic.StreamErrorCode = 0x1
)

// envelopeOverhead is what the request envelope may add around a body of
// the maximum payload size (method, token, ids and their tags).
const envelopeOverhead = 8 << 10

// requestReadTimeout bounds how long a client may take to send its request.
const requestReadTimeout = 30 * time.Second

// Call is what a handler knows about the RPC it serves.
type Call struct {
	Method    string
	RequestID uint64
	Conn      *transport.Conn
	Token     string // raw access token; the auth middleware resolves it
	Principal *Principal
}

// Principal is the authenticated caller; nil for unauthenticated methods.
type Principal struct {
	AccountID   string
	DeviceID    string
	AccountName string    // for MLS credentials: "<account_name>/<device_id>"
	ExpiresAt   time.Time // the access token's expiry
}

// method describes one RPC: its request type, whether it needs a token, and its handler.
type method struct {
	name    string
	public  bool // no access token needed
	newReq  func() proto.Message
	handler func(ctx context.Context, call *Call, req proto.Message) (proto.Message, error)
}

// register adds a typed handler to the method table.
func register[Req, Resp proto.Message](table map[string]*method, name string, public bool, h func(context.Context, *Call, Req) (Resp, error)) {
	var zero Req
	msgType := zero.ProtoReflect().Type()
	table[name] = &method{
		name:   name,
		public: public,
		newReq: func() proto.Message { return msgType.New().Interface() },
		handler: func(ctx context.Context, call *Call, req proto.Message) (proto.Message, error) {
			return h(ctx, call, req.(Req))
		},
	}
}

// rpcServer implements transport.Handler: one request frame in, one response frame out.
type rpcServer struct {
	// tracing is on: every RPC gets a server span from tracer. Off, the
	// RPC path never touches the tracer (one branch on this bool).
	tracing    bool
	tracer     trace.Tracer
	log        *slog.Logger
	metrics    *obs.Metrics
	methods    map[string]*method
	maxPayload int
	draining   func() bool
	// lie is Options.LieInResponse (tests only).
	lie func(ctx context.Context, call *Call, method string, resp proto.Message)
	// admit applies the per-source rate limit before anything else of the
	// call is looked at; nil means unlimited.
	admit func(ctx context.Context, call *Call) error
	// authenticate resolves a token to a principal (and applies the account
	// and device limits); nil until auth is wired.
	authenticate func(ctx context.Context, call *Call) error
	// diskFull is the message for a write refused by a full disk.
	diskFull string
}

// ServeStream serves the RPCs of one stream: one, or several in turn when
// the client asks to keep the stream (Request.keep_stream). Between two
// requests of a kept stream the stream counts as idle (transport.Conn.Idle).
func (r *rpcServer) ServeStream(ctx context.Context, c *transport.Conn, s *quic.Stream) {
	var in io.Reader = s
	var next nextRequest
	for r.serveOne(ctx, c, s, in) {
		if !next.await(c, s) {
			return
		}
		in = &next
	}
}

// serveOne serves one RPC whose request frame is read from in (s, or s
// behind the header a kept stream already read), and reports whether the
// stream stays open for another.
func (r *rpcServer) serveOne(ctx context.Context, c *transport.Conn, s *quic.Stream, in io.Reader) (kept bool) {
	start := time.Now()
	r.metrics.InFlight.Inc()
	defer r.metrics.InFlight.Dec()

	_ = s.SetReadDeadline(start.Add(requestReadTimeout))
	var keepAsked bool
	resp, label, span, release := r.handle(ctx, c, s, in, start, &keepAsked)
	resp.Version = wire.ProtocolVersion
	// A draining server keeps no stream: the client's next request goes
	// on a new stream, which gets the draining answer.
	keep := keepAsked && !r.draining()
	resp.StreamKept = keep
	_ = s.SetWriteDeadline(time.Now().Add(requestReadTimeout))
	err := writeResponse(s, resp)
	release()
	if err != nil {
		r.log.Debug("rpc: response not delivered", "method", label, "err", err)
		s.CancelWrite(streamCodeRefused)
		s.CancelRead(streamCodeRefused)
	} else {
		if !keep {
			_ = s.Close()
		}
		c.ReplySent()
	}
	status := wire.StatusName(resp.Status)
	r.metrics.RPCs.WithLabelValues(label, status).Inc()
	if label == MethodEnqueue {
		// One message, whatever refused it (EnqueueBatch counts its own
		// items in its handler).
		r.metrics.EnqueueMessages.WithLabelValues(MethodEnqueue, status).Inc()
	}
	r.metrics.ObserveRPCDuration(label, time.Since(start), span.SpanContext())
	if span.IsRecording() {
		tracing.Set(span, tracing.Status(status), tracing.Int(tracing.KeyResponseSize, len(resp.GetBody())))
		if resp.Status != qpcv1.Status_STATUS_OK {
			tracing.Fail(span, status)
		}
		if err != nil {
			tracing.Set(span, tracing.Result("response_not_delivered"))
		}
		span.End()
	}
	if err != nil {
		return false
	}
	if !keep {
		awaitClientFIN(s)
	}
	return keep
}

// nextRequest waits on a kept stream for the next request and then reads
// as the stream with that request's frame header put back in front.
type nextRequest struct {
	s    *quic.Stream
	hdr  [wire.FrameHeaderLen]byte
	head []byte
}

// await blocks until the next request's frame header has arrived on s,
// with the stream counted as idle meanwhile and no read deadline: the
// client closes a kept stream it no longer needs, and the connection's
// inactivity rules bound the rest. At the client's FIN (no further
// request) it closes this side too and reports false, as on any error.
func (n *nextRequest) await(c *transport.Conn, s *quic.Stream) bool {
	busy := c.Idle()
	defer busy()
	_ = s.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(s, n.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			_ = s.Close()
			return false
		}
		s.CancelRead(streamCodeRefused)
		s.CancelWrite(streamCodeRefused)
		return false
	}
	n.s, n.head = s, n.hdr[:]
	return true
}

func (n *nextRequest) Read(p []byte) (int, error) {
	if len(n.head) > 0 {
		k := copy(p, n.head)
		n.head = n.head[k:]
		return k, nil
	}
	return n.s.Read(p)
}

// ackTimeout bounds how long a finished RPC waits for the client's FIN.
const ackTimeout = 10 * time.Second

// awaitClientFIN reads the client's FIN, which completes the stream (and so
// returns its stream credit to the client). Clients send it with the request,
// so it is normally there already; anything but a clean FIN after the
// request frame resets the stream.
func awaitClientFIN(s *quic.Stream) {
	_ = s.SetReadDeadline(time.Now().Add(ackTimeout))
	var one [1]byte
	n, err := s.Read(one[:])
	if n > 0 || !errors.Is(err, io.EOF) {
		s.CancelRead(streamCodeRefused)
	}
}

// noSpan is the span of an untraced RPC: not recording, no allocation.
var noSpan = trace.SpanFromContext(context.Background())

// handle returns the response, the method label for metrics (bounded:
// unknown methods are "unknown"), the RPC's server span (noSpan when
// tracing is off or the request never decoded) and release, to be called
// once the response has been written (it returns pooled buffers).
func (r *rpcServer) handle(ctx context.Context, c *transport.Conn, s *quic.Stream, in io.Reader, start time.Time, keepAsked *bool) (*qpcv1.Response, string, trace.Span, func()) {
	span := noSpan
	resp, label, release := r.serve(ctx, c, s, in, start, &span, keepAsked)
	if release == nil {
		release = noRelease
	}
	return resp, label, span, release
}

func noRelease() {}

// startSpan begins the RPC's server span, continuing the client's trace
// when the request carries one. The span starts when the stream arrived.
func (r *rpcServer) startSpan(ctx context.Context, req *qpcv1.Request, name string, size int, start time.Time) (context.Context, trace.Span) {
	ctx = tracing.Extract(ctx, req.GetTraceparent(), req.GetTracestate())
	ctx, span := r.tracer.Start(ctx, "qpc."+name, trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start))
	tracing.Set(span, attribute.String(tracing.KeyRPCSystem, "qpc"), tracing.Method(name),
		tracing.Int(tracing.KeyRequestSize, size), attribute.Int64(tracing.KeyRequestID, int64(req.GetRequestId()&(1<<63-1))))
	return ctx, span
}

// serve is handle's body; release (nil when there is nothing to give back)
// is called once the response has been written. The request frame is read
// from from (s itself, or s behind a header already read). keepAsked is set
// when the request frame was read whole and asked to keep the stream.
func (r *rpcServer) serve(ctx context.Context, c *transport.Conn, s *quic.Stream, from io.Reader, start time.Time, spanOut *trace.Span, keepAsked *bool) (*qpcv1.Response, string, func()) {
	frame, releaseFrame, err := readRequestFrame(from, r.maxPayload+envelopeOverhead)
	if err != nil {
		switch {
		case errors.Is(err, wire.ErrFrameTooLarge):
			r.metrics.FramesRejected.WithLabelValues("oversized").Inc()
			s.CancelRead(streamCodeRefused)
			return errorResponse(0, wire.Errorf(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, "%v", err)), "unknown", nil
		default:
			r.metrics.FramesRejected.WithLabelValues("malformed").Inc()
			return errorResponse(0, wire.Errorf(qpcv1.Status_STATUS_INVALID_ARGUMENT, "%v", err)), "unknown", nil
		}
	}
	req, err := wire.DecodeRequest(frame)
	// The envelope holds copies of the frame's bytes (protobuf's decoder
	// copies bytes and strings), so the frame can go back now.
	releaseFrame()
	// The frame was read whole, so the stream is still in step, even if
	// the envelope is refused below.
	*keepAsked = req.GetKeepStream()
	if err != nil {
		id := req.GetRequestId()
		switch {
		case errors.Is(err, wire.ErrUnsupportedVersion):
			r.metrics.FramesRejected.WithLabelValues("unsupported_version").Inc()
			return errorResponse(id, wire.Errorf(qpcv1.Status_STATUS_UNSUPPORTED_VERSION, "%v", err)), "unknown", nil
		case errors.Is(err, wire.ErrInvalidField):
			r.metrics.FramesRejected.WithLabelValues("invalid_argument").Inc()
		default:
			r.metrics.FramesRejected.WithLabelValues("malformed").Inc()
		}
		return errorResponse(id, wire.Errorf(qpcv1.Status_STATUS_INVALID_ARGUMENT, "%v", err)), "unknown", nil
	}
	m, ok := r.methods[req.GetMethod()]
	if r.tracing {
		name := "unknown"
		if ok {
			name = m.name
		}
		ctx, *spanOut = r.startSpan(ctx, req, name, len(req.GetBody()), start)
	}
	if !ok {
		return errorResponse(req.GetRequestId(), wire.Errorf(qpcv1.Status_STATUS_NOT_FOUND, "unknown method %q", req.GetMethod())), "unknown", nil
	}
	if r.draining() {
		e := wire.Errorf(qpcv1.Status_STATUS_DRAINING, "server draining; reconnect and retry")
		e.RetryAfter = time.Second
		return errorResponse(req.GetRequestId(), e), m.name, nil
	}
	call := &Call{Method: m.name, RequestID: req.GetRequestId(), Conn: c, Token: req.GetAccessToken()}
	// The per-IP limit comes first, so token checks cannot be flooded.
	if r.admit != nil {
		if err := r.admit(ctx, call); err != nil {
			return errorResponse(call.RequestID, r.toStatus(ctx, call, err)), m.name, nil
		}
	}
	if !m.public && r.authenticate != nil {
		actx, aspan := tracing.Start(ctx, "qpc.auth")
		err := r.authenticate(actx, call)
		if err != nil {
			tracing.Fail(aspan, "denied")
		}
		aspan.End()
		if err != nil {
			return errorResponse(call.RequestID, r.toStatus(ctx, call, err)), m.name, nil
		}
	}
	in := m.newReq()
	_, vspan := tracing.Start(ctx, "qpc.validate")
	err = wire.DecodeBody(req.GetBody(), in)
	if err != nil {
		tracing.Fail(vspan, "invalid_argument")
	}
	vspan.End()
	if err != nil {
		r.metrics.FramesRejected.WithLabelValues("invalid_argument").Inc()
		return errorResponse(call.RequestID, wire.Errorf(qpcv1.Status_STATUS_INVALID_ARGUMENT, "%v", err)), m.name, nil
	}
	out, err := m.handler(ctx, call, in)
	if err != nil {
		return errorResponse(call.RequestID, r.toStatus(ctx, call, err)), m.name, nil
	}
	if r.lie != nil {
		r.lie(ctx, call, m.name, out)
	}
	body, release, err := encodeBody(out)
	if err != nil {
		return errorResponse(call.RequestID, r.toStatus(ctx, call, err)), m.name, nil
	}
	return &qpcv1.Response{RequestId: call.RequestID, Status: qpcv1.Status_STATUS_OK, Body: body}, m.name, release
}

// toStatus is the one place where service errors become wire statuses.
// Errors that carry no status are internal: the client gets a request id to
// quote, the log gets the detail.
func (r *rpcServer) toStatus(ctx context.Context, call *Call, err error) *wire.StatusError {
	var se *wire.StatusError
	if errors.As(err, &se) {
		return se
	}
	if store.IsDiskFull(err) {
		// Retryable: nothing was stored and the write succeeds once space
		// is freed. Debug only, like UNAVAILABLE: the condition is logged
		// once by the disk watch and shown on /readyz and qpcd_disk_full.
		r.log.DebugContext(ctx, "rpc: write refused, disk full", "method", call.Method, "request_id", call.RequestID, "err", err)
		e := wire.Errorf(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, "%s (request id %s)", r.diskFull, strconv.FormatUint(call.RequestID, 10))
		e.RetryAfter = diskFullRetryAfter
		return e
	}
	if st := mapServiceError(err); st != nil {
		return st
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return wire.Errorf(qpcv1.Status_STATUS_UNAVAILABLE, "request cancelled")
	}
	if errors.Is(err, store.ErrContended) {
		// Transient and nothing committed: the client retries.
		r.log.DebugContext(ctx, "rpc: write contended", "method", call.Method, "request_id", call.RequestID, "err", err)
		return wire.Errorf(qpcv1.Status_STATUS_UNAVAILABLE, "too many concurrent writes to the same data; retry shortly (request id %s)", strconv.FormatUint(call.RequestID, 10))
	}
	if store.IsUnavailable(err) {
		// The database is unreachable (or a commit's outcome is unknown):
		// retrying, here or on another node, is the right move. Debug only:
		// the outage itself is logged once by the database check, and a
		// line per refused request would let load set the log volume.
		r.log.DebugContext(ctx, "rpc: database unavailable", "method", call.Method, "request_id", call.RequestID, "err", err)
		return wire.Errorf(qpcv1.Status_STATUS_UNAVAILABLE, "database unavailable; retry shortly (request id %s)", strconv.FormatUint(call.RequestID, 10))
	}
	r.log.ErrorContext(ctx, "rpc: internal error", "method", call.Method, "request_id", call.RequestID, "err", err)
	return wire.Errorf(qpcv1.Status_STATUS_INTERNAL, "internal error (request id %s)", strconv.FormatUint(call.RequestID, 10))
}

func errorResponse(id uint64, e *wire.StatusError) *qpcv1.Response {
	return &qpcv1.Response{
		RequestId:    id,
		Status:       e.Code,
		Message:      e.Message,
		RetryAfterMs: uint32(min(e.RetryAfter.Milliseconds(), int64(^uint32(0)))),
	}
}

// mapServiceError maps the services' sentinel errors to statuses. Each
// service adds its sentinels here, so the mapping stays in one place.
func mapServiceError(err error) *wire.StatusError {
	for _, m := range serviceErrors {
		if errors.Is(err, m.err) {
			return &wire.StatusError{Code: m.code, Message: err.Error()}
		}
	}
	return nil
}

var serviceErrors = []struct {
	err  error
	code qpcv1.Status
}{
	// auth
	{auth.ErrInvalidName, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{auth.ErrInvalidKey, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{auth.ErrInvalidID, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{auth.ErrNameTaken, qpcv1.Status_STATUS_ALREADY_EXISTS},
	{auth.ErrKeyInUse, qpcv1.Status_STATUS_ALREADY_EXISTS},
	{auth.ErrRegistrationClosed, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrInviteInvalid, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrInviteRequired, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrLoginFailed, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrDeviceRevoked, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrAccountDisabled, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrNotFound, qpcv1.Status_STATUS_NOT_FOUND},
	{auth.ErrTooManyDevices, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
	{auth.ErrTokenMissing, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrTokenMalformed, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrTokenForged, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrTokenExpired, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrTokenRevoked, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrWrongDevice, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrRefreshInvalid, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrRefreshExpired, qpcv1.Status_STATUS_UNAUTHENTICATED},
	{auth.ErrRefreshReused, qpcv1.Status_STATUS_UNAUTHENTICATED},
	// Not UNAUTHENTICATED: the token is fine, a fresh token would not help.
	{auth.ErrReauthRequired, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrReauthFailed, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{auth.ErrInvalidCertificate, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{auth.ErrNoIdentityKey, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{auth.ErrTooManyLinkRequests, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
	{auth.ErrIdentityResetTooSoon, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
	{auth.ErrIdentityResetUnavailable, qpcv1.Status_STATUS_PERMISSION_DENIED},
	// keydir
	{keydir.ErrInvalidKeyPackage, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{keydir.ErrUnsupportedSuite, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{ErrSuiteDowngrade, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{keydir.ErrNotOwner, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{keydir.ErrUncertified, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{keydir.ErrCapExceeded, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
	{keydir.ErrUnknownAccount, qpcv1.Status_STATUS_NOT_FOUND},
	{keydir.ErrUnknownDevice, qpcv1.Status_STATUS_NOT_FOUND},
	// key log
	{logstore.ErrNoHead, qpcv1.Status_STATUS_NOT_FOUND},
	{logstore.ErrBadRange, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	// delivery
	{delivery.ErrNotFound, qpcv1.Status_STATUS_NOT_FOUND},
	{delivery.ErrNotMember, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{delivery.ErrStaleEpoch, qpcv1.Status_STATUS_STALE_EPOCH},
	{delivery.ErrInvalidMessage, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{delivery.ErrInvalidRequest, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{delivery.ErrMessageIDConflict, qpcv1.Status_STATUS_ALREADY_EXISTS},
	{delivery.ErrMessageIDExpired, qpcv1.Status_STATUS_INVALID_ARGUMENT},
	{delivery.ErrChannelExists, qpcv1.Status_STATUS_ALREADY_EXISTS},
	{delivery.ErrTooLarge, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
	{delivery.ErrQuotaExceeded, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
	{delivery.ErrUnknownAccount, qpcv1.Status_STATUS_NOT_FOUND},
	{delivery.ErrNotAllowed, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{delivery.ErrRefused, qpcv1.Status_STATUS_PERMISSION_DENIED},
	{delivery.ErrInvitationLimit, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED},
}

var _ = fmt.Sprintf
