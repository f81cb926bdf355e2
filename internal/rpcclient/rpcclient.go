// Package rpcclient calls qpcd RPCs over one QUIC connection: one stream per
// call, a request frame out and a response frame back, with the server's
// status turned into a *wire.StatusError.
package rpcclient

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Client is safe for concurrent calls.
type Client struct {
	conn     *quic.Conn
	nextID   atomic.Uint64
	maxFrame int
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
	return &Client{conn: qc, maxFrame: wire.DefaultMaxFrame + 64<<10}
}

// Conn exposes the QUIC connection (TLS state, close reasons).
func (c *Client) Conn() *quic.Conn { return c.conn }

// Close closes the connection politely.
func (c *Client) Close() error { return c.conn.CloseWithError(transport.CodeNoError, "client closing") }

// Call sends req to method with an optional access token and decodes the
// reply into resp. A non-OK status comes back as *wire.StatusError; a
// connection closed by a draining server comes back as STATUS_DRAINING.
func (c *Client) Call(ctx context.Context, method, token string, req, resp proto.Message) error {
	body, err := wire.Marshal(req)
	if err != nil {
		return fmt.Errorf("rpcclient: encode %s request: %w", method, err)
	}
	env := &qpcv1.Request{Version: wire.ProtocolVersion, Method: method, AccessToken: token, Body: body}
	out, err := c.Do(ctx, env)
	if err != nil {
		return err
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
// returns the raw response. Tests use it to send what Call never would.
func (c *Client) Do(ctx context.Context, env *qpcv1.Request) (*qpcv1.Response, error) {
	if env.RequestId == 0 {
		env.RequestId = c.nextID.Add(1)
	}
	frame, err := wire.Marshal(env)
	if err != nil {
		return nil, err
	}
	return c.DoFrame(ctx, wire.AppendFrame(nil, frame))
}

// DoFrame writes raw bytes on a new stream and reads one response frame.
func (c *Client) DoFrame(ctx context.Context, raw []byte) (*qpcv1.Response, error) {
	s, err := c.conn.OpenStreamSync(ctx)
	if err != nil {
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
		return ctx.Err()
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
	return errors.As(err, &idle) || errors.As(err, &app) || errors.Is(err, context.DeadlineExceeded)
}

func msDuration(ms uint32) time.Duration { return time.Duration(ms) * time.Millisecond }
