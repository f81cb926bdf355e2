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
	// Addr is host:port (UDP), or the nodes of one deployment as a
	// comma-separated list "host:port,host:port" (Addrs); the client
	// fails over between them (failover.go).
	Addr string
	// PinSHA256 is the leaf certificate fingerprint, or a comma-separated
	// list of them (Pins): every node must present a certificate that
	// matches one. Empty: verify with CAs.
	PinSHA256  string
	CAFile     string // PEM roots for CA verification; empty: the system roots
	ServerName string // TLS name; empty: the host of the node's address
}

// ErrPinMismatch: the server's certificate is not the pinned one. The
// wrapped error names both fingerprints.
var ErrPinMismatch = transport.ErrPinMismatch

// DefaultIdleTimeout is how long a connection may stay silent before the
// client counts it as dead and moves on (with keep-alives every third of
// it, a live server is never silent that long).
const DefaultIdleTimeout = 10 * time.Second

// NodeDialTimeout bounds a connection attempt to one of several nodes
// while others remain to be tried.
const NodeDialTimeout = 3 * time.Second

// Conn is a connection to qpcd that redials when the server drains, the
// connection idles out or closes, and retries transient failures with
// Backoff. Given several nodes, it uses one at a time and fails over to
// the next when that one fails (failover.go). It is safe for concurrent use.
type Conn struct {
	trust   ServerTrust
	opts    transport.DialOptions
	backoff Backoff
	log     *slog.Logger

	mu        sync.Mutex
	nodes     *nodeList
	rc        *rpcclient.Client
	rcNode    int // the node rc is connected to
	deadlines rpcclient.Deadlines
	onMove    func(addr string)
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

// SetIdleTimeout sets how long a silent connection lives (0: the default,
// DefaultIdleTimeout); it applies from the next dial.
func (c *Conn) SetIdleTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultIdleTimeout
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.opts.IdleTimeout = d
	c.opts.KeepAlive = max(d/3, time.Millisecond)
}

// NewConn prepares a connection; nothing is dialled until the first call.
func NewConn(trust ServerTrust, b Backoff, log *slog.Logger) (*Conn, error) {
	addrs := trust.Addrs()
	if err := checkAddrs(addrs); err != nil {
		return nil, err
	}
	pins := trust.Pins()
	if err := checkPins(pins); err != nil {
		return nil, err
	}
	o := transport.DialOptions{Pins: pins, ServerName: trust.ServerName,
		IdleTimeout: DefaultIdleTimeout, KeepAlive: DefaultIdleTimeout / 3}
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
	b = b.withDefaults()
	return &Conn{trust: trust, opts: o, backoff: b, log: log, nodes: newNodeList(addrs, b)}, nil
}

// Nodes are the server addresses, in the order they are tried.
func (c *Conn) Nodes() []string { return append([]string(nil), c.nodes.addrs...) }

// Current is the address of the node in use (or tried next).
func (c *Conn) Current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, a := c.nodes.current()
	return a
}

// UseNode makes addr the node tried first (the one that worked last
// time); an address not in the list is ignored.
func (c *Conn) UseNode(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rc == nil {
		c.nodes.use(addr)
	}
}

// OnMove sets a function told the new node's address each time the client
// moves to another node (the SDK remembers it for the next run).
func (c *Conn) OnMove(f func(addr string)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onMove = f
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

// client returns the connection to the node in use, dialling it first if
// needed. A node that cannot be reached (or presents a certificate this
// client does not trust) counts as failed and the next one is tried, each
// node at most once per call; if none answers, the first trust failure is
// returned, else the last dial failure.
func (c *Conn) client(ctx context.Context) (*rpcclient.Client, int, error) {
	c.mu.Lock()
	if c.rc != nil && c.rc.Conn().Context().Err() == nil {
		defer c.mu.Unlock()
		return c.rc, c.rcNode, nil
	}
	var moved string
	if c.rc != nil {
		// The connection ended under us (the node closed it, drained, or
		// went silent past the idle timeout): that node failed.
		_ = c.rc.Close()
		c.rc = nil
		if c.nodes.failed(c.rcNode) {
			_, moved = c.nodes.current()
			c.log.Warn("client: connection to a server node lost; moving to the next", "node", c.nodes.addrs[c.rcNode], "next", moved)
		}
	}
	var (
		firstTrust *TrustError
		lastErr    error
	)
	defer func() {
		f := c.onMove
		c.mu.Unlock()
		if moved != "" && f != nil {
			f(moved)
		}
	}()
	for k := range c.nodes.addrs {
		i, addr := c.nodes.current()
		// While other nodes remain to be tried, a node that does not
		// answer quickly is given up on (QUIC has no "connection refused":
		// a dead node's port just stays silent); the last one gets the
		// full handshake time.
		timeout := c.backoff.DialTimeout
		if k < len(c.nodes.addrs)-1 && (timeout <= 0 || timeout > NodeDialTimeout) {
			timeout = NodeDialTimeout
		}
		rc, err := c.dialNode(ctx, addr, timeout)
		if err == nil {
			c.rc, c.rcNode = rc, i
			return rc, i, nil
		}
		if ctx.Err() != nil {
			return nil, i, err
		}
		var te *TrustError
		if errors.As(err, &te) && firstTrust == nil {
			firstTrust = te
		}
		lastErr = err
		if !c.nodes.failed(i) {
			break // no other node to try now
		}
		_, moved = c.nodes.current()
		c.log.Warn("client: server node failed; moving to the next", "node", addr, "next", moved, "err", err)
	}
	if firstTrust != nil {
		return nil, c.nodes.cur, firstTrust
	}
	return nil, c.nodes.cur, lastErr
}

// dialNode dials one node (c.mu held).
func (c *Conn) dialNode(ctx context.Context, addr string, timeout time.Duration) (*rpcclient.Client, error) {
	dctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	rc, err := rpcclient.Dial(dctx, addr, c.opts)
	if err != nil {
		if errors.Is(err, transport.ErrPinMismatch) {
			return nil, &TrustError{Addr: addr, Presented: presentedFingerprint(err), err: err, pinned: true, servers: c.trust.Addr, pins: c.trust.PinSHA256}
		}
		if fp, ok := untrustedCert(err); ok {
			return nil, &TrustError{Addr: addr, Presented: fp, err: err, servers: c.trust.Addr, pins: c.trust.PinSHA256}
		}
		return nil, &dialError{addr: addr, err: err}
	}
	rc.SetDeadlines(c.deadlines)
	return rc, nil
}

// nodeFailed drops rc (if it is still the connection in use) and records
// that its node failed, moving to the next node; the retry redials there.
func (c *Conn) nodeFailed(rc *rpcclient.Client, node int, why error) {
	c.mu.Lock()
	if c.rc == rc {
		_ = rc.Close()
		c.rc = nil
	}
	moved := ""
	if c.nodes.failed(node) {
		_, moved = c.nodes.current()
		c.log.Warn("client: server node failed; moving to the next", "node", c.nodes.addrs[node], "next", moved, "err", why)
	}
	f := c.onMove
	c.mu.Unlock()
	if moved != "" && f != nil {
		f(moved)
	}
}

// nodeOK records that node answered.
func (c *Conn) nodeOK(node int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes.ok(node)
}

// TrustError: the server answered but its certificate is not the one this
// client trusts: it no longer matches the pin (the operator rotated it, or
// someone is in the way), or it does not verify against the CAs (a
// self-signed qpcd reached without --pin). Retrying cannot help; the user
// must check the fingerprint and re-pin. Outbox entries stay pending.
type TrustError struct {
	Addr      string // the node that presented the certificate
	Presented string // SHA-256 of the certificate the server presented ("" if unknown)
	pinned    bool
	err       error
	// With several nodes, the whole list and the pins in force, so the
	// advice re-pins without dropping the other nodes.
	servers, pins string
}

func (e *TrustError) Error() string {
	fp := e.Presented
	if fp == "" {
		fp = "<fingerprint>"
	}
	server, pin := e.Addr, fp
	if len(SplitList(e.servers)) > 1 {
		server = e.servers
		if e.pins != "" {
			pin = e.pins + "," + fp // keep the other nodes' pins
		}
	}
	if e.pinned {
		return fmt.Sprintf("client: the server's certificate changed (%v); if the operator rotated it, check the new fingerprint with them (cert_sha256 in qpcd's log, or qpcctl status) and re-pin: qpc init --server %s --pin %s",
			e.err, server, pin)
	}
	return fmt.Sprintf("client: the server's certificate is not trusted (%v); for a self-signed qpcd, check its fingerprint (cert_sha256 in qpcd's log, or qpcctl status) and pin it: qpc init --server %s --pin %s",
		e.err, server, pin)
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
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string {
	return fmt.Sprintf("client: cannot reach the server %s: %v", e.addr, e.err)
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
// must not be repeated blindly, such as Refresh. A failure of the node
// (lost connection, DRAINING, UNAVAILABLE) makes the next attempt go to the
// next node.
func (c *Conn) Once(ctx context.Context, method, token string, req, resp proto.Message) error {
	_, err := c.once(ctx, method, token, req, resp)
	return err
}

// once is Once; it also reports whether the client moved to a node with
// no recent failure (the retry need not wait long for it).
func (c *Conn) once(ctx context.Context, method, token string, req, resp proto.Message) (moved bool, err error) {
	before := c.Current()
	defer func() {
		c.mu.Lock()
		i, now := c.nodes.current()
		moved = now != before && c.nodes.fails[i] == 0
		c.mu.Unlock()
	}()
	rc, node, err := c.client(ctx)
	if err != nil {
		return false, err
	}
	err = rc.Call(ctx, method, token, req, resp)
	var se *wire.StatusError
	switch {
	case err == nil:
		c.nodeOK(node)
	case errors.As(err, &se):
		switch se.Code {
		case qpcv1.Status_STATUS_DRAINING, qpcv1.Status_STATUS_UNAVAILABLE:
			// A draining server closes the connection; an unavailable
			// one may be cut off from the database while others are not.
			c.nodeFailed(rc, node, err)
		default:
			c.nodeOK(node)
		}
	case ctx.Err() != nil:
		return false, err
	default:
		c.nodeFailed(rc, node, err)
		return false, &connLostError{err: err}
	}
	return false, err
}

// Call makes the call, retrying transient failures (after reconnecting
// where the connection was lost) with capped exponential backoff and full
// jitter. Only idempotent calls (or calls whose repetition is harmless)
// should use it. When a failure moved the client to another node that
// has not failed lately, that node is tried after a short jittered wait
// (the first retry's), not the grown backoff; when every node fails (a
// database outage behind them all), the waits grow as with one node.
func (c *Conn) Call(ctx context.Context, method, token string, req, resp proto.Message) error {
	return c.CallAuth(ctx, method, func(context.Context, bool) (string, error) { return token, nil }, req, resp)
}

// TokenSource returns the access token for the next attempt of a call:
// the stored one while the client's clock calls it fresh, else a renewed
// one; force renews it whatever the clock says (the server refused it).
type TokenSource func(ctx context.Context, force bool) (string, error)

// CallAuth is Call with an access token asked of tokens before every
// attempt, so a retry after a long backoff does not carry a token that
// expired while it waited. An UNAUTHENTICATED answer (the server's clock
// or a revocation says the token is no good) forces one renewal and one
// more attempt per call; a second refusal is returned.
func (c *Conn) CallAuth(ctx context.Context, method string, tokens TokenSource, req, resp proto.Message) error {
	var err error
	renewed := false
	for n, k := 0, 0; ; n, k = n+1, k+1 {
		var tok string
		if tok, err = tokens(ctx, false); err != nil {
			return err
		}
		var moved bool
		moved, err = c.once(ctx, method, tok, req, resp)
		if !renewed && wire.Code(err) == qpcv1.Status_STATUS_UNAUTHENTICATED {
			renewed = true
			if tok, err = tokens(ctx, true); err != nil {
				return err
			}
			moved, err = c.once(ctx, method, tok, req, resp)
		}
		if err == nil || !Retryable(err) || ctx.Err() != nil || n+1 >= c.backoff.MaxAttempts {
			return err
		}
		if moved {
			k = 0
		}
		d := c.backoff.Delay(k, retryAfterOf(err))
		c.log.Debug("client: retrying", "method", method, "attempt", n+1, "node", c.Current(), "wait", d, "err", err)
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
