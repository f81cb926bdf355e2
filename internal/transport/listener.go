package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Handler serves one RPC stream. It owns s until it returns.
type Handler interface {
	ServeStream(ctx context.Context, c *Conn, s *quic.Stream)
}

// Events are optional callbacks for metrics; nil fields are skipped.
type Events struct {
	ConnAccepted func()
	ConnClosed   func()
	ConnRejected func(reason string) // "limit", "draining"
}

// ListenerConfig configures Listen. Zero values take the documented defaults.
type ListenerConfig struct {
	Addr              string        // UDP address, e.g. 127.0.0.1:7443
	TLS               *tls.Config   // from CertStore.ServerTLSConfig
	MaxConnections    int           // default 1000; the next connection is closed with CodeConnectionLimit
	MaxStreamsPerConn int64         // concurrent RPCs per connection, default 100
	IdleTimeout       time.Duration // default 60s
	KeepAlive         time.Duration // default 15s; 0 keeps the default, negative disables
	Logger            *slog.Logger
	Events            Events
}

// Conn is an accepted connection as handlers see it.
type Conn struct {
	Q  *quic.Conn
	ID uint64

	lastReply atomic.Int64 // UnixNano when the last reply was handed to QUIC; 0: none
}

// ReplySent records that a reply was just handed to QUIC. A draining
// listener keeps the connection open long enough for it to arrive.
func (c *Conn) ReplySent() { c.lastReply.Store(time.Now().UnixNano()) }

// maxAckDelay is quic-go's max_ack_delay transport parameter (the RFC 9000
// default), part of the probe timeout.
const maxAckDelay = 25 * time.Millisecond

// closeAfter is when a draining listener may close c: three probe timeouts
// (RFC 9002 section 6.2: smoothed RTT + max(4 RTT variance, 1 ms) + max
// ack delay) after its last reply, time for a lost reply packet to be sent
// again twice. Replies carry no acknowledgement of their own, so this is
// what keeps a drain from cutting a reply off on a lossy path.
func (c *Conn) closeAfter() time.Time {
	last := c.lastReply.Load()
	if last == 0 {
		return time.Time{}
	}
	st := c.Q.ConnectionStats()
	pto := st.SmoothedRTT + max(4*st.MeanDeviation, time.Millisecond) + maxAckDelay
	return time.Unix(0, last).Add(3 * pto)
}

// RemoteIP is the peer's address without port, for per-IP limits and logs.
func (c *Conn) RemoteIP() string {
	if ua, ok := c.Q.RemoteAddr().(*net.UDPAddr); ok {
		return ua.IP.String()
	}
	host, _, _ := net.SplitHostPort(c.Q.RemoteAddr().String())
	return host
}

// Listener accepts QUIC connections and hands each stream to a Handler.
type Listener struct {
	cfg     ListenerConfig
	h       Handler
	log     *slog.Logger
	udp     net.PacketConn
	tr      *quic.Transport
	ln      *quic.Listener
	streams inflight
	connWG  sync.WaitGroup

	mu       sync.Mutex
	conns    map[*quic.Conn]*Conn
	nextID   uint64
	draining bool
}

// Listen binds the UDP socket and starts the QUIC listener; call Serve.
func Listen(cfg ListenerConfig, h Handler) (*Listener, error) {
	if cfg.TLS == nil {
		return nil, errors.New("transport: Listen needs a TLS config")
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = 1000
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	switch {
	case cfg.KeepAlive == 0:
		cfg.KeepAlive = 15 * time.Second
	case cfg.KeepAlive < 0:
		cfg.KeepAlive = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	tlsConf := cfg.TLS.Clone()
	tlsConf.MinVersion, tlsConf.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	tlsConf.NextProtos = []string{ALPN}

	udpAddr, err := net.ResolveUDPAddr("udp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen address %q: %w", cfg.Addr, err)
	}
	udp, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen on %s/udp: %w", cfg.Addr, err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(tlsConf, &quic.Config{
		MaxIdleTimeout:        cfg.IdleTimeout,
		KeepAlivePeriod:       cfg.KeepAlive,
		MaxIncomingStreams:    cfg.MaxStreamsPerConn,
		MaxIncomingUniStreams: -1,
		HandshakeIdleTimeout:  10 * time.Second,
	})
	if err != nil {
		udp.Close()
		return nil, fmt.Errorf("transport: quic listen: %w", err)
	}
	return &Listener{cfg: cfg, h: h, log: cfg.Logger, udp: udp, tr: tr, ln: ln, conns: map[*quic.Conn]*Conn{}}, nil
}

// Addr is the bound UDP address (useful with port 0 in tests).
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Connections is the number of open connections.
func (l *Listener) Connections() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Serve accepts connections until Shutdown; it returns nil after a shutdown.
func (l *Listener) Serve() error {
	for {
		qc, err := l.ln.Accept(context.Background())
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("transport: accept: %w", err)
		}
		l.admit(qc)
	}
}

func (l *Listener) admit(qc *quic.Conn) {
	l.mu.Lock()
	if l.draining {
		l.mu.Unlock()
		l.event(l.cfg.Events.ConnRejected, "draining")
		_ = qc.CloseWithError(CodeDraining, "server draining")
		return
	}
	if len(l.conns) >= l.cfg.MaxConnections {
		n := len(l.conns)
		l.mu.Unlock()
		l.event(l.cfg.Events.ConnRejected, "limit")
		l.log.Warn("connection refused: at connection limit", "remote", qc.RemoteAddr().String(), "open", n, "limit", l.cfg.MaxConnections)
		_ = qc.CloseWithError(CodeConnectionLimit, fmt.Sprintf("server at its connection limit (%d); retry later", l.cfg.MaxConnections))
		return
	}
	l.nextID++
	c := &Conn{Q: qc, ID: l.nextID}
	l.conns[qc] = c
	l.connWG.Add(1)
	l.mu.Unlock()
	if f := l.cfg.Events.ConnAccepted; f != nil {
		f()
	}
	go l.serveConn(c)
}

func (l *Listener) serveConn(c *Conn) {
	defer l.connWG.Done()
	defer func() {
		l.mu.Lock()
		delete(l.conns, c.Q)
		l.mu.Unlock()
		if f := l.cfg.Events.ConnClosed; f != nil {
			f()
		}
	}()
	ctx := c.Q.Context()
	for {
		s, err := c.Q.AcceptStream(ctx)
		if err != nil {
			return // connection closed, by either side
		}
		l.streams.add()
		go func() {
			defer l.streams.done()
			l.h.ServeStream(ctx, c, s)
		}()
	}
}

func (l *Listener) event(f func(string), reason string) {
	if f != nil {
		f(reason)
	}
}

// Shutdown drains: it stops accepting connections, lets in-flight streams
// finish until ctx is done, gives each connection's last reply time to
// arrive (Conn.closeAfter), then closes every connection with CodeDraining
// and releases the socket. Streams opened meanwhile still reach the handler,
// which is expected to answer them with a draining status. It returns
// ctx.Err() if in-flight streams had to be cut off.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.mu.Lock()
	l.draining = true
	l.mu.Unlock()
	_ = l.ln.Close()

	waitErr := l.streams.wait(ctx)

	l.mu.Lock()
	conns := make([]*Conn, 0, len(l.conns))
	for _, c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	var until time.Time
	for _, c := range conns {
		if t := c.closeAfter(); t.After(until) {
			until = t
		}
	}
	if d := time.Until(until); d > 0 && waitErr == nil {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	for _, c := range conns {
		_ = c.Q.CloseWithError(CodeDraining, "server draining")
	}
	l.connWG.Wait()
	_ = l.tr.Close()
	_ = l.udp.Close()
	return waitErr
}

// inflight counts running handlers; wait returns when the count reaches
// zero. Unlike sync.WaitGroup it allows add while a wait is in progress.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{}
}

func (f *inflight) add() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
	f.mu.Unlock()
}

func (f *inflight) wait(ctx context.Context) error {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return nil
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	ch := f.idle
	f.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
