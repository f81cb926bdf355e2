// Package pgtest runs throwaway PostgreSQL servers for tests.
//
// A Cluster is a real PostgreSQL server (Debian's postgresql package, or
// initdb and pg_ctl on PATH) in a fresh temporary directory, listening on
// 127.0.0.1 only, on a free port, with SCRAM password authentication for TCP
// and a superuser "qpc" with a random password. Start makes one; Shared,
// NewDatabase and Main share one per test binary:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestThing(t *testing.T) {
//		dsn := pgtest.NewDatabase(t) // fresh, empty, dropped at the end of the test
//		...
//	}
//
// When the process runs as root, PostgreSQL (which refuses to run as root)
// runs as the unprivileged "postgres" system user that Debian's package
// creates. A missing PostgreSQL is an error, never a skip.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	// ErrNotInstalled means no PostgreSQL server binaries were found.
	ErrNotInstalled = errors.New("pgtest: PostgreSQL server not found (no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on PATH); " +
		"install Debian's postgresql package; make deps-test does it")
	// ErrNoPostgresUser means the process runs as root, which PostgreSQL
	// refuses, and there is no "postgres" system user to run it as instead.
	ErrNoPostgresUser = errors.New("pgtest: running as root, which PostgreSQL refuses, and there is no \"postgres\" system user to run it as; " +
		"install Debian's postgresql package, which creates it; make deps-test does it")
	// ErrNotRunning is returned by the database and role helpers while the
	// server is stopped or killed, and by Restart after Stop removed the cluster.
	ErrNotRunning = errors.New("pgtest: server not running")

	// errPortInUse marks a start that lost the race for its port.
	errPortInUse = errors.New("pgtest: port already in use")
)

const (
	// Host is the only address a cluster listens on.
	Host = "127.0.0.1"
	// Superuser is the name of the superuser every cluster is created with.
	Superuser = "qpc"

	defaultStartTimeout = 2 * time.Minute // when Start's or Restart's ctx has no deadline
	stopTimeout         = time.Minute
	startAttempts       = 5 // port races retried
	logTailBytes        = 4 << 10
	ownerFile           = "pgtest.owner" // pid of the process that made the cluster
	confFile            = "pgtest.conf"  // in the data dir, included from postgresql.conf
	logFile             = "postgres.log" // in Dir, when Options.Log is nil
)

// Options configure Start.
type Options struct {
	// Fsync selects durable settings (fsync, synchronous_commit and
	// full_page_writes on, an fsynced initdb, Dir on disk under TMPDIR) for
	// benchmarks and crash tests. Default false: all three off, initdb
	// --no-sync and, where there is one with a GiB free, Dir on the memory
	// file system /dev/shm, for speed.
	Fsync bool
	// Conf holds extra postgresql.conf settings, written after pgtest's own
	// (so they win) with each value quoted, so give values as SHOW prints
	// them ("8MB", "on"). listen_addresses, port and unix_socket_directories
	// belong to pgtest and are refused. Default none.
	Conf map[string]string
	// Log receives the server log. Default nil: the file postgres.log in Dir.
	// A Log must accept writes until Stop or Kill returns.
	Log io.Writer
}

// Cluster is a running (or killed, or stopped) PostgreSQL server. Its
// methods are safe for concurrent use.
type Cluster struct {
	Host     string // always 127.0.0.1
	Port     int    // TCP port, kept across Restart
	Dir      string // temporary directory: data/ (the data dir), the Unix socket, postgres.log
	User     string // superuser name, "qpc"
	Password string // superuser password, random

	bins bins
	cred *syscall.Credential // nil: run as the current user
	opts Options

	mu      sync.Mutex
	admin   *pgx.Conn     // superuser connection to database postgres, lazily (re)made
	running bool          // a postmaster we started is up
	killed  bool          // Kill ended the last server: its shared memory is still allocated
	removed bool          // Stop removed Dir
	logSink *tailWriter   // Options.Log mode: the last bytes of the current server's output
	logDone chan struct{} // Options.Log mode: closed when the current server's output ends
}

// Start creates a cluster in a fresh temporary directory and starts its
// server; it returns once the server accepts connections. Stop it when done.
// Without a deadline on ctx, Start gives up after two minutes.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if err := checkConf(opts.Conf); err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx, defaultStartTimeout)
	defer cancel()

	b, err := findBins()
	if err != nil {
		return nil, err
	}
	cred, err := lookupCredential()
	if err != nil {
		return nil, err
	}
	parent, err := clusterParent(cred, opts.Fsync)
	if err != nil {
		return nil, err
	}
	sweepStale(ctx, b, cred)

	password, err := randomPassword()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: making the cluster dir: %w", err)
	}
	c := &Cluster{Host: Host, Dir: dir, User: Superuser, Password: password, bins: b, cred: cred, opts: opts}
	defer func() {
		if err != nil {
			c.mu.Lock()
			c.discard()
			c.mu.Unlock()
		}
	}()
	if err := c.writeFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := c.chown(dir); err != nil {
		return nil, err
	}
	if err := c.initdb(ctx); err != nil {
		return nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if c.Port, err = freePort(); err != nil {
			return nil, err
		}
		if err = c.writeConf(); err != nil {
			return nil, err
		}
		err = c.startServer(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == startAttempts || ctx.Err() != nil {
			return nil, err
		}
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// DSN returns a URL for connecting to database as the superuser:
// postgres://qpc:PASSWORD@127.0.0.1:PORT/DATABASE?sslmode=disable.
func (c *Cluster) DSN(database string) string {
	return c.UserDSN(c.User, c.Password, database)
}

// UserDSN is DSN for another role, such as one made by CreateRole.
func (c *Cluster) UserDSN(user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates an empty database (from template0, UTF8, owned by
// the superuser) and returns its DSN.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (dsn string, err error) {
	if err := checkName("database", name); err != nil {
		return "", err
	}
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE template0 ENCODING 'UTF8'"
	if err := c.exec(ctx, sql); err != nil {
		return "", fmt.Errorf("pgtest: creating database %q: %w", name, err)
	}
	return c.DSN(name), nil
}

// DropDatabase drops a database if it exists, ending its open connections
// (DROP DATABASE ... WITH (FORCE)).
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	if err := checkName("database", name); err != nil {
		return err
	}
	sql := "DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"
	if err := c.exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: dropping database %q: %w", name, err)
	}
	return nil
}

// CreateRole creates a role that can log in (over TCP with SCRAM, see
// UserDSN) with password. It is not a superuser and cannot create databases
// or roles; it can own a database (ALTER DATABASE d OWNER TO name), which
// gives it the database's public schema.
func (c *Cluster) CreateRole(ctx context.Context, name, password string) error {
	if err := checkName("role", name); err != nil {
		return err
	}
	if password == "" || strings.ContainsRune(password, 0) {
		return fmt.Errorf("pgtest: creating role %q: the password must be non-empty and free of NUL bytes", name)
	}
	sql := "CREATE ROLE " + pgx.Identifier{name}.Sanitize() + " LOGIN PASSWORD " + quoteLiteral(password)
	if err := c.exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: creating role %q: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (pg_ctl stop -m fast, or -m immediate if that
// fails) and removes Dir. It may be called after Kill or Shutdown, and again.
func (c *Cluster) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	if c.killed {
		c.releaseKilled(ctx)
	}
	err := c.shutdown(ctx)
	if err != nil {
		err = errors.Join(err, c.forceStop(ctx))
	}
	if rmErr := os.RemoveAll(c.Dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("pgtest: removing %s: %w", c.Dir, rmErr))
	}
	c.removed = true
	return err
}

// Shutdown shuts the server down cleanly (pg_ctl stop -m fast) and keeps
// Dir, for Restart.
func (c *Cluster) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return ErrNotRunning
	}
	return c.shutdown(ctx)
}

// Kill ends the server the way a crash would: SIGKILL to the postmaster and
// all its backends at once, without a checkpoint. It returns once they are
// gone. Dir is kept, for Restart (which runs crash recovery) or Stop.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed || !c.running {
		return ErrNotRunning
	}
	c.closeAdmin()
	c.running, c.killed = false, true
	err := c.killServer()
	c.waitLog(5 * time.Second)
	return err
}

// Restart starts the server again on the same Dir and Port, after Kill or
// Shutdown; a running server is shut down first. It returns once the server
// accepts connections. Without a deadline on ctx, it gives up after two minutes.
func (c *Cluster) Restart(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, defaultStartTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return ErrNotRunning
	}
	if err := c.shutdown(ctx); err != nil {
		return err
	}
	if err := c.startServer(ctx); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// initdb creates the data dir, with the superuser's password passed in a
// file that is removed again.
func (c *Cluster) initdb(ctx context.Context) error {
	pwfile := filepath.Join(c.Dir, "pwfile")
	if err := c.writeFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	args := []string{
		"-D", c.dataDir(),
		"-U", c.User,
		"--pwfile=" + pwfile,
		"--auth-host=scram-sha-256",
		"--auth-local=trust",
		"-E", "UTF8",
		"--no-locale",
		"--no-instructions",
	}
	if !c.opts.Fsync {
		args = append(args, "--no-sync")
	}
	out, err := c.command(ctx, c.bins.initdb, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: %s: %w\n%s", c.bins.initdb, err, tail(out, logTailBytes))
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = fmt.Fprintf(f, "\ninclude '%s'\n", confFile)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: editing postgresql.conf: %w", err)
	}
	return nil
}

// writeConf writes pgtest's settings and Options.Conf, for the current Port.
func (c *Cluster) writeConf() error {
	var b strings.Builder
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(v)) }
	b.WriteString("# Written by pgtest for a throwaway test cluster.\n")
	set("listen_addresses", Host)
	set("port", strconv.Itoa(c.Port))
	set("unix_socket_directories", c.Dir)
	set("max_connections", "200")
	durable := "off"
	if c.opts.Fsync {
		durable = "on"
	}
	set("fsync", durable)
	set("synchronous_commit", durable)
	set("full_page_writes", durable)
	keys := make([]string, 0, len(c.opts.Conf))
	for k := range c.opts.Conf {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		set(k, c.opts.Conf[k])
	}
	return c.writeFile(filepath.Join(c.dataDir(), confFile), []byte(b.String()), 0o600)
}

// startServer runs pg_ctl start -w. Called with c.mu held.
func (c *Cluster) startServer(ctx context.Context) error {
	if err := c.removeStaleLocks(); err != nil {
		return err
	}
	args := []string{"-D", c.dataDir(), "-w", "-t", timeoutSeconds(ctx), "-s"}
	var logOffset int64
	if c.opts.Log == nil {
		logOffset = fileSize(c.logPath())
		args = append(args, "-l", c.logPath())
	}
	args = append(args, "start")
	cmd := c.command(ctx, c.bins.pgctl, args...)

	var out strings.Builder
	var runErr error
	if c.opts.Log == nil {
		cmd.Stdout, cmd.Stderr = &out, &out
		runErr = cmd.Run()
	} else {
		// The server inherits pg_ctl's stdout and stderr: a pipe read until
		// the server and all its processes are gone.
		pr, pw, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		sink, done := &tailWriter{}, make(chan struct{})
		go func() {
			defer close(done)
			defer pr.Close()
			copyLog(c.opts.Log, sink, pr)
		}()
		cmd.Stdout, cmd.Stderr = pw, pw
		runErr = cmd.Run()
		pw.Close()
		c.logSink, c.logDone = sink, done
	}
	if runErr == nil {
		c.running, c.killed = true, false
		return nil
	}
	// pg_ctl may have given up on a server that is still coming up.
	killErr := c.forceStop(ctx)
	var logTail string
	if c.opts.Log == nil {
		logTail = readTail(c.logPath(), logOffset)
	} else {
		c.waitLog(5 * time.Second)
		logTail = c.logSink.String()
	}
	err := fmt.Errorf("pgtest: starting the server on %s:%d (%s start): %w\n%s--- server log tail ---\n%s",
		c.Host, c.Port, c.bins.pgctl, runErr, out.String(), logTail)
	if killErr != nil {
		err = errors.Join(err, killErr)
	}
	if strings.Contains(logTail, "could not bind") || strings.Contains(logTail, "Address already in use") {
		err = fmt.Errorf("%w: %w", errPortInUse, err)
	}
	return err
}

// waitReady polls until the superuser can connect over TCP (which also
// checks SCRAM), keeping that connection for the helpers. Called with c.mu held.
func (c *Cluster) waitReady(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err == nil {
			c.admin = conn
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: server on %s:%d started but does not accept connections: %w\n--- server log tail ---\n%s",
				c.Host, c.Port, err, c.currentLogTail())
		case <-tick.C:
		}
	}
}

// shutdown stops a running server cleanly, keeping Dir. Called with c.mu held.
func (c *Cluster) shutdown(ctx context.Context) error {
	c.closeAdmin()
	if !c.running {
		return nil
	}
	c.running = false
	out, err := c.command(ctx, c.bins.pgctl, "-D", c.dataDir(), "-m", "fast", "-w", "-t", timeoutSeconds(ctx), "-s", "stop").CombinedOutput()
	c.waitLog(5 * time.Second)
	if err != nil {
		return fmt.Errorf("pgtest: stopping the server on %s:%d (%s stop): %w\n%s", c.Host, c.Port, c.bins.pgctl, err, out)
	}
	return nil
}

// releaseKilled frees the shared memory (a System V segment, POSIX
// segments in /dev/shm) that a killed server leaves allocated, the way
// PostgreSQL does: the next server on the data dir finds and frees it. So
// start one and stop it at once. Best effort. Called with c.mu held.
func (c *Cluster) releaseKilled(ctx context.Context) {
	if c.startServer(ctx) == nil {
		c.running = false
		_ = c.forceStop(ctx)
		c.waitLog(5 * time.Second)
	}
}

// forceStop ends the server as fast as PostgreSQL can while still freeing
// its resources (pg_ctl stop -m immediate), or with SIGKILL if that fails.
// Called with c.mu held, or on a cluster of a dead process by sweepStale.
func (c *Cluster) forceStop(ctx context.Context) error {
	if running, _ := c.postmaster(); !running {
		return nil
	}
	err := c.command(ctx, c.bins.pgctl, "-D", c.dataDir(), "-m", "immediate", "-w", "-t", timeoutSeconds(ctx), "-s", "stop").Run()
	if err == nil {
		return nil
	}
	return c.killServer()
}

// discard ends a half-made cluster and removes Dir. Called with c.mu held.
func (c *Cluster) discard() {
	c.closeAdmin()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_ = c.forceStop(ctx)
	c.running = false
	c.waitLog(5 * time.Second)
	_ = os.RemoveAll(c.Dir)
	c.removed = true
}

// exec runs one statement as the superuser on database postgres.
func (c *Cluster) exec(ctx context.Context, sql string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed || !c.running {
		return ErrNotRunning
	}
	if c.admin == nil || c.admin.IsClosed() {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err != nil {
			return err
		}
		c.admin = conn
	}
	_, err := c.admin.Exec(ctx, sql)
	if c.admin.IsClosed() {
		c.admin = nil
	}
	return err
}

func (c *Cluster) closeAdmin() {
	if c.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.admin.Close(ctx)
	c.admin = nil
}

// waitLog waits, bounded, for the server's output to reach Options.Log.
func (c *Cluster) waitLog(limit time.Duration) {
	if c.logDone == nil {
		return
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-c.logDone:
	case <-t.C:
	}
}

func (c *Cluster) currentLogTail() string {
	if c.opts.Log == nil {
		return readTail(c.logPath(), 0)
	}
	return c.logSink.String()
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }
func (c *Cluster) logPath() string { return filepath.Join(c.Dir, logFile) }

func randomPassword() (string, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("pgtest: generating a password: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// freePort picks a TCP port on 127.0.0.1 that was free a moment ago; Start
// retries when another process takes it first.
func freePort() (int, error) {
	l, err := net.Listen("tcp4", net.JoinHostPort(Host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port on %s: %w", Host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var confName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

func checkConf(conf map[string]string) error {
	for k := range conf {
		switch {
		case !confName.MatchString(k):
			return fmt.Errorf("pgtest: Options.Conf: %q is not a setting name", k)
		case slices.Contains([]string{"listen_addresses", "port", "unix_socket_directories"}, strings.ToLower(k)):
			return fmt.Errorf("pgtest: Options.Conf: %s is set by pgtest (loopback only, a free port, the cluster dir)", k)
		}
	}
	return nil
}

func checkName(kind, name string) error {
	if name == "" || len(name) > 63 || strings.ContainsRune(name, 0) {
		return fmt.Errorf("pgtest: %s name %q: want 1 to 63 bytes, no NUL", kind, name)
	}
	return nil
}

// quoteConf quotes a postgresql.conf value.
func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, "\n", `\n`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// quoteLiteral quotes an SQL string literal, whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "E'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// timeoutSeconds is pg_ctl -t for what is left of ctx.
func timeoutSeconds(ctx context.Context) string {
	secs := 60
	if d, ok := ctx.Deadline(); ok {
		secs = max(1, int(time.Until(d).Seconds()))
	}
	return strconv.Itoa(secs)
}

// tailWriter keeps the last logTailBytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if n := len(w.buf) - logTailBytes; n > 0 {
		w.buf = append(w.buf[:0], w.buf[n:]...)
	}
	return len(p), nil
}

func (w *tailWriter) String() string {
	if w == nil {
		return ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}

// copyLog copies the server's output to log and sink until EOF. A failing
// log is dropped rather than left to block the server on a full pipe.
func copyLog(log io.Writer, sink *tailWriter, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			sink.Write(buf[:n])
			if log != nil {
				if _, werr := log.Write(buf[:n]); werr != nil {
					log = nil
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// readTail returns the last logTailBytes of a file from offset on.
func readTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)\n", err)
	}
	defer f.Close()
	if size := fileSize(path); size-offset > logTailBytes {
		offset = size - logTailBytes
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(reading the server log: %v)\n", err)
	}
	b, _ := io.ReadAll(io.LimitReader(f, logTailBytes))
	return string(b)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// command runs a PostgreSQL program in Dir as the cluster's user, with PG*
// variables (PGPORT, PGDATA, ...) removed and C messages (so a bind failure
// can be recognised).
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.Dir
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// writeFile writes a file that the cluster's user owns.
func (c *Cluster) writeFile(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return c.chown(path)
}

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
		return fmt.Errorf("pgtest: handing %s to the postgres user: %w", path, err)
	}
	return nil
}
