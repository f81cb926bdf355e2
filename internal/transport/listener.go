package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Handler serves one RPC stream. It owns s until it returns. A handler that
// keeps a stream open for further requests calls Conn.Idle while it waits
// for the next one.
type Handler interface {
	ServeStream(ctx context.Context, c *Conn, s *quic.Stream)
}

// Events are optional callbacks for metrics; nil fields are skipped.
type Events struct {
	ConnAccepted func()
	ConnClosed   func()
	// ConnRejected is a handshake refused at admission: RejectLimit,
	// RejectPerAddress or RejectDraining.
	ConnRejected func(reason string)
	// ConnReaped is an admitted connection the server closed for carrying
	// no request: ReapSilent or ReapIdle.
	ConnReaped func(reason string)
}

// Reasons passed to Events.ConnRejected and Events.ConnReaped.
const (
	RejectLimit      = "limit"       // the global cap (MaxConnections)
	RejectPerAddress = "per_address" // the per-address cap (MaxConnectionsPerAddr)
	RejectDraining   = "draining"
	ReapSilent       = "silent" // no stream within FirstStreamTimeout of the handshake
	ReapIdle         = "idle"   // no stream activity for IdleTimeout
)

// ListenerConfig configures Listen. Zero values take the documented defaults.
type ListenerConfig struct {
	Addr           string      // UDP address, e.g. 127.0.0.1:7443
	TLS            *tls.Config // from CertStore.ServerTLSConfig
	MaxConnections int         // default 1000; the next connection is closed with CodeConnectionLimit
	// MaxConnectionsPerAddr caps the connections of one source address
	// (an IPv4 address, an IPv6 /64), so one host cannot take every slot
	// of MaxConnections; default 32. Loopback is not exempt.
	MaxConnectionsPerAddr int
	MaxStreamsPerConn     int64         // concurrent RPCs per connection, default 100
	IdleTimeout           time.Duration // default 60s; also closes connections with no RPC for this long
	// FirstStreamTimeout closes (CodeIdle) a connection that opens no
	// stream this long after its handshake; default 10s.
	FirstStreamTimeout time.Duration
	KeepAlive          time.Duration // default 0: the server sends no keep-alives (clients do); negative also disables
	// StatelessResetKey lets the listener answer packets of connections it
	// does not know (those of a previous process) with a stateless reset;
	// nil: no resets (clients of a crashed server wait for their idle
	// timeout). See LoadStatelessResetKey.
	StatelessResetKey *quic.StatelessResetKey
	// RefusalLogEvery is the least time between two WARN lines about
	// refused or reaped connections of one reason; the lines in between
	// are counted and reported by the next one. Default 1m.
	RefusalLogEvery time.Duration
	Now             func() time.Time // clock for the inactivity rules; nil: time.Now
	Logger          *slog.Logger
	Events          Events
	// ReclaimMinDrop and ReclaimEvery: once at least ReclaimMinDrop
	// connections have closed since the high-water mark and the open ones
	// have fallen to half of it, the sweep returns their memory to the
	// operating system (two forced GCs, see reclaim.go), at most once per
	// ReclaimEvery. Defaults 256 and 1m; a negative ReclaimMinDrop
	// disables it.
	ReclaimMinDrop int
	ReclaimEvery   time.Duration
	// reclaimed, when set (tests), runs after each reclaim in its place.
	reclaimed func()
}

// Conn is an accepted connection as handlers see it.
type Conn struct {
	Q  *quic.Conn
	ID uint64

	addrKey    string       // per-address limit key
	active     atomic.Int32 // streams being served
	served     atomic.Bool  // at least one stream was opened
	lastActive atomic.Int64 // UnixNano of admission or of the last stream start or end
	lastReply  atomic.Int64 // UnixNano when the last reply was handed to QUIC; 0: none

	// Set by the listener, for Idle.
	inflight *inflight
	now      func() time.Time
}

// Idle marks the calling handler's stream as waiting for its next request
// (a kept stream, between two RPCs) until busy is called: meanwhile it
// counts neither as active for the inactivity rules nor as in flight for a
// drain, so an open but unused stream neither holds a connection open for
// ever nor delays a shutdown (the drain then closes the connection under
// it). The handler must call busy before it returns, whether or not
// another request came.
func (c *Conn) Idle() (busy func()) {
	c.lastActive.Store(c.now().UnixNano())
	c.active.Add(-1)
	c.inflight.done()
	return func() {
		c.inflight.add()
		c.active.Add(1)
		c.lastActive.Store(c.now().UnixNano())
	}
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

// AddrKey is the key the per-address connection limit counts by: the
// address for IPv4, the /64 prefix for IPv6 (one host usually owns a
// whole /64).
func AddrKey(a net.Addr) string {
	var ip netip.Addr
	if ua, ok := a.(*net.UDPAddr); ok {
		ip, _ = netip.AddrFromSlice(ua.IP)
	} else if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		ip = ap.Addr()
	}
	if !ip.IsValid() {
		return a.String()
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
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
	refused *refusalLog

	stopSweep chan struct{}
	sweepDone chan struct{}
	sweeps    atomic.Uint64 // sweeps done (tests wait on it)
	reclaim   *reclaimer    // nil: disabled

	mu       sync.Mutex
	conns    map[*quic.Conn]*Conn
	perAddr  map[string]int
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
	if cfg.MaxConnectionsPerAddr <= 0 {
		cfg.MaxConnectionsPerAddr = 32
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.FirstStreamTimeout <= 0 {
		cfg.FirstStreamTimeout = 10 * time.Second
	}
	if cfg.KeepAlive < 0 {
		cfg.KeepAlive = 0
	}
	if cfg.RefusalLogEvery <= 0 {
		cfg.RefusalLogEvery = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.ReclaimMinDrop == 0 {
		cfg.ReclaimMinDrop = reclaimMinDrop
	}
	if cfg.ReclaimEvery <= 0 {
		cfg.ReclaimEvery = reclaimEvery
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
	tr := &quic.Transport{Conn: udp, StatelessResetKey: cfg.StatelessResetKey}
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
	l := &Listener{
		cfg: cfg, h: h, log: cfg.Logger, udp: udp, tr: tr, ln: ln,
		refused:   &refusalLog{every: cfg.RefusalLogEvery, now: cfg.Now, log: cfg.Logger, reasons: map[string]*refusalState{}},
		stopSweep: make(chan struct{}), sweepDone: make(chan struct{}),
		conns: map[*quic.Conn]*Conn{}, perAddr: map[string]int{},
	}
	if cfg.ReclaimMinDrop > 0 {
		l.reclaim = &reclaimer{rule: reclaimRule{minDrop: cfg.ReclaimMinDrop, every: cfg.ReclaimEvery}, free: freeMemory}
		if cfg.reclaimed != nil {
			l.reclaim.free = cfg.reclaimed
		}
	}
	go l.sweep()
	return l, nil
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
	key := AddrKey(qc.RemoteAddr())
	l.mu.Lock()
	if l.draining {
		l.mu.Unlock()
		l.event(l.cfg.Events.ConnRejected, RejectDraining)
		_ = qc.CloseWithError(CodeDraining, "server draining")
		return
	}
	if n := len(l.conns); n >= l.cfg.MaxConnections {
		l.mu.Unlock()
		l.event(l.cfg.Events.ConnRejected, RejectLimit)
		l.refused.note(RejectLimit, "connection refused: at connection limit",
			"remote", qc.RemoteAddr().String(), "open", n, "limit", l.cfg.MaxConnections)
		_ = qc.CloseWithError(CodeConnectionLimit, fmt.Sprintf("server at its connection limit (%d); retry later", l.cfg.MaxConnections))
		return
	}
	if n := l.perAddr[key]; n >= l.cfg.MaxConnectionsPerAddr {
		l.mu.Unlock()
		l.event(l.cfg.Events.ConnRejected, RejectPerAddress)
		l.refused.note(RejectPerAddress, "connection refused: too many connections from one address",
			"remote", qc.RemoteAddr().String(), "address", key, "open", n, "limit", l.cfg.MaxConnectionsPerAddr)
		_ = qc.CloseWithError(CodeConnectionLimit, fmt.Sprintf("too many connections from your address (limit %d); close some or retry later", l.cfg.MaxConnectionsPerAddr))
		return
	}
	l.nextID++
	c := &Conn{Q: qc, ID: l.nextID, addrKey: key, inflight: &l.streams, now: l.cfg.Now}
	c.lastActive.Store(l.cfg.Now().UnixNano())
	l.conns[qc] = c
	l.perAddr[key]++
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
		if l.perAddr[c.addrKey]--; l.perAddr[c.addrKey] <= 0 {
			delete(l.perAddr, c.addrKey)
		}
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
		c.active.Add(1)
		c.served.Store(true)
		c.lastActive.Store(l.cfg.Now().UnixNano())
		l.streams.add()
		go func() {
			defer l.streams.done()
			defer func() {
				c.lastActive.Store(l.cfg.Now().UnixNano())
				c.active.Add(-1)
			}()
			l.h.ServeStream(ctx, c, s)
		}()
	}
}

// sweepInterval is how often the inactivity rules are checked: often
// enough to close a connection within a quarter of its bound, at most
// once a second.
func (l *Listener) sweepInterval() time.Duration {
	d := min(l.cfg.FirstStreamTimeout, l.cfg.IdleTimeout, l.cfg.RefusalLogEvery) / 4
	return min(max(d, 5*time.Millisecond), time.Second)
}

// sweep closes connections that carry no request: silent ones (no stream
// within FirstStreamTimeout of the handshake) and idle ones (no stream
// activity for IdleTimeout). Keep-alives do not count as activity, so
// neither side's PINGs can hold a connection slot for ever. It also
// reports refusals that the rate-limited log held back, and returns the
// memory of a crowd of connections once they have left (reclaim.go).
func (l *Listener) sweep() {
	defer close(l.sweepDone)
	t := time.NewTicker(l.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-l.stopSweep:
			return
		case <-t.C:
		}
		l.reapInactive()
		l.refused.flush()
		if l.reclaim != nil {
			l.reclaim.observe(l.cfg.Now(), l.Connections())
		}
		l.sweeps.Add(1)
	}
}

type reapVictim struct {
	c      *Conn
	reason string
}

func (l *Listener) reapInactive() {
	now := l.cfg.Now()
	var victims []reapVictim
	l.mu.Lock()
	for _, c := range l.conns {
		if c.active.Load() > 0 {
			continue
		}
		quiet := now.Sub(time.Unix(0, c.lastActive.Load()))
		switch {
		case !c.served.Load() && quiet >= l.cfg.FirstStreamTimeout:
			victims = append(victims, reapVictim{c, ReapSilent})
		case c.served.Load() && quiet >= l.cfg.IdleTimeout:
			victims = append(victims, reapVictim{c, ReapIdle})
		}
	}
	l.mu.Unlock()
	for _, v := range victims {
		if v.c.active.Load() > 0 { // a stream arrived meanwhile
			continue
		}
		l.event(l.cfg.Events.ConnReaped, v.reason)
		remote := v.c.Q.RemoteAddr().String()
		if v.reason == ReapSilent {
			l.refused.note(ReapSilent, "connection closed: no request after the handshake",
				"remote", remote, "within", l.cfg.FirstStreamTimeout.String())
			_ = v.c.Q.CloseWithError(CodeIdle, fmt.Sprintf("no request within %s of the handshake", l.cfg.FirstStreamTimeout))
		} else {
			l.log.Debug("connection closed: idle", "remote", remote, "idle_timeout", l.cfg.IdleTimeout.String())
			_ = v.c.Q.CloseWithError(CodeIdle, fmt.Sprintf("no request for %s", l.cfg.IdleTimeout))
		}
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
	wasDraining := l.draining
	l.draining = true
	l.mu.Unlock()
	if !wasDraining {
		close(l.stopSweep)
	}
	<-l.sweepDone
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

func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
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

// refusalLog keeps refusals from writing one WARN line each: the first
// refusal of a reason is logged at once, later ones at most once per
// interval with the count held back meanwhile. The metrics count every
// refusal; the log only has to say that it is happening.
type refusalLog struct {
	every time.Duration
	now   func() time.Time
	log   *slog.Logger

	mu      sync.Mutex
	reasons map[string]*refusalState
}

type refusalState struct {
	last       time.Time // when the last line for this reason was written
	suppressed int       // refusals since then, not logged
	msg        string
}

func (r *refusalLog) note(reason, msg string, attrs ...any) {
	now := r.now()
	r.mu.Lock()
	st := r.reasons[reason]
	if st == nil {
		st = &refusalState{}
		r.reasons[reason] = st
	}
	st.msg = msg
	if !st.last.IsZero() && now.Sub(st.last) < r.every {
		st.suppressed++
		r.mu.Unlock()
		return
	}
	held := st.suppressed
	st.last, st.suppressed = now, 0
	r.mu.Unlock()
	attrs = append(attrs, "reason", reason, "suppressed", held,
		"note", "further lines for this reason at most every "+r.every.String()+"; qpcd_connections_refused_total and qpcd_connections_reaped_total count all")
	r.log.Warn(msg, attrs...)
}

// flush writes the count of refusals held back for a full interval.
func (r *refusalLog) flush() {
	now := r.now()
	type line struct {
		reason, msg string
		n           int
	}
	var lines []line
	r.mu.Lock()
	for reason, st := range r.reasons {
		if st.suppressed > 0 && now.Sub(st.last) >= r.every {
			lines = append(lines, line{reason, st.msg, st.suppressed})
			st.last, st.suppressed = now, 0
		}
	}
	r.mu.Unlock()
	for _, ln := range lines {
		r.log.Warn(ln.msg+" (summary)", "reason", ln.reason, "count", ln.n, "over", r.every.String())
	}
}
