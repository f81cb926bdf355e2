package pgtest_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// TestReplicatedFailover: a primary and its streaming standby, synchronous
// and asynchronous. The standby is a hot standby that refuses writes and
// has what the primary committed; the multi-host DSN (read-write) lands on
// the primary; after the primary stops (immediate) and the standby is
// promoted, the same DSN lands on the former standby, which holds every
// row and takes writes.
func TestReplicatedFailover(t *testing.T) {
	for _, sync := range []bool{true, false} {
		name := "async"
		if sync {
			name = "sync"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, err := pgtest.StartReplicated(ctx, pgtest.ReplicationOptions{Synchronous: sync})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := r.Stop(); err != nil {
					t.Error(err)
				}
			})
			if r.Primary.Port == r.Standby.Port || r.Primary.Dir == r.Standby.Dir {
				t.Fatalf("primary and standby share a port or dir: %d/%d %s/%s", r.Primary.Port, r.Standby.Port, r.Primary.Dir, r.Standby.Dir)
			}
			p := connect(t, r.Primary.DSN("postgres"))
			wantSync := map[bool]string{true: "*", false: ""}[sync]
			if got := queryString(t, p, "SHOW synchronous_standby_names"); got != wantSync {
				t.Fatalf("primary synchronous_standby_names = %q, want %q", got, wantSync)
			}
			if got := queryString(t, p, "SELECT sync_state FROM pg_stat_replication"); got != map[bool]string{true: "sync", false: "async"}[sync] {
				t.Fatalf("standby sync_state %q", got)
			}
			exec(t, p, "CREATE TABLE kv (k int PRIMARY KEY)")
			exec(t, p, "INSERT INTO kv SELECT generate_series(1, 100)")
			if sync {
				// No waiting: a synchronous commit is on the standby when it returns
				// (flushed there; replay follows at once on an idle standby).
				exec(t, p, "INSERT INTO kv VALUES (101)")
			}
			if err := r.WaitReplayed(ctx); err != nil {
				t.Fatal(err)
			}

			s := connect(t, r.Standby.DSN("postgres"))
			if in, err := r.Standby.InRecovery(ctx); err != nil || !in {
				t.Fatalf("standby in recovery: %v, %v", in, err)
			}
			var pgErr *pgconn.PgError
			if _, err := s.Exec(ctx, "INSERT INTO kv VALUES (1000)"); !errors.As(err, &pgErr) || pgErr.Code != "25006" {
				t.Fatalf("write on the standby: %v, want read_only_sql_transaction (25006)", err)
			}
			multi := connect(t, r.DSN("postgres"))
			if got := multi.PgConn().Conn().RemoteAddr().String(); got != r.Primary.Host+":"+strconv.Itoa(r.Primary.Port) {
				t.Fatalf("multi-host DSN connected to %s, want the primary", got)
			}

			if err := r.Primary.StopImmediate(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := pgx.Connect(ctx, r.DSN("postgres")); err == nil {
				t.Fatal("the read-write DSN connected while no server accepts writes")
			}
			if err := r.Standby.Promote(ctx); err != nil {
				t.Fatal(err)
			}
			after := connect(t, r.DSN("postgres"))
			if got := after.PgConn().Conn().RemoteAddr().String(); got != r.Standby.Host+":"+strconv.Itoa(r.Standby.Port) {
				t.Fatalf("after the promotion the DSN connected to %s, want the promoted standby", got)
			}
			want := map[bool]string{true: "101", false: "100"}[sync]
			if got := queryString(t, after, "SELECT count(*)::text FROM kv"); got != want {
				t.Fatalf("promoted standby holds %s rows, want %s", got, want)
			}
			exec(t, after, "INSERT INTO kv VALUES (1000)")
		})
	}
}
