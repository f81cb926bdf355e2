package pgtest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func start(t *testing.T, opts pgtest.Options) *pgtest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	began := time.Now()
	c, err := pgtest.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster started in %v on %s:%d, dir %s", time.Since(began).Round(time.Millisecond), c.Host, c.Port, c.Dir)
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting to %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestStartCreateDatabaseQuery(t *testing.T) {
	c := start(t, pgtest.Options{Conf: map[string]string{"work_mem": "8MB", "cluster_name": `it's a "test"`}})
	if c.Host != "127.0.0.1" || c.User != "qpc" || c.Password == "" || c.Port == 0 {
		t.Fatalf("cluster = %+v", c)
	}
	wantDSN := fmt.Sprintf("postgres://qpc:%s@127.0.0.1:%d/app?sslmode=disable", c.Password, c.Port)
	if got := c.DSN("app"); got != wantDSN {
		t.Errorf("DSN = %q, want %q", got, wantDSN)
	}
	ctx := context.Background()
	dsn, err := c.CreateDatabase(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if dsn != wantDSN {
		t.Errorf("CreateDatabase DSN = %q, want %q", dsn, wantDSN)
	}
	conn := connect(t, dsn)
	exec(t, conn, "CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
	exec(t, conn, "INSERT INTO kv VALUES ($1, $2)", "greeting", "grüß dich")
	if got := queryString(t, conn, "SELECT v FROM kv WHERE k = $1", "greeting"); got != "grüß dich" {
		t.Errorf("v = %q", got)
	}

	for setting, want := range map[string]string{
		"current_database()":                                                 "app",
		"current_user":                                                       "qpc",
		"current_setting('listen_addresses')":                                "127.0.0.1",
		"current_setting('unix_socket_directories')":                         c.Dir,
		"current_setting('max_connections')":                                 "200",
		"current_setting('fsync')":                                           "off",
		"current_setting('synchronous_commit')":                              "off",
		"current_setting('full_page_writes')":                                "off",
		"current_setting('work_mem')":                                        "8MB",
		"current_setting('cluster_name')":                                    `it's a "test"`,
		"current_setting('server_encoding')":                                 "UTF8",
		"current_setting('data_directory')":                                  filepath.Join(c.Dir, "data"),
		"(SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user)": "true",
	} {
		if got := queryString(t, conn, "SELECT "+setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	t.Logf("server: %s", queryString(t, conn, "SELECT version()"))

	if os.Geteuid() == 0 {
		// As root, the server runs as the postgres system user.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(c.Dir, "data"), &st); err != nil {
			t.Fatal(err)
		}
		if strconv.Itoa(int(st.Uid)) != u.Uid {
			t.Errorf("data dir owned by uid %d, want the postgres user (%s)", st.Uid, u.Uid)
		}
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "pwfile")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pwfile left behind: %v", err)
	}

	if err := c.DropDatabase(ctx, "app"); err != nil { // conn is still open: WITH (FORCE)
		t.Fatal(err)
	}
	if err := c.DropDatabase(ctx, "app"); err != nil {
		t.Errorf("dropping a dropped database: %v", err)
	}
}

func TestScramRefusesWrongPassword(t *testing.T) {
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, c.UserDSN(c.User, c.Password+"x", "postgres"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" { // invalid_password
		t.Fatalf("connecting with a wrong password: %v, want SQLSTATE 28P01", err)
	}
	conn := connect(t, c.DSN("postgres"))
	var methods []string
	rows, err := conn.Query(ctx, "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
	if err == nil {
		methods, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(methods) != 1 || methods[0] != "scram-sha-256" {
		t.Errorf("host auth methods = %v, want [scram-sha-256]", methods)
	}
}

func TestCreateRoleOwnsDatabase(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	const role, password = "app_owner", `pa'ss\word "x"`
	if err := c.CreateRole(ctx, role, password); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn := connect(t, c.DSN("postgres"))
		exec(t, conn, "DROP ROLE "+role)
	})
	dsn := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, connect(t, dsn), "ALTER DATABASE "+pgx.Identifier{cfg.Database}.Sanitize()+" OWNER TO "+role)

	conn := connect(t, c.UserDSN(role, password, cfg.Database))
	if got := queryString(t, conn, "SELECT current_user"); got != role {
		t.Errorf("current_user = %q", got)
	}
	if got := queryString(t, conn, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"); got != "false" {
		t.Errorf("rolsuper = %s, want false", got)
	}
	exec(t, conn, "CREATE TABLE owned (id int)")
	exec(t, conn, "INSERT INTO owned VALUES (1)")

	_, err = pgx.Connect(ctx, c.UserDSN(role, "wrong", cfg.Database))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("role with a wrong password: %v, want SQLSTATE 28P01", err)
	}
}

// syncBuffer is a Log writer that tests can read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestKillRestartKeepsCommittedData(t *testing.T) {
	log := &syncBuffer{}
	c := start(t, pgtest.Options{Fsync: true, Log: log})
	ctx := context.Background()
	dsn, err := c.CreateDatabase(ctx, "durable")
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, dsn)
	if got := queryString(t, conn, "SELECT current_setting('fsync') || current_setting('synchronous_commit') || current_setting('full_page_writes')"); got != "ononon" {
		t.Errorf("fsync, synchronous_commit, full_page_writes = %s, want on on on", got)
	}
	exec(t, conn, "CREATE TABLE t (n int)")
	exec(t, conn, "INSERT INTO t SELECT generate_series(1, 1000)")
	if _, err := os.Stat(filepath.Join(c.Dir, "postgres.log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postgres.log with Options.Log set: %v", err)
	}
	if !strings.Contains(log.String(), "database system is ready to accept connections") {
		t.Errorf("Options.Log did not get the server log; got:\n%s", log.String())
	}

	port := c.Port
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("query after Kill succeeded")
	}
	if nc, err := net.DialTimeout("tcp", net.JoinHostPort(c.Host, strconv.Itoa(port)), time.Second); err == nil {
		nc.Close()
		t.Fatal("port still accepts connections after Kill")
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("data dir after Kill: %v", err)
	}
	if err := c.Kill(); !errors.Is(err, pgtest.ErrNotRunning) {
		t.Errorf("second Kill = %v, want ErrNotRunning", err)
	}
	if _, err := c.CreateDatabase(ctx, "nope"); !errors.Is(err, pgtest.ErrNotRunning) {
		t.Errorf("CreateDatabase on a killed server = %v, want ErrNotRunning", err)
	}

	began := time.Now()
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart with crash recovery took %v", time.Since(began).Round(time.Millisecond))
	if c.Port != port {
		t.Errorf("port %d after Restart, want %d", c.Port, port)
	}
	conn = connect(t, dsn)
	if got := queryString(t, conn, "SELECT count(*)::text FROM t"); got != "1000" {
		t.Errorf("%s rows after a crash, want 1000", got)
	}
	if !strings.Contains(log.String(), "automatic recovery in progress") {
		t.Errorf("server log shows no crash recovery:\n%s", log.String())
	}

	// A clean shutdown keeps the data too.
	exec(t, conn, "INSERT INTO t VALUES (0)")
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	conn = connect(t, dsn)
	if got := queryString(t, conn, "SELECT count(*)::text FROM t"); got != "1001" {
		t.Errorf("%s rows after Shutdown and Restart, want 1001", got)
	}
}

func TestStopRemovesDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir after Stop: %v", err)
	}
	if nc, err := net.DialTimeout("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), time.Second); err == nil {
		nc.Close()
		t.Error("port still accepts connections after Stop")
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.Restart(ctx); !errors.Is(err, pgtest.ErrNotRunning) {
		t.Errorf("Restart after Stop = %v, want ErrNotRunning", err)
	}
}

func TestStartRefusesNonLoopbackConf(t *testing.T) {
	for _, k := range []string{"listen_addresses", "port", "unix_socket_directories", "bad name"} {
		if _, err := pgtest.Start(context.Background(), pgtest.Options{Conf: map[string]string{k: "x"}}); err == nil {
			t.Errorf("Start with Conf[%q] succeeded", k)
		}
	}
}

func TestSharedDatabasesAreIndependent(t *testing.T) {
	if pgtest.Shared(t) != pgtest.Shared(t) {
		t.Fatal("Shared returned two clusters")
	}
	began := time.Now()
	a := pgtest.NewDatabase(t)
	t.Logf("NewDatabase took %v", time.Since(began).Round(time.Microsecond))
	b := pgtest.NewDatabase(t)
	if a == b {
		t.Fatalf("two NewDatabase calls gave %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	exec(t, ca, "CREATE TABLE only_in_a (id int)")
	if got := queryString(t, cb, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'only_in_a'"); got != "0" {
		t.Errorf("table made in one database is visible in the other")
	}

	// Databases are dropped when their test ends, open connections or not.
	var name string
	var open *pgx.Conn
	t.Run("sub", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		name = cfg.Database
		if open, err = pgx.Connect(context.Background(), dsn); err != nil {
			t.Fatal(err)
		}
	})
	if open != nil {
		defer open.Close(context.Background())
	}
	if got := queryString(t, ca, "SELECT count(*)::text FROM pg_database WHERE datname = $1", name); got != "0" {
		t.Errorf("database %s still exists after its test ended", name)
	}

	// NewDatabase is safe for parallel tests.
	t.Run("parallel", func(t *testing.T) {
		for i := range 8 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				conn := connect(t, pgtest.NewDatabase(t))
				exec(t, conn, "CREATE TABLE x (id int)")
			})
		}
	})
}

func TestFailedStartReportsServerLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Conf: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		c.Stop()
		t.Fatal("Start with shared_buffers = 'lots' succeeded")
	}
	if !strings.Contains(err.Error(), "server log tail") || !strings.Contains(err.Error(), "shared_buffers") {
		t.Errorf("error does not show the server log's complaint:\n%v", err)
	}
	t.Logf("%v", err)
}

// TestLeakHelper, run by TestSweepsClustersOfDeadProcesses in a child
// process, starts a cluster and exits without stopping it, as a test binary
// killed by go test's timeout would.
func TestLeakHelper(t *testing.T) {
	if os.Getenv("PGTEST_LEAK_HELPER") != "1" {
		return
	}
	c, err := pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("DIR=" + c.Dir)
	os.Exit(0)
}

func TestSweepsClustersOfDeadProcesses(t *testing.T) {
	cmd := osexec.Command(os.Args[0], "-test.run=^TestLeakHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PGTEST_LEAK_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	_, dir, ok := strings.Cut(strings.TrimSpace(string(out)), "DIR=")
	if !ok {
		t.Fatalf("helper printed no DIR:\n%s", out)
	}
	pidFile, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("the leaked cluster: %v", err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if !running(pid) {
		t.Fatalf("the leaked postmaster %d is not running", pid)
	}

	start(t, pgtest.Options{}) // sweeps
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leaked cluster dir %s still there after the next Start: %v", dir, err)
	}
	if running(pid) {
		t.Errorf("leaked postmaster %d still runs after the next Start", pid)
	}
}

// running reports whether pid is a process that has not exited (a zombie,
// not yet reaped by init, has).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ") // after "pid (comm"
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func TestStopAfterKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir after Kill and Stop: %v", err)
	}
}
