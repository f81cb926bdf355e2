package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/store"
)

func (s *Service) sweeper(interval time.Duration) {
	defer close(s.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s.runSweep(ctx)
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *Service) runSweep(ctx context.Context) {
	quiet := func(err error) bool { return ctx.Err() != nil || errors.Is(err, store.ErrClosed) }
	if _, err := s.Sweep(ctx); err != nil && !quiet(err) {
		s.log.Warn("delivery: retention sweep failed", "err", err)
	}
	if err := s.RefreshStats(ctx); err != nil && !quiet(err) {
		s.log.Warn("delivery: queue gauges not refreshed", "err", err)
	}
}

// sweepBatch bounds one delete so the writer is never held long.
const sweepBatch = 500

// Sweep deletes messages and inbox items whose expiry (retention, or a DM's
// shorter TTL) has passed by the injected clock, and returns how many.
// Reads never return expired rows even before the sweep ran.
//
// There is no expiry index on messages (it would cost every enqueue a
// third b-tree insert): within a channel expires_at grows with seq, so the
// sweep deletes each channel's expired prefix, reading only the rows it
// deletes plus one.
func (s *Service) Sweep(ctx context.Context) (int64, error) {
	var ids [][]byte
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		ids = nil
		rows, err := tx.QueryContext(ctx, `SELECT id FROM channels`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id []byte
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("delivery: sweep: %w", err)
	}
	var total int64
	for _, id := range ids {
		for {
			n, err := s.sweepChannel(ctx, id)
			if err != nil {
				return total, err
			}
			total += n
			s.metrics.expired.WithLabelValues("message").Add(float64(n))
			if n < sweepBatch {
				break
			}
		}
	}
	for {
		now := s.now().UnixMilli()
		var n int64
		// READ COMMITTED with the rows locked: an Ack deleting the same
		// items waits (or was first, and its rows are skipped), so each
		// deleted item leaves its sender's usage exactly once.
		err := s.db.WriteTxLocked(ctx, func(tx *sql.Tx) error {
			n = 0
			// Several nodes on one PostgreSQL database: one sweeps at a time
			// (the deletes are idempotent; the lock only saves repeated work).
			if ok, err := s.db.TryJobLock(ctx, tx, "delivery.sweep"); err != nil || !ok {
				return err
			}
			rows, err := tx.QueryContext(ctx, `SELECT id, sender_account, LENGTH(body), `+chargedInbox+` FROM inbox WHERE expires_at <= ? ORDER BY id LIMIT ?`+s.db.ForUpdate(), now, sweepBatch)
			if err != nil {
				return err
			}
			var ids []any
			freed := map[string]Usage{}
			for rows.Next() {
				var id, size int64
				var sender string
				var charged bool
				if err := rows.Scan(&id, &sender, &size, &charged); err != nil {
					rows.Close()
					return err
				}
				ids = append(ids, id)
				if !charged {
					continue // a server notice: charged to nobody
				}
				f := freed[sender]
				f.InboxBytes, f.InboxItems = f.InboxBytes+size, f.InboxItems+1
				freed[sender] = f
			}
			rows.Close()
			if err := rows.Err(); err != nil || len(ids) == 0 {
				return err
			}
			r, err := tx.ExecContext(ctx, `DELETE FROM inbox WHERE id IN (?`+strings.Repeat(", ?", len(ids)-1)+`)`, ids...)
			if err != nil {
				return err
			}
			if n, err = r.RowsAffected(); err != nil {
				return err
			}
			return s.release(ctx, tx, freed)
		})
		if err != nil {
			return total, fmt.Errorf("delivery: sweep inbox: %w", err)
		}
		total += n
		s.metrics.expired.WithLabelValues("inbox").Add(float64(n))
		if n < sweepBatch {
			// Expired invitations too (counted in their own metric).
			_, err := s.sweepInvitations(ctx)
			return total, err
		}
	}
}

// sweepChannel deletes up to sweepBatch expired messages at the start of
// one channel's log.
func (s *Service) sweepChannel(ctx context.Context, id []byte) (int64, error) {
	now := s.now().UnixMilli()
	var n int64
	// READ COMMITTED: nothing but the sweep (one at a time, under the job
	// lock) deletes messages, and the usage rows are updated relative to
	// their latest version, so no serializable retries against enqueues.
	err := s.db.WriteTxLocked(ctx, func(tx *sql.Tx) error {
		n = 0
		if ok, err := s.db.TryJobLock(ctx, tx, "delivery.sweep"); err != nil || !ok {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT seq, expires_at FROM messages WHERE channel_id = ? ORDER BY seq LIMIT ?`, id, sweepBatch)
		if err != nil {
			return err
		}
		var upto int64 = -1
		for rows.Next() {
			var seq, exp int64
			if err := rows.Scan(&seq, &exp); err != nil {
				rows.Close()
				return err
			}
			if exp > now {
				break
			}
			upto = seq
		}
		rows.Close()
		if err := rows.Err(); err != nil || upto < 0 {
			return err
		}
		// Server events (membership changes) have no sending account and
		// are charged to nobody.
		freed, err := senderUsage(ctx, tx, `SELECT sender_account, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM messages
			WHERE channel_id = ? AND seq <= ? AND sender_account <> '' GROUP BY sender_account`, id, upto)
		if err != nil {
			return err
		}
		for a, f := range freed {
			freed[a] = Usage{MessageBytes: f.InboxBytes, Messages: f.InboxItems}
		}
		r, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE channel_id = ? AND seq <= ?`, id, upto)
		if err != nil {
			return err
		}
		if n, err = r.RowsAffected(); err != nil {
			return err
		}
		return s.release(ctx, tx, freed)
	})
	if err != nil {
		return 0, fmt.Errorf("delivery: sweep messages: %w", err)
	}
	return n, nil
}

// RefreshStats recomputes the queue gauges: per channel type, the stored,
// unexpired messages that some device with a cursor in the channel has not
// acknowledged yet, and the age of the oldest of them; for inboxes, the
// unacknowledged items. Devices that never fetched have no cursor and do
// not count.
func (s *Service) RefreshStats(ctx context.Context) error {
	now := s.now().UnixMilli()
	type agg struct {
		n      int64
		oldest sql.NullInt64
	}
	stats := map[string]*agg{"group": {}, "dm": {}, "inbox": {}}
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT c.kind, COUNT(*), MIN(m.created_at)
			FROM channels c JOIN messages m ON m.channel_id = c.id
			WHERE m.expires_at > ? AND m.seq > COALESCE((SELECT MIN(acked_seq) FROM cursors cu WHERE cu.channel_id = c.id), c.head_seq)
			GROUP BY c.kind`, now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var kind int
			var a agg
			if err := rows.Scan(&kind, &a.n, &a.oldest); err != nil {
				return err
			}
			stats[kindLabel(kind)] = &a
		}
		if err := rows.Err(); err != nil {
			return err
		}
		a := stats["inbox"]
		return tx.QueryRowContext(ctx, `SELECT COUNT(*), MIN(created_at) FROM inbox WHERE expires_at > ?`, now).Scan(&a.n, &a.oldest)
	})
	if err != nil {
		return fmt.Errorf("delivery: stats: %w", err)
	}
	for label, a := range stats {
		s.metrics.depth.WithLabelValues(label).Set(float64(a.n))
		age := 0.0
		if a.oldest.Valid {
			age = max(float64(now-a.oldest.Int64)/1000, 0)
		}
		s.metrics.oldest.WithLabelValues(label).Set(age)
	}
	return nil
}

// senderUsage runs query (sender account, count, bytes) and returns the
// counts per sender as inbox usage; callers relabel them for messages.
func senderUsage(ctx context.Context, tx *sql.Tx, query string, args ...any) (map[string]Usage, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Usage{}
	for rows.Next() {
		var a string
		var n, b int64
		if err := rows.Scan(&a, &n, &b); err != nil {
			return nil, err
		}
		out[a] = Usage{InboxBytes: b, InboxItems: n}
	}
	return out, rows.Err()
}
