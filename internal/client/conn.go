package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// ServerTrust says how to reach and trust the server.
type ServerTrust struct {
	Addr       string // host:port (UDP)
	PinSHA256  string // leaf certificate fingerprint; empty: verify with CAs
	CAFile     string // PEM roots for CA verification; empty: the system roots
	ServerName string // TLS name; empty: the host of Addr
}

// ErrPinMismatch: the server's certificate is not the pinned one. The
// wrapped error names both fingerprints.
var ErrPinMismatch = transport.ErrPinMismatch

// Conn is a connection to qpcd that redials when the server drains, the
// connection idles out or closes, and retries transient failures with
// Backoff. It is safe for concurrent use.
type Conn struct {
	trust   ServerTrust
	opts    transport.DialOptions
	backoff Backoff
	log     *slog.Logger

	mu        sync.Mutex
	rc        *rpcclient.Client
	deadlines rpcclient.Deadlines
}

// SetCallDeadlines sets the deadline of every call (zero fields: the
// rpcclient defaults). A call that gets no answer in time fails with a
// retryable error and the connection is dropped, so the next attempt
// redials instead of waiting on a dead connection.
func (c *Conn) SetCallDeadlines(d rpcclient.Deadlines) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadlines = d
	if c.rc != nil {
		c.rc.SetDeadlines(d)
	}
}

// NewConn prepares a connection; nothing is dialled until the first call.
func NewConn(trust ServerTrust, b Backoff, log *slog.Logger) (*Conn, error) {
	if trust.Addr == "" {
		return nil, errors.New("client: no server address; run qpc init --server HOST:PORT")
	}
	o := transport.DialOptions{PinSHA256: trust.PinSHA256, ServerName: trust.ServerName}
	if trust.PinSHA256 != "" {
		if _, err := transport.NormalizeFingerprint(trust.PinSHA256); err != nil {
			return nil, fmt.Errorf("client: --pin: %w; copy cert_sha256 from qpcd's start-up log", err)
		}
	}
	if trust.CAFile != "" {
		pem, err := os.ReadFile(trust.CAFile)
		if err != nil {
			return nil, fmt.Errorf("client: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client: CA file %s holds no PEM certificate", trust.CAFile)
		}
		o.RootCAs = pool
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Conn{trust: trust, opts: o, backoff: b.withDefaults(), log: log}, nil
}

// Close closes the current connection, if any.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rc == nil {
		return nil
	}
	err := c.rc.Close()
	c.rc = nil
	return err
}

func (c *Conn) client(ctx context.Context) (*rpcclient.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rc != nil && c.rc.Conn().Context().Err() == nil {
		return c.rc, nil
	}
	if c.rc != nil {
		_ = c.rc.Close()
		c.rc = nil
	}
	dctx := ctx
	if c.backoff.DialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, c.backoff.DialTimeout)
		defer cancel()
	}
	rc, err := rpcclient.Dial(dctx, c.trust.Addr, c.opts)
	if err != nil {
		if errors.Is(err, transport.ErrPinMismatch) {
			return nil, &TrustError{Addr: c.trust.Addr, Presented: presentedFingerprint(err), err: err, pinned: true}
		}
		if fp, ok := untrustedCert(err); ok {
			return nil, &TrustError{Addr: c.trust.Addr, Presented: fp, err: err}
		}
		return nil, &dialError{err: err}
	}
	rc.SetDeadlines(c.deadlines)
	c.rc = rc
	return rc, nil
}

// drop forgets rc so the next call redials (unless another call already did).
func (c *Conn) drop(rc *rpcclient.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rc == rc {
		_ = rc.Close()
		c.rc = nil
	}
}

// TrustError: the server answered but its certificate is not the one this
// client trusts: it no longer matches the pin (the operator rotated it, or
// someone is in the way), or it does not verify against the CAs (a
// self-signed qpcd reached without --pin). Retrying cannot help; the user
// must check the fingerprint and re-pin. Outbox entries stay pending.
type TrustError struct {
	Addr      string
	Presented string // SHA-256 of the certificate the server presented ("" if unknown)
	pinned    bool
	err       error
}

func (e *TrustError) Error() string {
	fp := e.Presented
	if fp == "" {
		fp = "<fingerprint>"
	}
	if e.pinned {
		return fmt.Sprintf("client: the server's certificate changed (%v); if the operator rotated it, check the new fingerprint with them (cert_sha256 in qpcd's log, or qpcctl status) and re-pin: qpc init --server %s --pin %s",
			e.err, e.Addr, fp)
	}
	return fmt.Sprintf("client: the server's certificate is not trusted (%v); for a self-signed qpcd, check its fingerprint (cert_sha256 in qpcd's log, or qpcctl status) and pin it: qpc init --server %s --pin %s",
		e.err, e.Addr, fp)
}

func (e *TrustError) Unwrap() error { return e.err }

// presentedFingerprint takes the presented fingerprint out of a pin
// mismatch ("server presented X, pinned Y").
func presentedFingerprint(err error) string {
	s := err.Error()
	const marker = "server presented "
	i := strings.Index(s, marker)
	if i < 0 {
		return ""
	}
	s = s[i+len(marker):]
	if j := strings.IndexAny(s, ", "); j >= 0 {
		s = s[:j]
	}
	return s
}

// untrustedCert reports whether err is a certificate verification failure
// and returns the leaf's fingerprint when the error carries it.
func untrustedCert(err error) (string, bool) {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var he x509.HostnameError
	var ve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ve) && len(ve.UnverifiedCertificates) > 0:
		return transport.Fingerprint(ve.UnverifiedCertificates[0].Raw), true
	case errors.As(err, &ua):
		if ua.Cert != nil {
			return transport.Fingerprint(ua.Cert.Raw), true
		}
		return "", true
	case errors.As(err, &ci):
		if ci.Cert != nil {
			return transport.Fingerprint(ci.Cert.Raw), true
		}
		return "", true
	case errors.As(err, &he):
		if he.Certificate != nil {
			return transport.Fingerprint(he.Certificate.Raw), true
		}
		return "", true
	}
	return "", false
}

// dialError is a failure to reach the server: always worth retrying.
type dialError struct{ err error }

func (e *dialError) Error() string {
	return fmt.Sprintf("client: cannot reach the server: %v", e.err)
}
func (e *dialError) Unwrap() error { return e.err }

// connLostError: the call failed below the RPC layer (no status came
// back): the connection idled out, was closed or reset, or the call got
// no answer within its deadline (*rpcclient.DeadlineError).
type connLostError struct{ err error }

func (e *connLostError) Error() string {
	return fmt.Sprintf("client: connection to the server lost: %v", e.err)
}
func (e *connLostError) Unwrap() error { return e.err }

// Retryable reports whether err is transient: the server unreachable,
// draining, overloaded or briefly unavailable, or the connection lost.
func Retryable(err error) bool {
	var de *dialError
	var ce *connLostError
	var se *wire.StatusError
	switch {
	case errors.As(err, &de), errors.As(err, &ce):
		return true
	case errors.As(err, &se):
		switch se.Code {
		case qpcv1.Status_STATUS_UNAVAILABLE, qpcv1.Status_STATUS_DRAINING:
			return true
		case qpcv1.Status_STATUS_RESOURCE_EXHAUSTED:
			return se.RetryAfter > 0 // 0: a cap, not a rate; retrying cannot help
		}
	}
	return false
}

// Once makes a single attempt (reconnecting first if needed): for calls that
// must not be repeated blindly, such as Refresh.
func (c *Conn) Once(ctx context.Context, method, token string, req, resp proto.Message) error {
	rc, err := c.client(ctx)
	if err != nil {
		return err
	}
	err = rc.Call(ctx, method, token, req, resp)
	var se *wire.StatusError
	switch {
	case err == nil:
	case errors.As(err, &se):
		if se.Code == qpcv1.Status_STATUS_DRAINING {
			c.drop(rc) // the server closed the connection; the retry redials
		}
	case ctx.Err() != nil:
		return err
	default:
		c.drop(rc)
		return &connLostError{err: err}
	}
	return err
}

// Call makes the call, retrying transient failures (after reconnecting
// where the connection was lost) with capped exponential backoff and full
// jitter. Only idempotent calls (or calls whose repetition is harmless)
// should use it.
func (c *Conn) Call(ctx context.Context, method, token string, req, resp proto.Message) error {
	var err error
	for n := 0; ; n++ {
		err = c.Once(ctx, method, token, req, resp)
		if err == nil || !Retryable(err) || ctx.Err() != nil || n+1 >= c.backoff.MaxAttempts {
			return err
		}
		var retryAfter = retryAfterOf(err)
		d := c.backoff.Delay(n, retryAfter)
		c.log.Debug("client: retrying", "method", method, "attempt", n+1, "wait", d, "err", err)
		if c.backoff.OnRetry != nil {
			c.backoff.OnRetry(method, n+1, c.backoff.MaxAttempts, d, err)
		}
		if serr := c.backoff.Sleep(ctx, d); serr != nil {
			return err
		}
	}
}

func retryAfterOf(err error) (d0 time.Duration) {
	var se *wire.StatusError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}
