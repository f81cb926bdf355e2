package server

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/diskwatch"
)

// diskFullRetryAfter is the retry-after sent with a write refused by a full
// disk: space comes back when an operator acts, so retrying sooner only
// adds load; the client's outbox keeps the message and tries again.
const diskFullRetryAfter = 5 * time.Second

// watchDisk follows the disk-full condition (internal/diskwatch): the store
// reports refused writes and commits; for SQLCipher the data directory is
// also probed every diskwatch.DefaultInterval while full. It registers
// qpcd_disk_full and starts the checks; the returned stop ends them.
func (s *Server) watchDisk(pg bool) (stop func(), err error) {
	o := diskwatch.Options{Dir: s.cfg.DataDir, Now: s.now, Logger: s.log, OnChange: func(diskwatch.Status) { s.refreshReady() }}
	if pg {
		// The database's space is the PostgreSQL server's: no probe here.
		o.Dir, o.Where = "", "PostgreSQL server "+s.db.Path()
	}
	s.disk = diskwatch.New(o)
	s.db.SetDiskFullObserver(s.disk.Failed)
	full := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qpcd_disk_full",
		Help: "1 while writes are refused because the disk holding the database is full (SQLCipher: the data directory's filesystem, probed until a write fits again; PostgreSQL: the database server's, as the last write found it).",
	}, func() float64 {
		if s.disk.Status().Full {
			return 1
		}
		return 0
	})
	if err := s.metrics.Registry.Register(full); err != nil {
		return nil, fmt.Errorf("server: registering qpcd_disk_full: %w", err)
	}
	return s.disk.Start(), nil
}

// diskReadiness is /readyz's verdict on the disk: with SQLCipher a full data
// directory makes the node not ready (nearly every RPC of a messenger
// writes, so a balancer should send new sessions elsewhere), while reads on
// connections already open keep working. With PostgreSQL every node shares
// the database's disk, so taking nodes out would not help: the node stays
// ready and refuses writes with RESOURCE_EXHAUSTED.
func (s *Server) diskReadiness() error {
	if s.disk == nil || s.cfg.Store.Backend == config.BackendPostgres {
		return nil
	}
	st := s.disk.Status()
	if !st.Full {
		return nil
	}
	return fmt.Errorf("disk full: no space left in %s (since %s, %d bytes available); writes are refused until space is freed there, reads go on; see docs/runbooks/disk-full.md",
		st.Where, st.Since.UTC().Format(time.RFC3339), st.Avail)
}

// diskFullMessage is the message a client gets for a write refused by a
// full disk. It names the disk without the server's paths (the operator's
// log and /readyz have those).
func diskFullMessage(pg bool) string {
	if pg {
		return "server storage full: the database server's disk has no space left, so writes are refused until the operator frees space; nothing was stored, retry later"
	}
	return "server storage full: the disk holding qpcd's data directory has no space left, so writes are refused until the operator frees space; nothing was stored, retry later"
}

// refreshReady makes qpcd_ready follow /readyz after a health check changed
// its verdict (database reachability, disk space).
func (s *Server) refreshReady() {
	if s.metrics == nil || !s.ready.Load() || s.draining.Load() {
		return
	}
	if s.readiness() != nil {
		s.metrics.Ready.Set(0)
	} else {
		s.metrics.Ready.Set(1)
	}
}
