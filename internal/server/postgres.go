package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/store"
)

// openPostgres opens the PostgreSQL backend from the validated config.
func openPostgres(ctx context.Context, cfg config.Config, log *slog.Logger, nodeID string) (*store.DB, error) {
	pc, err := cfg.PostgresConn()
	if err != nil {
		return nil, err
	}
	defer pc.DSN.Wipe()
	db, err := store.OpenPostgres(ctx, store.PostgresOptions{
		DSN:              pc.DSN,
		MaxConns:         pc.MaxConns,
		MinConns:         pc.MinConns,
		StatementTimeout: pc.StatementTimeout,
		ConnectTimeout:   pc.ConnectTimeout,
		Logger:           log,
		NodeID:           nodeID,
	})
	if err != nil {
		return nil, fmt.Errorf("%w (target %s, sslmode %s)", err, config.RedactDSN(string(pc.DSN.Reveal())), pc.SSLMode)
	}
	return db, nil
}

// dbCheckEvery is how often a node checks that PostgreSQL answers; /readyz
// reports the last result, so a lost database turns the node unready
// within this period and ready again by itself once it answers.
const dbCheckEvery = time.Second

// watchDatabase pings the database every dbCheckEvery until stopped.
func (s *Server) watchDatabase() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	check := func() {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.db.Ping(cctx)
		ccancel()
		if ctx.Err() != nil {
			return
		}
		prev := s.dbHealth.Load()
		wasDown := prev != nil && *prev != nil
		s.dbHealth.Store(&err)
		switch {
		case err != nil && !wasDown:
			s.log.Error("database unreachable; /readyz reports not ready until it answers", "err", err)
		case err == nil && wasDown:
			s.log.Info("database reachable again; ready")
		}
		// qpcd_ready follows /readyz.
		s.refreshReady()
	}
	check()
	go func() {
		defer close(done)
		t := time.NewTicker(dbCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				check()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// registerPostgresMetrics adds the PostgreSQL backend's pool, retry and
// LISTEN metrics, read at scrape time.
func registerPostgresMetrics(reg *prometheus.Registry, db *store.DB, health *atomic.Pointer[error]) error {
	stat := func(f func(store.PostgresStats) float64) func() float64 {
		return func() float64 {
			st, _ := db.PostgresStats()
			return f(st)
		}
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "qpcd_db_up", Help: "1 when the last database check (every second) succeeded."},
			func() float64 {
				e := health.Load()
				return b2f(e == nil || *e == nil)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "qpcd_db_pool_connections", Help: "PostgreSQL pool connections open on this node.", ConstLabels: prometheus.Labels{"state": "open"}},
			stat(func(st store.PostgresStats) float64 { return float64(st.Pool.OpenConnections) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "qpcd_db_pool_in_use", Help: "PostgreSQL pool connections in use."},
			stat(func(st store.PostgresStats) float64 { return float64(st.Pool.InUse) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "qpcd_db_pool_max", Help: "PostgreSQL pool size (postgres.max_conns)."},
			stat(func(st store.PostgresStats) float64 { return float64(st.Pool.MaxOpenConnections) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "qpcd_db_pool_waits_total", Help: "Transactions that had to wait for a free pool connection."},
			stat(func(st store.PostgresStats) float64 { return float64(st.Pool.WaitCount) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "qpcd_db_pool_wait_seconds_total", Help: "Time spent waiting for a free pool connection."},
			stat(func(st store.PostgresStats) float64 { return st.Pool.WaitDuration.Seconds() })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "qpcd_db_tx_retries_total", Help: "Write transactions re-run after a serialization failure or deadlock."},
			stat(func(st store.PostgresStats) float64 { return float64(st.TxRetries) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "qpcd_db_listen_reconnects_total", Help: "Times the LISTEN connection (cross-node wake-ups) was re-established."},
			stat(func(st store.PostgresStats) float64 { return float64(st.ListenReconnects) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "qpcd_db_listen_up", Help: "1 while the LISTEN connection is established."},
			stat(func(st store.PostgresStats) float64 { return b2f(st.ListenUp) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "qpcd_db_notifications_total", Help: "Notifications received from the database (other nodes' wake-ups)."},
			stat(func(st store.PostgresStats) float64 { return float64(st.Notifications) })),
	}
	txDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "qpcd_db_transaction_duration_seconds",
		Help:    "PostgreSQL transactions by kind (read, write): from asking for a pooled connection to commit or rollback, retries included.",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}, []string{"kind"})
	cs = append(cs, txDur)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	db.SetTxObserver(func(kind string, took time.Duration) { txDur.WithLabelValues(kind).Observe(took.Seconds()) })
	return nil
}

// ReloadDatabaseCredentials re-reads postgres.dsn_file and, if the
// connection string in it logs in, makes every new database connection use
// it (store.DB.SetPostgresDSN): the way to rotate the database password
// without a restart (ALTER ROLE ... PASSWORD, rewrite the file, SIGHUP).
// A file that is unreadable, open to others, unparseable, names another
// database or does not log in is refused with one log line naming the file,
// and the credentials in use stay. It does nothing (nil) unless the
// backend is PostgreSQL with the DSN in postgres.dsn_file: a DSN given
// inline or in the environment cannot change without a restart.
func (s *Server) ReloadDatabaseCredentials(ctx context.Context) error {
	if s.db.Backend() != store.BackendPostgres || s.cfg.Postgres.DSNFile == "" || !s.cfg.Postgres.DSN.IsZero() {
		return nil
	}
	file := s.cfg.Postgres.DSNFile
	pc, err := s.cfg.PostgresConn()
	if err == nil {
		defer pc.DSN.Wipe()
		ctx, cancel := context.WithTimeout(ctx, pc.ConnectTimeout+2*time.Second)
		err = s.db.SetPostgresDSN(ctx, pc.DSN)
		cancel()
	}
	if err != nil {
		s.log.Error("database credentials not reloaded; the ones in use stay", "file", file, "err", err)
		return err
	}
	s.log.Info("database credentials reloaded; new connections use them", "file", file)
	s.audit.Event(ctx, "db.credentials_reload", slog.String("file", file))
	return nil
}
