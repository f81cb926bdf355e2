package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// roleDatabase makes a login role owning a new database; it returns the
// database name. The role is dropped at the end of the test.
func roleDatabase(t *testing.T, role, password string) (*pgtest.Cluster, string) {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()
	if err := c.CreateRole(ctx, role, password); err != nil {
		t.Fatal(err)
	}
	// Runs last, after the database it owns is dropped.
	t.Cleanup(func() { superExec(t, c, "postgres", "DROP ROLE IF EXISTS "+role) })
	dsn := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	su, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close()
	if _, err := su.Exec("ALTER DATABASE " + pgx.Identifier{cfg.Database}.Sanitize() + " OWNER TO " + role); err != nil {
		t.Fatal(err)
	}
	return c, cfg.Database
}

// superExec runs statements as the cluster's superuser.
func superExec(t *testing.T, c *pgtest.Cluster, database string, stmts ...string) {
	t.Helper()
	su, err := sql.Open("pgx", c.DSN(database))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close()
	for _, s := range stmts {
		if _, err := su.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// TestPostgresPasswordRotation: the role's password changes (ALTER ROLE),
// the node is given the new DSN, every backend of the role is killed, and
// requests keep succeeding on connections made with the new password; the
// LISTEN connection comes back with it too. A DSN that does not log in,
// or names another database, is refused and the old one stays in use.
func TestPostgresPasswordRotation(t *testing.T) {
	role := fmt.Sprintf("rot_%d", time.Now().UnixNano()%1e9)
	c, database := roleDatabase(t, role, "first-password")
	ctx := context.Background()
	db := openPG(t, c.UserDSN(role, "first-password", database), PostgresOptions{NodeID: "rot"})

	var n atomic.Int64
	write := func() error {
		return db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES (?, 'x')", fmt.Sprintf("k%d", n.Add(1)))
			return err
		})
	}
	if err := write(); err != nil {
		t.Fatal(err)
	}

	// Load runs through the whole rotation; in-flight work is not dropped
	// by the swap itself (only the killed backends fail, below).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var beforeKill atomic.Int64
	var killed atomic.Bool
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := write(); err != nil && !killed.Load() {
				beforeKill.Add(1)
				t.Errorf("write failed before any backend was killed: %v", err)
			}
		}
	}()

	superExec(t, c, "postgres", "ALTER ROLE "+role+" PASSWORD 'second-password'")
	// Wrong password: refused, old settings kept.
	err := db.SetPostgresDSN(ctx, secret.New([]byte(c.UserDSN(role, "wrong", database))))
	if !errors.Is(err, ErrDSNRefused) || !errors.Is(err, ErrPostgresAuth) || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v, want ErrDSNRefused/ErrPostgresAuth without the password", err)
	}
	// Another database: refused.
	if err := db.SetPostgresDSN(ctx, secret.New([]byte(c.UserDSN(role, "second-password", "postgres")))); !errors.Is(err, ErrDSNRefused) {
		t.Fatalf("other database: %v, want ErrDSNRefused", err)
	}
	// Garbage: refused.
	if err := db.SetPostgresDSN(ctx, secret.New([]byte("postgres://u:p@h:notaport/x"))); !errors.Is(err, ErrDSNRefused) {
		t.Fatalf("bad DSN: %v, want ErrDSNRefused", err)
	}
	if err := db.SetPostgresDSN(ctx, secret.New([]byte(c.UserDSN(role, "second-password", database)))); err != nil {
		t.Fatal(err)
	}
	st0, _ := db.PostgresStats()

	// Every backend of the role goes: the pool's, LISTEN and NOTIFY.
	killed.Store(true)
	superExec(t, c, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+role+"' AND pid <> pg_backend_pid()")
	waitUntil(t, "a write on a connection made with the new password", func() bool { return write() == nil })
	close(stop)
	wg.Wait()
	for i := range 50 {
		if err := write(); err != nil {
			t.Fatalf("write %d after the rotation: %v", i, err)
		}
		if err := db.ReadTx(ctx, func(tx *sql.Tx) error {
			var v string
			return tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'app'").Scan(&v)
		}); err != nil {
			t.Fatalf("read %d after the rotation: %v", i, err)
		}
	}
	// The LISTEN connection reconnected with the new password.
	waitUntil(t, "LISTEN reconnected", func() bool {
		st, _ := db.PostgresStats()
		return st.ListenUp && st.ListenReconnects > st0.ListenReconnects
	})
	// The old password is really gone: what came back used the new one.
	if _, err := pgx.Connect(ctx, c.UserDSN(role, "first-password", database)); err == nil {
		t.Fatal("the old password still logs in")
	}
}
