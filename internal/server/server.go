package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/diskwatch"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/version"
)

// Options configures New.
type Options struct {
	Config config.Config // validated; New resolves the data-dir defaults
	Logger *slog.Logger  // nil: discard
	Now    func() time.Time
	// LieInResponse, when set, is given every successful response before
	// it is sent and may change it. It exists only so tests can play a
	// malicious server (issue 19: a directory that serves forged
	// KeyPackages) with the real server code around it; qpcd never sets
	// it and no configuration option or flag reaches it.
	LieInResponse func(ctx context.Context, call *Call, method string, resp proto.Message)
	// Tracing, when set, is used instead of the provider tracing.* would
	// build (tests: an in-memory span recorder). The server shuts it down
	// (flushing its spans) after draining either way.
	Tracing *tracing.Provider
}

// Server is a running qpcd.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	audit   *obs.Audit
	metrics *obs.Metrics
	now     func() time.Time
	started time.Time

	// inviteUnusedLogged: the warning about invite codes an open
	// registration policy ignores was logged (once per process).
	inviteUnusedLogged atomic.Bool

	db    *store.DB
	certs *transport.CertStore
	ln    *transport.Listener
	ops   *http.Server
	opsLn net.Listener

	rpc *rpcServer
	// tracing exports spans (a no-op provider when tracing is off); it is
	// flushed and shut down last, after draining.
	tracing *tracing.Provider

	// Each service area keeps its state in its own part (services.go).
	authPart
	directoryPart
	keyLogPart
	deliveryPart
	adminPart

	// dbHealth is the last database check's error (PostgreSQL only; nil
	// pointer or nil error: reachable). watchDatabase keeps it current.
	dbHealth    atomic.Pointer[error]
	dbWatchStop func()

	// disk follows whether writes are refused for lack of space
	// (diskfull.go); diskStop ends its checks.
	disk     *diskwatch.Watch
	diskStop func()
	// nodeID and hostname name this run in the node registry (nodes.go)
	// and in cross-node broadcasts; stopHeartbeat ends its heartbeat.
	nodeID, hostname string
	stopHeartbeat    func()

	ready    atomic.Bool
	draining atomic.Bool
	drainCh  chan struct{} // closed when draining starts: wakes long-polls
}

// New prepares everything qpcd needs and binds its sockets, but serves
// nothing until Run. On error nothing is left open.
func New(ctx context.Context, opts Options) (_ *Server, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	dataDir := opts.Config.DataDir
	defKey, defCert, defTLSKey := defaultPaths(dataDir)
	cfg := opts.Config.Resolved()

	s := &Server{cfg: cfg, log: log, audit: obs.NewAudit(log), now: now, drainCh: make(chan struct{})}
	s.nodeID, s.hostname = newNodeID()
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()

	if err := prepareDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if err := s.lockDataDir(); err != nil {
		return nil, err
	}
	pg := cfg.Store.Backend == config.BackendPostgres
	var key secret.Bytes
	var genKey bool
	if !pg {
		if err := s.finishKeyRotation(ctx, cfg); err != nil {
			return nil, err
		}
		key, genKey, err = loadOrCreateDBKey(cfg, defKey)
		if err != nil {
			return nil, err
		}
		defer key.Wipe()
	}
	genCert, err := ensureCertificate(cfg, defCert, defTLSKey, now())
	if err != nil {
		return nil, err
	}
	s.certs, err = transport.NewCertStore(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	if err != nil {
		return nil, err
	}
	dbPath := filepath.Join(cfg.DataDir, "qpcd.db")
	if pg {
		s.db, err = openPostgres(ctx, cfg, log, s.nodeID)
	} else {
		store.SetMemorySecurity(cfg.DB.MemorySecurity == "on")
		s.db, err = store.Open(ctx, store.Options{Path: dbPath, Key: key, Logger: log})
	}
	if store.IsDiskFull(err) && !pg {
		return nil, fmt.Errorf("%w; qpcd cannot open its database on a full disk: free space in %s (never delete qpcd.db-wal: it holds committed messages), see docs/runbooks/disk-full.md", err, cfg.DataDir)
	}
	if err != nil {
		return nil, err
	}
	dbPath = s.db.Path()
	s.metrics = obs.NewMetrics(&obs.StoreGauges{
		Size: func() float64 {
			n, _ := s.db.Size()
			return float64(n)
		},
		WriteQueue: func() float64 { return float64(s.db.QueueLen()) },
	})
	if s.diskStop, err = s.watchDisk(pg); err != nil {
		return nil, err
	}
	s.db.SetCommitObserver(func(writes int, took time.Duration) {
		s.metrics.DBCommitDuration.Observe(took.Seconds())
		s.metrics.DBCommitWrites.Observe(float64(writes))
		s.disk.Succeeded()
	})
	s.db.SetWaitObserver(func(waited time.Duration) { s.metrics.DBWriteWait.Observe(waited.Seconds()) })
	if pg {
		if err := registerPostgresMetrics(s.metrics.Registry, s.db, &s.dbHealth); err != nil {
			return nil, err
		}
		s.dbWatchStop = s.watchDatabase()
	}

	s.tracing = opts.Tracing
	if s.tracing == nil {
		tc := cfg.TracingConfig(s.nodeID, version.String())
		tc.Log = log
		s.tracing, err = tracing.Setup(ctx, tc)
		if err != nil {
			return nil, err
		}
	}
	s.rpc = &rpcServer{
		tracing:    s.tracing.Enabled(),
		tracer:     s.tracing.Tracer(),
		log:        log,
		metrics:    s.metrics,
		methods:    map[string]*method{},
		maxPayload: cfg.Limits.MaxPayloadBytes,
		draining:   s.draining.Load,
		lie:        opts.LieInResponse,
		diskFull:   diskFullMessage(pg),
	}
	if err := s.initServices(ctx); err != nil {
		return nil, err
	}
	s.registerMethods(s.rpc.methods)

	resetKey, err := transport.LoadStatelessResetKey(filepath.Join(cfg.DataDir, transport.ResetSecretFile))
	if err != nil {
		return nil, err
	}
	connMetrics, err := obs.NewConnectionMetrics(s.metrics)
	if err != nil {
		return nil, err
	}
	s.ln, err = transport.Listen(transport.ListenerConfig{
		Addr:                  cfg.Listen,
		TLS:                   s.certs.ServerTLSConfig(),
		MaxConnections:        cfg.Limits.MaxConnections,
		MaxConnectionsPerAddr: cfg.Limits.MaxConnectionsPerAddress,
		MaxStreamsPerConn:     int64(cfg.Limits.MaxStreamsPerConn),
		IdleTimeout:           cfg.Limits.IdleTimeout,
		FirstStreamTimeout:    cfg.Limits.FirstRequestTimeout,
		KeepAlive:             cfg.Limits.KeepAlive,
		StatelessResetKey:     resetKey,
		// The listener keeps real time: the server's clock may be a test's
		// fake that jumps hours ahead, which must not reap every connection.
		Logger: log,
		Events: connEvents(s.metrics, connMetrics),
	}, s.rpc)
	if err != nil {
		return nil, fmt.Errorf("%w (set listen / QPC_LISTEN / --listen to a free address)", err)
	}
	if cfg.OpsListen != "" {
		s.opsLn, err = net.Listen("tcp", cfg.OpsListen)
		if err != nil {
			return nil, fmt.Errorf("server: ops listener on %s/tcp: %w (set ops_listen / QPC_OPS_LISTEN)", cfg.OpsListen, err)
		}
		var h http.Handler = obs.NewOpsHandler(s.metrics, s.readiness)
		if cfg.OpsPprof == "on" {
			h = obs.WithPprof(h)
			log.Warn("pprof profiles served on the ops listener: keep it private (ops_pprof=on)", "ops", s.opsLn.Addr().String())
		}
		s.ops = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
		}
	}

	attrs := []any{
		"version", version.Version,
		"quic", s.ln.Addr().String() + "/udp",
		"ops", s.OpsAddr(),
		"data_dir", cfg.DataDir,
		"backend", s.db.Backend(),
		"node", s.nodeID,
		"db", dbPath,
		"db_key_file", keySource(cfg),
		"tls_cert", cfg.TLS.CertFile,
		"cert_sha256", s.certs.Fingerprint(),
		"registration", cfg.Auth.Registration,
	}
	if genKey || genCert {
		// First start without operator-supplied files: a supported way to
		// begin (packages do it), with two duties the operator must know.
		attrs = append(attrs, "generated", devNote(genKey, genCert))
		log.Warn("qpcd ready; generated on first start: "+firstStartDuties(genKey, genCert), attrs...)
	} else {
		log.Info("qpcd ready", attrs...)
	}
	if cfg.Auth.Registration == config.RegistrationOpen && !loopbackOnly(s.ln.Addr()) {
		log.Warn("registration is open: anyone who can reach "+s.ln.Addr().String()+"/udp can create an account; "+
			"set auth.registration (QPC_AUTH_REGISTRATION) to invite and create invites with qpcctl invites create",
			"registration", cfg.Auth.Registration)
	}
	return s, nil
}

// firstStartDuties says what the operator must do about generated files.
func firstStartDuties(key, cert bool) string {
	var d []string
	if key {
		d = append(d, "a database key in the data directory (back it up apart from the database, or set db.key_file)")
	}
	if cert {
		d = append(d, "a self-signed certificate (clients pin cert_sha256 with qpc init --pin, or set tls.cert_file and tls.key_file)")
	}
	return strings.Join(d, "; ") + "; see docs/operations.md"
}

// loopbackOnly reports whether addr accepts only loopback clients.
func loopbackOnly(addr net.Addr) bool {
	ua, ok := addr.(*net.UDPAddr)
	return ok && ua.IP.IsLoopback()
}

// connEvents counts the listener's admissions, refusals and reapings.
func connEvents(m *obs.Metrics, cm *obs.ConnectionMetrics) transport.Events {
	refused := map[string]string{
		transport.RejectLimit:      obs.RefusedGlobalCap,
		transport.RejectPerAddress: obs.RefusedPerAddress,
		transport.RejectDraining:   obs.RefusedDraining,
	}
	return transport.Events{
		ConnAccepted: func() {
			m.Connections.Inc()
			m.ConnectionsTotal.WithLabelValues(obs.ConnAccepted).Inc()
		},
		ConnClosed: func() { m.Connections.Dec() },
		ConnRejected: func(reason string) {
			m.ConnectionsTotal.WithLabelValues("rejected_" + reason).Inc()
			if r, ok := refused[reason]; ok {
				cm.Refused.WithLabelValues(r).Inc()
			}
		},
		ConnReaped: func(reason string) { cm.Reaped.WithLabelValues(reason).Inc() },
	}
}

func keySource(cfg config.Config) string {
	if cfg.Store.Backend == config.BackendPostgres {
		return "none (postgres backend)"
	}
	if !cfg.DB.Key.IsZero() {
		return "inline (db.key)"
	}
	return cfg.DB.KeyFile
}

func devNote(key, cert bool) string {
	switch {
	case key && cert:
		return "database key and self-signed certificate"
	case key:
		return "database key"
	default:
		return "self-signed certificate"
	}
}

// QUICAddr is the bound QUIC address.
func (s *Server) QUICAddr() string { return s.ln.Addr().String() }

// OpsAddr is the bound ops HTTP address, or "" when disabled.
func (s *Server) OpsAddr() string {
	if s.opsLn == nil {
		return ""
	}
	return s.opsLn.Addr().String()
}

// CertFingerprint is the SHA-256 pin of the serving certificate.
func (s *Server) CertFingerprint() string { return s.certs.Fingerprint() }

// ReloadTLS re-reads the certificate and key; existing connections keep theirs.
func (s *Server) ReloadTLS() error {
	if err := s.certs.Reload(); err != nil {
		s.log.Error("tls reload failed; keeping the current certificate", "err", err)
		return err
	}
	s.log.Info("tls certificate reloaded", "cert_sha256", s.certs.Fingerprint(), "not_after", s.certs.NotAfter())
	s.audit.Event(context.Background(), "tls.reload", slog.String("cert_sha256", s.certs.Fingerprint()))
	return nil
}

func (s *Server) readiness() error {
	switch {
	case s.draining.Load():
		return errors.New("draining")
	case !s.ready.Load():
		return errors.New("starting")
	case version.FaultReadyz != "":
		return errors.New("release drill build: internal/version.FaultReadyz is set")
	}
	if err := s.dbHealth.Load(); err != nil && *err != nil {
		return fmt.Errorf("database unreachable: %w", *err)
	}
	return s.diskReadiness()
}

// Run serves until ctx is cancelled, then drains: /readyz turns unready,
// new RPCs get DRAINING, in-flight RPCs get up to the drain timeout, every
// connection is closed with the draining code, and storage is closed last.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- s.ln.Serve() }()
	if s.ops != nil {
		go func() {
			if err := s.ops.Serve(s.opsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("server: ops http: %w", err)
			}
		}()
	}
	s.started = s.now()
	s.stopHeartbeat = s.startHeartbeat()
	s.ready.Store(true)
	s.metrics.Ready.Set(1)
	s.refreshReady()
	s.serveAdmin()

	var runErr error
	select {
	case <-ctx.Done():
	case <-s.drainReq: // qpcctl drain
	case runErr = <-errc:
		s.log.Error("listener failed; shutting down", "err", runErr)
	}
	return errors.Join(runErr, s.drain())
}

func (s *Server) drain() error {
	start := s.now()
	s.draining.Store(true)
	s.metrics.Ready.Set(0)
	close(s.drainCh)
	timeout := s.cfg.Limits.DrainTimeout
	s.log.Info("draining", "timeout", timeout.String(), "connections", s.ln.Connections())
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	if err := s.ln.Shutdown(dctx); err != nil {
		s.log.Warn("drain timeout reached; in-flight RPCs were cut off", "timeout", timeout.String())
	}
	if s.ops != nil {
		octx, ocancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, ignoreClosed(s.ops.Shutdown(octx)))
		ocancel()
	}
	if s.stopHeartbeat != nil {
		s.stopHeartbeat()
	}
	errs = append(errs, s.closeServices())
	if s.dbWatchStop != nil {
		s.dbWatchStop()
	}
	if s.diskStop != nil {
		s.diskStop()
	}
	errs = append(errs, s.db.Close(), s.unlockDataDir())
	errs = append(errs, s.flushTraces())
	s.log.Info("stopped", "drain_took", s.now().Sub(start).Round(time.Millisecond).String())
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// closeAll releases whatever New opened before it failed.
// traceFlushTimeout bounds how long shutdown waits for the collector.
const traceFlushTimeout = 5 * time.Second

// flushTraces exports the spans still queued (those of the drained RPCs
// included) and stops the exporter. An unreachable collector costs at most
// traceFlushTimeout and is logged, not returned: traces are not worth a
// failed shutdown.
func (s *Server) flushTraces() error {
	if !s.tracing.Enabled() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
	defer cancel()
	if err := s.tracing.Shutdown(ctx); err != nil {
		s.log.Warn("tracing: spans not flushed at shutdown", "err", err)
	}
	return nil
}

func (s *Server) closeAll() {
	if s.tracing != nil {
		_ = s.flushTraces()
	}
	if s.ln != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = s.ln.Shutdown(ctx)
	}
	if s.opsLn != nil {
		_ = s.opsLn.Close()
	}
	_ = s.closeServices()
	if s.dbWatchStop != nil {
		s.dbWatchStop()
	}
	if s.diskStop != nil {
		s.diskStop()
	}
	if s.db != nil {
		_ = s.db.Close()
	}
	_ = s.unlockDataDir()
}
