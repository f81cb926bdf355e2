package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Streaming replication for failover tests: a primary and a hot standby
// made from its base backup, each a Cluster of its own (own Dir, own free
// loopback port), so a test can stop the primary the way a crash would,
// promote the standby and point a multi-host DSN at both.

const (
	// ReplicationUser is the role the standby streams WAL as.
	ReplicationUser = "qpc_replication"
	// replicationSlot keeps the WAL the standby has not received yet.
	replicationSlot = "pgtest_standby"
)

// ReplicationOptions configure StartReplicated.
type ReplicationOptions struct {
	// Synchronous makes every commit on the primary wait until the standby
	// has flushed its WAL (synchronous_standby_names = '*' and
	// synchronous_commit = on; the former with ALTER SYSTEM on the primary
	// once the standby streams): an acknowledged commit survives the loss
	// of the primary. Default false: asynchronous, a commit returns once
	// flushed locally (synchronous_commit is on in both settings), before
	// the standby has it, and a failover may lose the last ones.
	Synchronous bool
	// Options apply to both servers (Conf, Fsync, Log). Conf may not set
	// synchronous_standby_names (Synchronous does) and a standby gets none
	// (a promoted standby with it would wait for a standby it does not have).
	Options Options
}

// Replicated is a primary and its streaming-replication standby.
type Replicated struct {
	Primary *Cluster
	Standby *Cluster
	// Synchronous is ReplicationOptions.Synchronous.
	Synchronous bool
	// ReplicationPassword is the password of ReplicationUser.
	ReplicationPassword string
}

// StartReplicated starts a primary (wal_level replica, a replication role
// and slot), takes a base backup of it (pg_basebackup -R, so the copy has
// standby.signal and primary_conninfo) into a second cluster dir, starts
// that as a hot standby on another free port, and returns once the standby
// streams (and, with Synchronous, is the primary's synchronous standby).
// The superuser and its password are the same on both. Stop it when done.
// Without a deadline on ctx, it gives up after two minutes.
func StartReplicated(ctx context.Context, opts ReplicationOptions) (_ *Replicated, err error) {
	for k := range opts.Options.Conf {
		if strings.EqualFold(k, "synchronous_standby_names") {
			return nil, errors.New("pgtest: ReplicationOptions.Options.Conf: synchronous_standby_names is set by ReplicationOptions.Synchronous")
		}
	}
	ctx, cancel := withDefaultTimeout(ctx, defaultStartTimeout)
	defer cancel()

	// synchronous_commit is on in both settings (pgtest's default is off,
	// for speed): asynchronous replication then means what it means in
	// production, a commit waits for its local WAL flush but not for the
	// standby.
	standbyConf := map[string]string{"wal_level": "replica", "hot_standby": "on", "max_wal_senders": "10", "synchronous_commit": "on"}
	for k, v := range opts.Options.Conf {
		standbyConf[k] = v
	}
	primaryConf := make(map[string]string, len(standbyConf)+2)
	for k, v := range standbyConf {
		primaryConf[k] = v
	}
	po := opts.Options
	po.Conf = primaryConf
	primary, err := Start(ctx, po)
	if err != nil {
		return nil, err
	}
	r := &Replicated{Primary: primary, Synchronous: opts.Synchronous}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Stop())
		}
	}()
	if r.ReplicationPassword, err = randomPassword(); err != nil {
		return nil, err
	}
	if err := primary.exec(ctx, "CREATE ROLE "+ReplicationUser+" REPLICATION LOGIN PASSWORD "+quoteLiteral(r.ReplicationPassword)); err != nil {
		return nil, fmt.Errorf("pgtest: creating the replication role: %w", err)
	}

	so := opts.Options
	so.Conf = standbyConf
	r.Standby, err = primary.startStandby(ctx, so, r.ReplicationPassword)
	if err != nil {
		return nil, err
	}
	if err := r.waitStreaming(ctx, "async"); err != nil {
		return nil, err
	}
	// synchronous_standby_names comes once the standby streams: before,
	// every commit (the replication role's included) would wait for it.
	if opts.Synchronous {
		if err := primary.exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = '*'"); err != nil {
			return nil, fmt.Errorf("pgtest: making the standby synchronous: %w", err)
		}
		if _, err := primary.queryString(ctx, "SELECT pg_reload_conf()::text"); err != nil {
			return nil, fmt.Errorf("pgtest: making the standby synchronous: %w", err)
		}
		if err := r.waitStreaming(ctx, "sync"); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// startStandby makes a new cluster from a base backup of c and starts it
// as a standby of c.
func (c *Cluster) startStandby(ctx context.Context, opts Options, replPassword string) (_ *Cluster, err error) {
	parent, err := clusterParent(c.cred, opts.Fsync)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: making the standby's cluster dir: %w", err)
	}
	s := &Cluster{Host: Host, Dir: dir, User: c.User, Password: c.Password, bins: c.bins, cred: c.cred, opts: opts}
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.discard()
			s.mu.Unlock()
		}
	}()
	if err := s.writeFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := s.chown(dir); err != nil {
		return nil, err
	}
	// The connection string is written into the copy's primary_conninfo
	// by -R; the password travels in it, not in the environment (command
	// drops PG* variables).
	conninfo := fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=pgtest_standby",
		c.Host, c.Port, ReplicationUser, replPassword)
	args := []string{"-D", s.dataDir(), "-d", conninfo, "-X", "stream", "-R",
		"-C", "-S", replicationSlot, "--checkpoint=fast"}
	if !opts.Fsync {
		args = append(args, "--no-sync")
	}
	out, err := s.command(ctx, c.bins.tool("pg_basebackup"), args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("pgtest: pg_basebackup from %s:%d: %w\n%s", c.Host, c.Port, err, tail(out, logTailBytes))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if s.Port, err = freePort(); err != nil {
			return nil, err
		}
		if err = s.writeConf(); err != nil {
			return nil, err
		}
		err = s.startServer(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == startAttempts || ctx.Err() != nil {
			return nil, err
		}
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// waitStreaming waits until the primary reports the standby streaming
// with sync_state want ("async", "sync").
func (r *Replicated) waitStreaming(ctx context.Context, want string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		state, err := r.Primary.queryString(ctx,
			"SELECT coalesce(string_agg(state || '/' || sync_state, ','), '') FROM pg_stat_replication")
		if err == nil && state == "streaming/"+want {
			return nil
		}
		last = fmt.Sprintf("%q (%v)", state, err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: the standby on port %d is not streaming/%s from the primary on port %d (pg_stat_replication: %s)\n--- standby log tail ---\n%s",
				r.Standby.Port, want, r.Primary.Port, last, r.Standby.currentLogTail())
		case <-tick.C:
		}
	}
}

// WaitReplayed waits until the standby has replayed everything the primary
// has written so far.
func (r *Replicated) WaitReplayed(ctx context.Context) error {
	lsn, err := r.Primary.queryString(ctx, "SELECT pg_current_wal_lsn()::text")
	if err != nil {
		return err
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := r.Standby.queryString(ctx, "SELECT (pg_last_wal_replay_lsn() >= '"+lsn+"'::pg_lsn)::text")
		if err == nil && ok == "true" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: the standby did not replay up to %s: %v", lsn, err)
		case <-tick.C:
		}
	}
}

// DSN is a connection string naming both servers, primary first, with
// target_session_attrs=read-write: a client connects to whichever of them
// accepts writes, so after a promotion it finds the new primary.
func (r *Replicated) DSN(database string) string {
	return r.UserDSN(r.Primary.User, r.Primary.Password, database)
}

// UserDSN is DSN for another role.
func (r *Replicated) UserDSN(user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(r.Primary.Host, strconv.Itoa(r.Primary.Port)) + "," + net.JoinHostPort(r.Standby.Host, strconv.Itoa(r.Standby.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable&target_session_attrs=read-write",
	}
	return u.String()
}

// Stop stops both servers and removes their dirs.
func (r *Replicated) Stop() error {
	var errs []error
	if r.Standby != nil {
		errs = append(errs, r.Standby.Stop())
	}
	if r.Primary != nil {
		errs = append(errs, r.Primary.Stop())
	}
	return errors.Join(errs...)
}

// StopImmediate stops the server with pg_ctl stop -m immediate: no
// checkpoint, connections cut, crash recovery on the next start; unlike
// Kill, PostgreSQL itself ends its processes and frees its shared memory.
// Dir is kept, for Restart or Stop.
func (c *Cluster) StopImmediate(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed || !c.running {
		return ErrNotRunning
	}
	c.closeAdmin()
	c.running = false
	out, err := c.command(ctx, c.bins.pgctl, "-D", c.dataDir(), "-m", "immediate", "-w", "-t", timeoutSeconds(ctx), "-s", "stop").CombinedOutput()
	c.waitLog(5 * time.Second)
	if err != nil {
		return fmt.Errorf("pgtest: stopping the server on %s:%d immediately: %w\n%s", c.Host, c.Port, err, out)
	}
	return nil
}

// Promote ends recovery on a standby (pg_ctl promote) and returns once it
// accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	c.mu.Lock()
	if c.removed || !c.running {
		c.mu.Unlock()
		return ErrNotRunning
	}
	out, err := c.command(ctx, c.bins.pgctl, "-D", c.dataDir(), "-w", "-t", timeoutSeconds(ctx), "-s", "promote").CombinedOutput()
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("pgtest: promoting the standby on %s:%d: %w\n%s", c.Host, c.Port, err, out)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		v, err := c.queryString(ctx, "SELECT pg_is_in_recovery()::text")
		if err == nil && v == "false" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: the standby on %s:%d is still in recovery after pg_ctl promote: %v", c.Host, c.Port, err)
		case <-tick.C:
		}
	}
}

// InRecovery reports whether the server is a standby (pg_is_in_recovery).
func (c *Cluster) InRecovery(ctx context.Context) (bool, error) {
	v, err := c.queryString(ctx, "SELECT pg_is_in_recovery()::text")
	return v == "true", err
}

// queryString runs a one-value query as the superuser on database postgres.
func (c *Cluster) queryString(ctx context.Context, sql string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed || !c.running {
		return "", ErrNotRunning
	}
	if c.admin == nil || c.admin.IsClosed() {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err != nil {
			return "", err
		}
		c.admin = conn
	}
	var s string
	err := c.admin.QueryRow(ctx, sql).Scan(&s)
	if c.admin.IsClosed() {
		c.admin = nil
	}
	return s, err
}
