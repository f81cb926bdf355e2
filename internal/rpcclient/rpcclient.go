// Package rpcclient calls qpcd RPCs over one QUIC connection: a request
// frame out and a response frame back per call, on streams the server keeps
// open for the next call (or one stream per call with an older server),
// with the server's status turned into a *wire.StatusError.
package rpcclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Client is safe for concurrent calls.
type Client struct {
	conn      *quic.Conn
	nextID    atomic.Uint64
	maxFrame  int
	deadlines atomic.Pointer[Deadlines]
	kept      keptStreams
}

// Deadlines bound each call, so that a call on a dead connection (a server
// that crashed and cannot reset it, froze, or became unreachable) fails
// with a *DeadlineError instead of hanging until QUIC's idle timeout or
// for ever. Zero fields take the defaults.
type Deadlines struct {
	// Call bounds an ordinary call; default 30s.
	Call time.Duration
	// PerMiB is added for each whole MiB of request, for uploads on slow
	// links; default 10s.
	PerMiB time.Duration
	// LongPollMargin is added to a long poll's own wait (FetchWait's
	// timeout_ms, Ping's hold_ms), which replaces Call for it; default 10s.
	LongPollMargin time.Duration
}

// DefaultDeadlines are the deadlines of a new Client.
var DefaultDeadlines = Deadlines{Call: 30 * time.Second, PerMiB: 10 * time.Second, LongPollMargin: 10 * time.Second}

func (d Deadlines) withDefaults() Deadlines {
	if d.Call <= 0 {
		d.Call = DefaultDeadlines.Call
	}
	if d.PerMiB <= 0 {
		d.PerMiB = DefaultDeadlines.PerMiB
	}
	if d.LongPollMargin <= 0 {
		d.LongPollMargin = DefaultDeadlines.LongPollMargin
	}
	return d
}

// longPoll is a request that asks the server to hold its answer.
type longPoll interface{ GetTimeoutMs() uint32 }
type heldPing interface{ GetHoldMs() uint32 }

// For is the deadline of a call with request req (nil: unknown) whose
// encoded size is size bytes.
func (d Deadlines) For(req proto.Message, size int) time.Duration {
	d = d.withDefaults()
	base := d.Call
	switch r := req.(type) {
	case longPoll:
		base = time.Duration(r.GetTimeoutMs())*time.Millisecond + d.LongPollMargin
	case heldPing:
		if r.GetHoldMs() > 0 {
			base = time.Duration(r.GetHoldMs())*time.Millisecond + d.LongPollMargin
		}
	}
	return base + d.PerMiB*time.Duration(size>>20)
}

// ErrCallDeadline matches every *DeadlineError with errors.Is.
var ErrCallDeadline = errors.New("rpcclient: call deadline exceeded")

// DeadlineError is a call that got no answer within its deadline. The
// connection is presumably dead: close it, reconnect and retry (the call
// may or may not have reached the server). It matches ErrCallDeadline and
// context.DeadlineExceeded.
type DeadlineError struct {
	Method string
	After  time.Duration
}

func (e *DeadlineError) Error() string {
	return fmt.Sprintf("rpcclient: %s got no answer within %s; the connection may be dead: reconnect and retry", e.Method, e.After)
}

// Is matches ErrCallDeadline and context.DeadlineExceeded.
func (e *DeadlineError) Is(target error) bool {
	return target == ErrCallDeadline || target == context.DeadlineExceeded
}

// Timeout marks the error as a timeout (net.Error style).
func (e *DeadlineError) Timeout() bool { return true }

// SetDeadlines replaces the call deadlines (zero fields: the defaults).
func (c *Client) SetDeadlines(d Deadlines) {
	d = d.withDefaults()
	c.deadlines.Store(&d)
}

// Deadlines are the call deadlines in force.
func (c *Client) Deadlines() Deadlines {
	if d := c.deadlines.Load(); d != nil {
		return *d
	}
	return DefaultDeadlines
}

// withDeadline bounds ctx by d; when d is what expires, the context's
// cause is a *DeadlineError naming method.
func withDeadline(ctx context.Context, method string, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d, &DeadlineError{Method: method, After: d})
}

// ctxError is why ctx ended: the call's *DeadlineError, or the caller's
// own cancellation or deadline.
func ctxError(ctx context.Context) error {
	var de *DeadlineError
	if cause := context.Cause(ctx); errors.As(cause, &de) {
		return de
	}
	return ctx.Err()
}

// Dial connects to a qpcd at addr (host:port, UDP).
func Dial(ctx context.Context, addr string, o transport.DialOptions) (*Client, error) {
	qc, err := transport.Dial(ctx, addr, o)
	if err != nil {
		return nil, err
	}
	return New(qc), nil
}

// New wraps an established connection.
func New(qc *quic.Conn) *Client {
	c := &Client{conn: qc, maxFrame: wire.DefaultMaxFrame + 64<<10}
	c.kept.idleFor = DefaultStreamIdle
	return c
}

// Conn exposes the QUIC connection (TLS state, close reasons).
func (c *Client) Conn() *quic.Conn { return c.conn }

// Close closes the connection politely.
func (c *Client) Close() error {
	c.kept.closeAll(true)
	return c.conn.CloseWithError(transport.CodeNoError, "client closing")
}

// Call sends req to method with an optional access token and decodes the
// reply into resp. A non-OK status comes back as *wire.StatusError; a
// connection closed by a draining server comes back as STATUS_DRAINING;
// no answer within the call's deadline (see Deadlines) comes back as
// *DeadlineError.
func (c *Client) Call(ctx context.Context, method, token string, req, resp proto.Message) error {
	body, err := wire.Marshal(req)
	if err != nil {
		return fmt.Errorf("rpcclient: encode %s request: %w", method, err)
	}
	env := &qpcv1.Request{Version: wire.ProtocolVersion, Method: method, AccessToken: token, Body: body}
	ctx, cancel := withDeadline(ctx, method, c.Deadlines().For(req, len(body)))
	defer cancel()
	// The caller's trace (qpc, the SDK) continues on the server: the call
	// gets a client span whose context travels in the envelope. Untraced
	// calls skip all of it.
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		ctx, span = tracing.Start(ctx, "qpc.client."+method, trace.WithSpanKind(trace.SpanKindClient))
		tracing.Set(span, attribute.String(tracing.KeyRPCSystem, "qpc"), tracing.Method(method), tracing.Int(tracing.KeyRequestSize, len(body)))
		env.Traceparent, env.Tracestate = tracing.Inject(ctx)
		defer span.End()
	}
	out, err := c.do(ctx, env)
	if err != nil {
		tracing.Fail(span, "transport_error")
		return err
	}
	if span.IsRecording() {
		st := wire.StatusName(out.GetStatus())
		tracing.Set(span, tracing.Status(st), tracing.Int(tracing.KeyResponseSize, len(out.GetBody())))
		if out.GetStatus() != qpcv1.Status_STATUS_OK {
			tracing.Fail(span, st)
		}
	}
	if out.GetStatus() != qpcv1.Status_STATUS_OK {
		return statusError(out)
	}
	if err := wire.DecodeBody(out.GetBody(), resp); err != nil {
		return fmt.Errorf("rpcclient: %s response: %w", method, err)
	}
	return nil
}

// Do sends a raw envelope (the request id is filled in when zero) and
// returns the raw response, within the deadline of an ordinary call of
// its size. Tests use it to send what Call never would.
func (c *Client) Do(ctx context.Context, env *qpcv1.Request) (*qpcv1.Response, error) {
	ctx, cancel := withDeadline(ctx, env.GetMethod(), c.Deadlines().For(nil, len(env.GetBody())))
	defer cancel()
	return c.do(ctx, env)
}

func (c *Client) do(ctx context.Context, env *qpcv1.Request) (*qpcv1.Response, error) {
	if env.RequestId == 0 {
		env.RequestId = c.nextID.Add(1)
	}
	keep := c.kept.wanted()
	env.KeepStream = keep
	frame, err := wire.Marshal(env)
	if err != nil {
		return nil, err
	}
	raw := wire.AppendFrame(nil, frame)
	if !keep {
		return c.doFrame(ctx, raw)
	}
	return c.doKept(ctx, raw)
}

// doKept sends a request that asked to keep its stream: on an idle kept
// stream when there is one, else on a new stream left open after the
// request. A reply with stream_kept puts the stream back for the next
// call; one without (an older server, or a draining one) closes it, and
// an older server turns keeping off for this connection.
func (c *Client) doKept(ctx context.Context, raw []byte) (*qpcv1.Response, error) {
	s := c.kept.take()
	if s == nil {
		var err error
		if s, err = c.conn.OpenStreamSync(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, ctxError(ctx)
			}
			return nil, connError(err)
		}
	}
	stop := context.AfterFunc(ctx, func() {
		s.CancelRead(0)
		s.CancelWrite(0)
	})
	fail := func(err error) (*qpcv1.Response, error) {
		stop()
		s.CancelRead(0)
		s.CancelWrite(0)
		return nil, c.streamError(ctx, err)
	}
	if _, err := s.Write(raw); err != nil {
		var stopped *quic.StreamError
		if !errors.As(err, &stopped) || !stopped.Remote {
			return fail(err)
		}
		// The server stopped reading (an oversized request): its answer
		// says why.
	}
	frame, err := wire.ReadFrame(s, c.maxFrame)
	if err != nil {
		return fail(err)
	}
	resp, err := wire.DecodeResponse(frame)
	if err != nil {
		return fail(err)
	}
	if !stop() {
		// The context ended meanwhile and cancelled the stream; the reply
		// arrived all the same.
		return resp, nil
	}
	if resp.GetStreamKept() {
		c.kept.put(s)
		return resp, nil
	}
	// Not kept: the server closed its side and waits for ours. A
	// successful call that was not kept came from a server that keeps no
	// streams (an older qpcd); a current one declines only while draining
	// or after a request it could not read whole.
	_ = s.Close()
	if resp.GetStatus() == qpcv1.Status_STATUS_OK {
		c.kept.refused()
	}
	return resp, nil
}

// DoFrame writes raw bytes on a new stream, closes its side and reads one
// response frame,
// within the deadline of an ordinary call of that size.
func (c *Client) DoFrame(ctx context.Context, raw []byte) (*qpcv1.Response, error) {
	ctx, cancel := withDeadline(ctx, "(raw frame)", c.Deadlines().For(nil, len(raw)))
	defer cancel()
	return c.doFrame(ctx, raw)
}

func (c *Client) doFrame(ctx context.Context, raw []byte) (*qpcv1.Response, error) {
	s, err := c.conn.OpenStreamSync(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctxError(ctx)
		}
		return nil, connError(err)
	}
	stop := context.AfterFunc(ctx, func() {
		s.CancelRead(0)
		s.CancelWrite(0)
	})
	defer stop()
	// The FIN goes with the request: one packet, and the server needs
	// nothing more from this side of the stream.
	_, werr := s.Write(raw)
	if werr == nil {
		// Fails only if the server already stopped reading (an oversized
		// request): its answer, read below, says why.
		_ = s.Close()
	}
	var stopped *quic.StreamError
	if werr != nil && !(errors.As(werr, &stopped) && stopped.Remote) {
		return nil, c.streamError(ctx, werr)
	}
	// Even when the server stopped reading early (an oversized request), it
	// answers first: read that answer rather than report a bare reset.
	frame, err := wire.ReadFrame(s, c.maxFrame)
	if err != nil {
		if werr != nil {
			return nil, c.streamError(ctx, werr)
		}
		return nil, c.streamError(ctx, err)
	}
	resp, err := wire.DecodeResponse(frame)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *Client) streamError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctxError(ctx)
	}
	if cause := context.Cause(c.conn.Context()); cause != nil && c.conn.Context().Err() != nil {
		return connError(cause)
	}
	return connError(err)
}

// connError turns a draining close into the DRAINING status clients handle.
func connError(err error) error {
	if transport.IsDraining(err) {
		return &wire.StatusError{Code: qpcv1.Status_STATUS_DRAINING, Message: "server draining; reconnect and retry"}
	}
	return fmt.Errorf("rpcclient: %w", err)
}

func statusError(r *qpcv1.Response) error {
	return &wire.StatusError{Code: r.GetStatus(), Message: r.GetMessage(), RetryAfter: msDuration(r.GetRetryAfterMs())}
}

// IsRetryable reports whether a call may succeed if repeated later
// (after reconnecting for DRAINING).
func IsRetryable(err error) bool {
	var se *wire.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case qpcv1.Status_STATUS_UNAVAILABLE, qpcv1.Status_STATUS_DRAINING, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED:
			return true
		}
		return false
	}
	var idle *quic.IdleTimeoutError
	var app *quic.ApplicationError
	var reset *quic.StatelessResetError
	return errors.As(err, &idle) || errors.As(err, &app) || errors.As(err, &reset) || errors.Is(err, context.DeadlineExceeded)
}

func msDuration(ms uint32) time.Duration { return time.Duration(ms) * time.Millisecond }

// DefaultStreamIdle is how long a kept stream may wait unused before the
// client closes it. Short, because each open stream holds a goroutine on
// the server: a device that sends now and then keeps only its long poll's
// stream, while a busy one reuses its streams call after call.
const DefaultStreamIdle = 2 * time.Second

// maxIdleStreams bounds the kept streams waiting for a call; more than the
// calls a client makes at once would only hold server goroutines.
const maxIdleStreams = 4

// SetStreamIdle sets how long a kept stream may wait unused before it is
// closed; 0 turns keeping streams off (one stream per call, as before
// kept streams existed).
func (c *Client) SetStreamIdle(d time.Duration) {
	c.kept.mu.Lock()
	c.kept.idleFor = d
	c.kept.mu.Unlock()
	if d <= 0 {
		c.kept.closeAll(false)
	}
}

// StreamsKept reports whether the server has kept streams for this client
// (false until the first reply, and with a server that does not).
func (c *Client) StreamsKept() bool {
	c.kept.mu.Lock()
	defer c.kept.mu.Unlock()
	return c.kept.seen && !c.kept.off
}

// keptStreams are the open streams a server kept after its reply, waiting
// for the next call. Without them each call opens a stream and ends it:
// with quic-go that is four packets per call instead of two (the
// MAX_STREAMS update for the ended stream, and the acknowledgement it
// draws, travel alone), which measured as half the CPU of a bare request
// and reply (docs/benchmarks.md, "Kept streams").
type keptStreams struct {
	mu      sync.Mutex
	idleFor time.Duration // 0: keep none
	off     bool          // the server does not keep streams
	seen    bool          // the server kept a stream at least once
	closed  bool
	idle    []idleStream // the most recently used last
	timer   *time.Timer
}

type idleStream struct {
	s     *quic.Stream
	since time.Time
}

func (k *keptStreams) wanted() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.idleFor > 0 && !k.off && !k.closed
}

// take returns the most recently used idle stream, or nil.
func (k *keptStreams) take() *quic.Stream {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := len(k.idle)
	if n == 0 {
		return nil
	}
	s := k.idle[n-1].s
	k.idle[n-1] = idleStream{}
	k.idle = k.idle[:n-1]
	return s
}

// put makes s available to the next call, or closes it when enough are
// idle already.
func (k *keptStreams) put(s *quic.Stream) {
	k.mu.Lock()
	k.seen = true
	if k.closed || k.off || k.idleFor <= 0 || len(k.idle) >= maxIdleStreams {
		k.mu.Unlock()
		_ = s.Close()
		return
	}
	k.idle = append(k.idle, idleStream{s: s, since: time.Now()})
	if k.timer == nil {
		k.timer = time.AfterFunc(k.idleFor, k.expire)
	}
	k.mu.Unlock()
}

// refused turns keeping off: the server answered without keeping the
// stream it was asked to keep, so it is one that never does.
func (k *keptStreams) refused() {
	k.mu.Lock()
	k.off = true
	idle := k.idle
	k.idle = nil
	k.mu.Unlock()
	for _, e := range idle {
		_ = e.s.Close()
	}
}

// expire closes the streams idle for idleFor or longer (the oldest are at
// the front) and waits for the next to come due; one timer per client.
func (k *keptStreams) expire() {
	k.mu.Lock()
	now := time.Now()
	n := 0
	for n < len(k.idle) && now.Sub(k.idle[n].since) >= k.idleFor {
		n++
	}
	old := make([]*quic.Stream, n)
	for i := range n {
		old[i] = k.idle[i].s
	}
	k.idle = append(k.idle[:0], k.idle[n:]...)
	if len(k.idle) > 0 && !k.closed {
		k.timer.Reset(k.idle[0].since.Add(k.idleFor).Sub(now))
	} else {
		k.timer = nil
	}
	k.mu.Unlock()
	for _, s := range old {
		_ = s.Close()
	}
}

// closeAll closes every idle stream: keeping was turned off, or (final)
// the client closes.
func (k *keptStreams) closeAll(final bool) {
	k.mu.Lock()
	k.closed = k.closed || final
	idle := k.idle
	k.idle = nil
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	k.mu.Unlock()
	for _, e := range idle {
		_ = e.s.Close()
	}
}

// IdleStreams is the number of kept streams waiting for a call.
func (c *Client) IdleStreams() int {
	c.kept.mu.Lock()
	defer c.kept.mu.Unlock()
	return len(c.kept.idle)
}
