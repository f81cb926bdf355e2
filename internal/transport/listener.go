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
	conns    map[*quic.Conn]struct{}
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
	return &Listener{cfg: cfg, h: h, log: cfg.Logger, udp: udp, tr: tr, ln: ln, conns: map[*quic.Conn]struct{}{}}, nil
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
	l.conns[qc] = struct{}{}
	l.nextID++
	c := &Conn{Q: qc, ID: l.nextID}
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
// finish until ctx is done, then closes every connection with CodeDraining
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
	conns := make([]*quic.Conn, 0, len(l.conns))
	for qc := range l.conns {
		conns = append(conns, qc)
	}
	l.mu.Unlock()
	for _, qc := range conns {
		_ = qc.CloseWithError(CodeDraining, "server draining")
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
