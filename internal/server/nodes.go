package server

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/version"
)

// The node registry (table nodes, migration 0007): every node records
// itself when it starts serving and on each heartbeat (cluster.heartbeat),
// and marks its row stopped on a clean shutdown, so `qpcctl status` on any
// node lists the deployment's nodes and shows the ones that stopped
// answering (three heartbeats late: killed, hung, or cut off from the
// database). On SQLCipher the list has the one node.

// Registry rows are pruned: stopped nodes after a day, nodes that vanished
// without stopping after a week.
const (
	staleHeartbeats  = 3
	forgetStopped    = 24 * time.Hour
	forgetVanished   = 7 * 24 * time.Hour
	heartbeatTimeout = 5 * time.Second
)

// newNodeID names this run of this node: hostname, pid and random bits, so
// that a restart is a new row and two nodes never share one.
func newNodeID() (id, hostname string) {
	hostname, _ = os.Hostname()
	if hostname == "" {
		hostname = "unknown"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hostname + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:]), hostname
}

// heartbeat writes this node's row (last_seen_at now, not stopped) and
// prunes rows of long-gone nodes.
func (s *Server) heartbeat(ctx context.Context) error {
	now := s.now()
	ms := now.UnixMilli()
	return s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO nodes (id, hostname, address, ops_address, version, started_at, last_seen_at, heartbeat_ms, stopped_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)
			ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, address = excluded.address,
				ops_address = excluded.ops_address, heartbeat_ms = excluded.heartbeat_ms, stopped_at = 0`,
			s.nodeID, s.hostname, s.QUICAddr(), s.OpsAddr(), version.Version, s.started.UnixMilli(), ms, s.cfg.Cluster.Heartbeat.Milliseconds())
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "DELETE FROM nodes WHERE (stopped_at > 0 AND stopped_at < ?) OR last_seen_at < ?",
			now.Add(-forgetStopped).UnixMilli(), now.Add(-forgetVanished).UnixMilli())
		return err
	})
}

// startHeartbeat records the node now and then every cluster.heartbeat
// until stop is called; stop marks the row stopped (a clean shutdown).
func (s *Server) startHeartbeat() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	beat := func() {
		hctx, hcancel := context.WithTimeout(ctx, heartbeatTimeout)
		err := s.heartbeat(hctx)
		hcancel()
		if err != nil && ctx.Err() == nil {
			// A database outage is reported by its own check; this is the
			// registry's consequence of it.
			s.log.Debug("node registry heartbeat failed", "node", s.nodeID, "err", err)
		}
		if err == nil && s.db.Backend() == store.BackendPostgres && s.backupLast != nil {
			// On PostgreSQL qpcctl records backups in the database itself
			// (no node is involved): every node picks the record up here.
			rctx, rcancel := context.WithTimeout(ctx, heartbeatTimeout)
			if rec, err := s.lastBackup(rctx); err == nil && rec != nil {
				s.backupLast.Set(float64(rec.At.UnixNano()) / 1e9)
			}
			rcancel()
		}
	}
	beat()
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.Cluster.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				beat()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
			sctx, scancel := context.WithTimeout(context.Background(), heartbeatTimeout)
			defer scancel()
			err := s.db.WriteTx(sctx, func(tx *sql.Tx) error {
				_, err := tx.ExecContext(sctx, "UPDATE nodes SET stopped_at = ?, last_seen_at = ? WHERE id = ?",
					s.now().UnixMilli(), s.now().UnixMilli(), s.nodeID)
				return err
			})
			if err != nil {
				s.log.Warn("node registry: could not mark this node stopped; it will show as stale", "node", s.nodeID, "err", err)
			}
		})
	}
}

// Node states in admin.Node.State.
const (
	nodeRunning = "running"
	nodeStale   = "stale"
	nodeStopped = "stopped"
)

// nodes lists the registry: running and stale nodes, and nodes stopped
// within the last day, by start time.
func (s *Server) nodes(ctx context.Context) ([]admin.Node, error) {
	now := s.now()
	var out []admin.Node
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT id, hostname, address, ops_address, version, started_at, last_seen_at, heartbeat_ms, stopped_at
			FROM nodes ORDER BY started_at, id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n admin.Node
			var started, seen, hb, stopped int64
			if err := rows.Scan(&n.ID, &n.Hostname, &n.Address, &n.OpsAddress, &n.Version, &started, &seen, &hb, &stopped); err != nil {
				return err
			}
			n.StartedAt, n.LastSeen = time.UnixMilli(started).UTC(), time.UnixMilli(seen).UTC()
			n.HeartbeatSeconds = float64(hb) / 1000
			n.Self = n.ID == s.nodeID
			switch {
			case stopped > 0:
				n.State, n.StoppedAt = nodeStopped, time.UnixMilli(stopped).UTC()
			case now.Sub(n.LastSeen) > staleHeartbeats*time.Duration(hb)*time.Millisecond:
				n.State = nodeStale
			default:
				n.State = nodeRunning
			}
			out = append(out, n)
		}
		return rows.Err()
	})
	return out, err
}
