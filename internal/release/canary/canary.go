// Package canary upgrades qpcd on one host: releases side by side under the
// data directory, a health and metrics gate after the switch, and automatic
// rollback (the binary, and the pre-upgrade backup if the schema moved).
//
// On a cluster (the PostgreSQL backend, several nodes on one database) it
// upgrades the node it runs on, one of N, and gates on that node's metrics
// while the others keep serving on the previous release. The database is
// shared, so it takes no file backup and a rollback switches this node's
// binary back without touching the database: that works because the new
// release's migrations are expand-only (store.ExpandPrefix), which the old
// release runs on. The others are upgraded after promote, one at a time,
// each by its own canary.
//
// Layout (the releases directory, default <data_dir>/releases):
//
//	releases/1.4.0/qpcd       one directory per installed version
//	releases/1.5.0/qpcd
//	releases/current -> 1.5.0 what the service manager runs (current/qpcd)
//	releases/previous -> 1.4.0 what rollback returns to
//	releases/canary.json      the last canary: phase, backup, schema versions, gate
//	releases/backups/         pre-upgrade backups
//
// Links are switched atomically (a link under a temporary name renamed over
// the old one); canary.json is written atomically (temporary file, fsync,
// rename).
package canary

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
)

// Errors; each is wrapped with the detail and the fix.
var (
	ErrInvalidConfig = errors.New("canary: invalid configuration")
	ErrLayout        = errors.New("canary: releases directory")
	ErrVerify        = errors.New("canary: artifact signature not verified")
	ErrArtifact      = errors.New("canary: unusable artifact")
	ErrConflict      = errors.New("canary: conflicting release state")
	ErrScrape        = errors.New("canary: cannot read qpcd's ops endpoints")
	ErrGate          = errors.New("canary: health gate failed, rolled back")
	ErrRollback      = errors.New("canary: rollback failed")
	ErrDataLoss      = errors.New("canary: rollback would lose data")
	ErrBackup        = errors.New("canary: pre-upgrade backup failed")
)

// Admin is what the canary needs from qpcd's admin API (*admin.Client).
type Admin interface {
	Status(ctx context.Context) (admin.Status, error)
	Backup(ctx context.Context, out string, force bool, progress func(done, total int64)) (admin.BackupResult, error)
}

// Defaults.
const (
	DefaultBake          = 5 * time.Minute
	DefaultPoll          = 5 * time.Second
	DefaultStartTimeout  = 60 * time.Second
	DefaultMaxErrorRatio = 0.01
	DefaultMaxP99        = 500 * time.Millisecond
	DefaultOpsURL        = "http://127.0.0.1:7444"
)

// Config configures a Manager. Zero fields take the defaults named on them.
type Config struct {
	DataDir     string // qpcd's data directory; required
	ReleasesDir string // default <DataDir>/releases
	BackupDir   string // pre-upgrade backups; default <ReleasesDir>/backups
	PublicKey   string // minisign public key file; "" = release.DefaultPublicKeyPath

	Service Service // restarts qpcd; required for canary and rollback
	Admin   Admin   // qpcd's admin API; required for canary and rollback
	// Restore replaces the stopped qpcd's database with a backup (what
	// `qpcctl restore` does); required for canary and rollback.
	Restore func(ctx context.Context, backup string) error
	// OfflineSchema reads the schema version of the stopped qpcd's
	// database; used when the canary qpcd did not answer on its admin
	// socket. nil: treat an unknown schema as moved.
	OfflineSchema func(ctx context.Context) (int, error)

	OpsURL       string        // qpcd's ops listener; default DefaultOpsURL
	Bake         time.Duration // how long the gate watches; default DefaultBake
	Poll         time.Duration // how often it looks; default DefaultPoll
	StartTimeout time.Duration // for the new process to come up and be ready; default DefaultStartTimeout
	Thresholds                 // MaxErrorRatio default DefaultMaxErrorRatio, MaxP99 default DefaultMaxP99

	Now   func() time.Time                                 // default time.Now
	Sleep func(ctx context.Context, d time.Duration) error // default: a timer; returns ctx.Err()
	HTTP  *http.Client                                     // default: a client without proxies
	Log   *slog.Logger                                     // default: discard
	Step  func(msg string)                                 // progress lines; may be nil
}

// Manager runs canary, promote, rollback, status and list.
type Manager struct {
	cfg   Config
	l     layout
	probe opsProbe
}

// New checks cfg and applies the defaults.
func New(cfg Config) (*Manager, error) {
	if cfg.DataDir == "" && cfg.ReleasesDir == "" {
		return nil, fmt.Errorf("%w: no data directory (pass --data-dir or --config)", ErrInvalidConfig)
	}
	if cfg.ReleasesDir == "" {
		cfg.ReleasesDir = filepath.Join(cfg.DataDir, "releases")
	}
	if cfg.BackupDir == "" {
		cfg.BackupDir = filepath.Join(cfg.ReleasesDir, BackupsDir)
	}
	if cfg.OpsURL == "" {
		cfg.OpsURL = DefaultOpsURL
	}
	if !strings.Contains(cfg.OpsURL, "://") {
		cfg.OpsURL = "http://" + cfg.OpsURL
	}
	cfg.OpsURL = strings.TrimRight(cfg.OpsURL, "/")
	if cfg.Bake == 0 {
		cfg.Bake = DefaultBake
	}
	if cfg.Poll == 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.MaxErrorRatio == 0 {
		cfg.MaxErrorRatio = DefaultMaxErrorRatio
	}
	if cfg.MaxP99 == 0 {
		cfg.MaxP99 = DefaultMaxP99
	}
	switch {
	case cfg.Bake < 0, cfg.Poll < 0, cfg.StartTimeout < 0, cfg.MaxP99 < 0:
		return nil, fmt.Errorf("%w: --bake, --poll, --start-timeout and --max-p99 must be positive", ErrInvalidConfig)
	case cfg.MaxErrorRatio < 0 || cfg.MaxErrorRatio > 1:
		return nil, fmt.Errorf("%w: --max-error-ratio must be between 0 and 1 (0.01 = 1%%)", ErrInvalidConfig)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Step == nil {
		cfg.Step = func(string) {}
	}
	return &Manager{cfg: cfg, l: layout{dir: cfg.ReleasesDir}, probe: opsProbe{base: cfg.OpsURL, hc: cfg.HTTP}}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (m *Manager) needLive() error {
	if m.cfg.Service == nil || m.cfg.Admin == nil || m.cfg.Restore == nil {
		return fmt.Errorf("%w: canary and rollback need a service manager, the admin API and restore", ErrInvalidConfig)
	}
	return nil
}

func (m *Manager) step(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	m.cfg.Log.Info(msg)
	m.cfg.Step(msg)
}

// ReleasesDir is the releases directory in use.
func (m *Manager) ReleasesDir() string { return m.cfg.ReleasesDir }

// Install verifies an artifact and installs it under <releases>/<version>;
// when no release is current yet it becomes current (no restart). It is how
// the running version gets into the layout before the first canary.
func (m *Manager) Install(ctx context.Context, artifact, sig string) (Installed, bool, error) {
	unlock, err := m.l.lock()
	if err != nil {
		return Installed{}, false, err
	}
	defer unlock()
	inst, err := m.l.install(ctx, artifact, sig, m.cfg.PublicKey)
	if err != nil {
		return inst, false, err
	}
	cur, err := m.l.link(CurrentLink)
	if err != nil || cur != "" {
		return inst, false, err
	}
	if err := m.l.setLink(CurrentLink, inst.Version); err != nil {
		return inst, false, err
	}
	return inst, true, nil
}

// Gate is the health gate's verdict.
type Gate struct {
	Passed        bool    `json:"passed"`
	Reason        string  `json:"reason,omitempty"`
	Version       string  `json:"version_seen,omitempty"`
	Ready         bool    `json:"ready"`
	BakeSeconds   float64 `json:"bake_seconds"`
	Polls         int     `json:"polls"`
	MaxErrorRatio float64 `json:"max_error_ratio"`
	MaxP99Seconds float64 `json:"max_p99_seconds"`
	Measure
}

// Report is what Canary did.
type Report struct {
	Installed    Installed `json:"installed"`
	From         string    `json:"from"`
	Backup       string    `json:"backup"`
	SchemaBefore int       `json:"schema_before"`
	SchemaAfter  int       `json:"schema_after"` // -1: unknown
	Gate         Gate      `json:"gate"`
	RolledBack   bool      `json:"rolled_back"`
	Restored     bool      `json:"restored_backup"`
	State        State     `json:"state"`
	// Shared and Peers: the cluster, see State.
	Shared bool   `json:"shared_database,omitempty"`
	Peers  []Peer `json:"peers,omitempty"`
}

// peersOf lists the registry's other nodes that run or stopped answering
// (stopped ones are gone from the deployment).
func peersOf(st admin.Status) []Peer {
	var out []Peer
	for _, n := range st.Nodes {
		if n.Self || n.ID == st.NodeID || n.State == "stopped" {
			continue
		}
		out = append(out, Peer{ID: n.ID, Address: n.Address, Version: n.Version, State: n.State})
	}
	return out
}

// Canary installs the artifact (after verifying its signature), takes a
// backup through the admin API, switches `current` to the new release
// (`previous` to the old one), restarts qpcd through the service manager and
// watches it for the bake time. If the gate fails it rolls back and returns
// an error wrapping ErrGate; if it passes the release stays current in phase
// "passed" until promote or rollback.
func (m *Manager) Canary(ctx context.Context, artifact, sig string) (rep Report, err error) {
	if err := m.needLive(); err != nil {
		return rep, err
	}
	unlock, err := m.l.lock()
	if err != nil {
		return rep, err
	}
	defer unlock()
	st, have, err := m.l.readState()
	if err != nil {
		return rep, err
	}
	if have && (st.Phase == PhaseBaking || st.Phase == PhasePassed) {
		return rep, fmt.Errorf("%w: the canary of %s is in phase %q; finish it first with `qpcctl release promote` or `qpcctl release rollback`", ErrConflict, st.Version, st.Phase)
	}
	cur, err := m.l.link(CurrentLink)
	if err != nil {
		return rep, err
	}
	if cur == "" {
		return rep, fmt.Errorf("%w: no current release in %s; install the running qpcd first with `qpcctl release install ARTIFACT` and point the service at %s", ErrLayout, m.cfg.ReleasesDir, filepath.Join(m.cfg.ReleasesDir, CurrentLink, BinaryName))
	}
	prev, err := m.l.link(PreviousLink)
	if err != nil {
		return rep, err
	}
	rep.From = cur

	m.step("verifying and installing %s", artifact)
	inst, err := m.l.install(ctx, artifact, sig, m.cfg.PublicKey)
	rep.Installed = inst
	if err != nil {
		return rep, err
	}
	if inst.Version == cur {
		return rep, fmt.Errorf("%w: %s is already the current release; nothing to do", ErrConflict, cur)
	}

	before, err := m.cfg.Admin.Status(ctx)
	if err != nil {
		return rep, fmt.Errorf("%w: qpcd status before the upgrade: %w (qpcd must be running for a canary)", ErrBackup, err)
	}
	rep.SchemaBefore = before.SchemaVersion
	rep.Shared, rep.Peers = before.Backend == "postgres", peersOf(before)
	now := m.cfg.Now()
	var backup string
	if rep.Shared {
		// A third version beside the two of a rolling upgrade is not
		// covered by the mixed-version rule (N and N+1 only).
		for _, p := range rep.Peers {
			if p.Version != before.Version && p.Version != inst.Version {
				return rep, fmt.Errorf("%w: node %s (%s) runs qpcd %s, this node %s: finish that upgrade first (upgrade or roll back every node to one version), then canary %s",
					ErrConflict, p.ID, p.Address, p.Version, before.Version, inst.Version)
			}
		}
		m.step("PostgreSQL: the database is shared with %d other node(s), which keep serving on their release; no file backup is taken and a rollback will not touch the database (back it up with PostgreSQL's tools; docs/release.md)", len(rep.Peers))
	} else {
		if err := os.MkdirAll(m.cfg.BackupDir, 0o700); err != nil {
			return rep, fmt.Errorf("%w: %v (check --backup-dir)", ErrBackup, err)
		}
		backup = filepath.Join(m.cfg.BackupDir, "pre-"+inst.Version+"-"+now.UTC().Format("20060102T150405Z")+".qpcbak")
		m.step("taking the pre-upgrade backup %s", backup)
		if _, err := m.cfg.Admin.Backup(ctx, backup, false, nil); err != nil {
			return rep, fmt.Errorf("%w: %w (nothing was switched; fix the backup, e.g. free space in %s, and run the canary again)", ErrBackup, err, m.cfg.BackupDir)
		}
		rep.Backup = backup
	}

	old, _ := m.probe.scrape(ctx) // StartTime 0 when the old qpcd has no ops listener
	st = State{Phase: PhaseBaking, Version: inst.Version, From: cur, PrevPrevious: prev, StartedAt: now, UpdatedAt: now,
		Backup: backup, SchemaBefore: before.SchemaVersion, Stable: st.Stable, Shared: rep.Shared, Peers: rep.Peers}
	if err := m.l.writeState(st); err != nil {
		return rep, err
	}
	m.step("switching %s from %s to %s", CurrentLink, cur, inst.Version)
	if err := m.l.setLink(PreviousLink, cur); err != nil {
		return rep, err
	}
	if err := m.l.setLink(CurrentLink, inst.Version); err != nil {
		return rep, err
	}

	m.step("restarting qpcd (%s)", m.cfg.Service.Name())
	var gate Gate
	if err := m.cfg.Service.Restart(ctx); err != nil {
		gate = Gate{Reason: err.Error()}
	} else {
		gate = m.watch(ctx, inst.Version, old.StartTime)
	}
	rep.Gate = gate
	st.Gate = &gate
	if gate.Passed {
		rep.SchemaAfter = -1
		if s, err := m.cfg.Admin.Status(ctx); err == nil {
			rep.SchemaAfter = s.SchemaVersion
		}
		st.Phase, st.SchemaAfter, st.UpdatedAt = PhasePassed, rep.SchemaAfter, m.cfg.Now()
		rep.State = st
		m.step("gate passed: %s is current; promote it with `qpcctl release promote` or roll back with `qpcctl release rollback`", inst.Version)
		if rep.Shared && len(rep.Peers) > 0 {
			m.step("after promote, upgrade the other %d node(s) one at a time, each with `qpcctl release canary` of the same artifact and `promote` on its host", len(rep.Peers))
		}
		return rep, m.l.writeState(st)
	}
	if ctx.Err() != nil {
		// Interrupted: roll back anyway, on a fresh context.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 2*m.cfg.StartTimeout+time.Minute)
		defer cancel()
	}
	m.step("gate failed: %s; rolling back to %s", gate.Reason, cur)
	st.Error = gate.Reason
	rb, rerr := m.rollback(ctx, st, true)
	rep.RolledBack, rep.Restored, rep.SchemaAfter, rep.State = rerr == nil, rb.Restored, rb.SchemaAfter, rb
	if rerr != nil {
		return rep, fmt.Errorf("%w: %s; then %w", ErrGate, gate.Reason, rerr)
	}
	return rep, fmt.Errorf("%w: %s (qpcd %s serves again; see `qpcctl release status`)", ErrGate, gate.Reason, cur)
}

// watch waits for qpcd `version` in a new process (start time != oldStart),
// ready within StartTimeout, then applies the gate for the bake time.
func (m *Manager) watch(ctx context.Context, version string, oldStart float64) Gate {
	g := Gate{MaxErrorRatio: m.cfg.MaxErrorRatio, MaxP99Seconds: m.cfg.MaxP99.Seconds(), Measure: Measure{P99Seconds: -1}}
	fail := func(format string, args ...any) Gate {
		g.Reason = fmt.Sprintf(format, args...)
		return g
	}
	m.step("waiting up to %s for qpcd %s to start and be ready", m.cfg.StartTimeout, version)
	base, err := m.waitUp(ctx, version, oldStart)
	g.Version = base.Version
	if err != nil {
		if base.Version != "" && base.Version != version {
			return fail("%v (does the service run %s? see docs/release.md)", err, filepath.Join(m.cfg.ReleasesDir, CurrentLink, BinaryName))
		}
		return fail("%v", err)
	}
	g.Ready = true
	m.step("baking for %s (poll every %s; max error ratio %g, max p99 %s)", m.cfg.Bake, m.cfg.Poll, m.cfg.MaxErrorRatio, m.cfg.MaxP99)
	start := m.cfg.Now()
	last := base
	for {
		elapsed := m.cfg.Now().Sub(start)
		if elapsed >= m.cfg.Bake {
			break
		}
		if err := m.cfg.Sleep(ctx, min(m.cfg.Poll, m.cfg.Bake-elapsed)); err != nil {
			return fail("interrupted during the bake: %v", err)
		}
		g.Polls++
		g.BakeSeconds = m.cfg.Now().Sub(start).Seconds()
		if err := m.probe.ready(ctx); err != nil {
			g.Ready = false
			return fail("qpcd %s turned unready during the bake: %v", version, err)
		}
		s, err := m.probe.scrape(ctx)
		if err != nil {
			return fail("qpcd %s: %v", version, err)
		}
		if s.Version != version || s.StartTime != base.StartTime {
			return fail("qpcd restarted during the bake (now version %s)", s.Version)
		}
		last = s
		g.Measure = Delta(base, last)
		if why := m.cfg.Thresholds.check(g.Measure); why != "" && g.Measure.Requests >= minRequestsEarly {
			return fail("%s", why)
		}
	}
	g.Measure = Delta(base, last)
	if why := m.cfg.Thresholds.check(g.Measure); why != "" {
		return fail("%s", why)
	}
	g.Passed = true
	return g
}

// minRequestsEarly: the gate fails before the bake ends only once this many
// RPCs were seen (a handful of early errors is not yet a ratio).
const minRequestsEarly = 100

// waitUp polls until qpcd `version` runs in a process other than oldStart's
// and /readyz answers 200, or StartTimeout passes.
func (m *Manager) waitUp(ctx context.Context, version string, oldStart float64) (Sample, error) {
	deadline := m.cfg.Now().Add(m.cfg.StartTimeout)
	var s Sample
	var last error
	for {
		var err error
		s, err = m.probe.scrape(ctx)
		switch {
		case err != nil:
			last = err
		case s.Version != version || (oldStart != 0 && s.StartTime == oldStart):
			last = fmt.Errorf("qpcd %s still runs (started %s), not %s", s.Version, time.Unix(int64(s.StartTime), 0).UTC().Format(time.RFC3339), version)
		default:
			if err := m.probe.ready(ctx); err != nil {
				last = fmt.Errorf("qpcd %s started but is not ready: %v", version, err)
			} else {
				return s, nil
			}
		}
		if !m.cfg.Now().Before(deadline) {
			return s, fmt.Errorf("after %s: %v", m.cfg.StartTimeout, last)
		}
		if err := m.cfg.Sleep(ctx, min(m.cfg.Poll, 250*time.Millisecond)); err != nil {
			return s, fmt.Errorf("interrupted: %v", err)
		}
	}
}

// Promote marks the release that passed its canary as stable. `previous`
// stays, so one more rollback is possible.
func (m *Manager) Promote(ctx context.Context) (State, error) {
	unlock, err := m.l.lock()
	if err != nil {
		return State{}, err
	}
	defer unlock()
	st, have, err := m.l.readState()
	if err != nil {
		return st, err
	}
	if !have || st.Phase != PhasePassed {
		phase := "none"
		if have {
			phase = st.Phase
		}
		return st, fmt.Errorf("%w: nothing to promote: the last canary is in phase %q (promote follows a canary that passed its gate; see `qpcctl release status`)", ErrConflict, phase)
	}
	cur, err := m.l.link(CurrentLink)
	if err != nil {
		return st, err
	}
	if cur != st.Version {
		return st, fmt.Errorf("%w: current is %s, not the canary %s (someone switched it by hand); run a new canary", ErrConflict, cur, st.Version)
	}
	st.Phase, st.Stable, st.UpdatedAt = PhasePromoted, st.Version, m.cfg.Now()
	return st, m.l.writeState(st)
}

// Rollback switches back to the release the last canary replaced. If the
// schema moved since the pre-upgrade backup, it restores that backup, which
// loses every write since the upgrade: acceptDataLoss must be true then.
func (m *Manager) Rollback(ctx context.Context, acceptDataLoss bool) (State, error) {
	if err := m.needLive(); err != nil {
		return State{}, err
	}
	unlock, err := m.l.lock()
	if err != nil {
		return State{}, err
	}
	defer unlock()
	st, have, err := m.l.readState()
	if err != nil {
		return st, err
	}
	if !have || st.Phase == PhaseRolledBack {
		return st, fmt.Errorf("%w: no canary to roll back (see `qpcctl release status`); to run another release, run a canary of it", ErrConflict)
	}
	if !acceptDataLoss && !st.Shared {
		s, err := m.cfg.Admin.Status(ctx)
		if err != nil {
			return st, fmt.Errorf("%w: cannot read the schema version from qpcd: %w; start qpcd, or pass --accept-data-loss to restore the pre-upgrade backup %s if the schema moved", ErrDataLoss, err, st.Backup)
		}
		if s.SchemaVersion != st.SchemaBefore {
			return st, fmt.Errorf("%w: the schema moved from %d to %d, so %s cannot open the database; rolling back restores the pre-upgrade backup %s and LOSES EVERY WRITE SINCE %s; run again with --accept-data-loss to do it",
				ErrDataLoss, st.SchemaBefore, s.SchemaVersion, st.From, st.Backup, st.StartedAt.UTC().Format(time.RFC3339))
		}
	}
	st.Error = ""
	return m.rollback(ctx, st, acceptDataLoss)
}

// rollback switches `current` back to st.From (and `previous` to what it was
// before the canary), restarts qpcd and, if the schema moved, stops it,
// restores the pre-upgrade backup and starts it. auto allows the restore.
func (m *Manager) rollback(ctx context.Context, st State, allowRestore bool) (State, error) {
	schemaAfter := -1
	if s, err := m.cfg.Admin.Status(ctx); err == nil {
		schemaAfter = s.SchemaVersion
	}
	st.SchemaAfter = schemaAfter
	var oldStart float64
	if s, err := m.probe.scrape(ctx); err == nil {
		oldStart = s.StartTime
	}
	m.step("switching %s back to %s", CurrentLink, st.From)
	if err := m.l.setLink(CurrentLink, st.From); err != nil {
		return st, fmt.Errorf("%w: %w", ErrRollback, err)
	}
	if err := m.l.setLink(PreviousLink, st.PrevPrevious); err != nil {
		return st, fmt.Errorf("%w: %w", ErrRollback, err)
	}
	fail := func(err error) (State, error) {
		st.Error = strings.TrimPrefix(st.Error+"; rollback: "+err.Error(), "; ")
		st.UpdatedAt = m.cfg.Now()
		_ = m.l.writeState(st)
		return st, fmt.Errorf("%w: %w (current already points at %s; fix the cause and start qpcd with the service manager)", ErrRollback, err, st.From)
	}
	if st.Shared {
		// Never restore a database other nodes serve from: the old release
		// runs on the new schema as long as its steps are expand-only.
		m.step("restarting qpcd %s on the shared database (schema %d -> %d; left as it is)", st.From, st.SchemaBefore, schemaAfter)
		if err := m.cfg.Service.Restart(ctx); err != nil {
			return fail(err)
		}
		if _, err := m.waitUp(ctx, st.From, oldStart); err != nil {
			if schemaAfter != st.SchemaBefore {
				err = fmt.Errorf("%v; the schema moved (%d -> %d) and qpcd %s refuses it if a step is not expand-only (its log names the step): the shared database is not restored by a rollback; run %s on this node again (`qpcctl release canary` of it), or stop every node and restore the database with PostgreSQL's tools",
					err, st.SchemaBefore, schemaAfter, st.From, st.Version)
			}
			return fail(fmt.Errorf("qpcd %s did not come back: %v", st.From, err))
		}
	} else if schemaAfter == st.SchemaBefore {
		m.step("restarting qpcd %s (schema unchanged at %d)", st.From, schemaAfter)
		if err := m.cfg.Service.Restart(ctx); err != nil {
			return fail(err)
		}
	} else {
		m.step("stopping qpcd to check the schema")
		if err := m.cfg.Service.Stop(ctx); err != nil {
			return fail(err)
		}
		oldStart = 0
		if schemaAfter < 0 && m.cfg.OfflineSchema != nil {
			if v, err := m.cfg.OfflineSchema(ctx); err == nil {
				schemaAfter = v
				st.SchemaAfter = v
			}
		}
		if schemaAfter != st.SchemaBefore {
			if !allowRestore {
				return fail(fmt.Errorf("%w: the schema moved (%d -> %d); pass --accept-data-loss to restore %s", ErrDataLoss, st.SchemaBefore, schemaAfter, st.Backup))
			}
			m.step("schema moved (%d -> %d): restoring the pre-upgrade backup %s; writes since %s are lost", st.SchemaBefore, schemaAfter, st.Backup, st.StartedAt.UTC().Format(time.RFC3339))
			if err := m.restore(ctx, st.Backup); err != nil {
				return fail(err)
			}
			st.Restored = true
		}
		m.step("starting qpcd %s", st.From)
		if err := m.cfg.Service.Start(ctx); err != nil {
			return fail(err)
		}
	}
	if !st.Shared {
		if _, err := m.waitUp(ctx, st.From, oldStart); err != nil {
			return fail(fmt.Errorf("qpcd %s did not come back: %v", st.From, err))
		}
	}
	st.Phase, st.UpdatedAt = PhaseRolledBack, m.cfg.Now()
	if st.Stable == st.Version {
		st.Stable = st.From // a promoted release was rolled back
	}
	if err := m.l.writeState(st); err != nil {
		return st, err
	}
	m.step("rolled back: qpcd %s serves", st.From)
	return st, nil
}

// restore runs cfg.Restore, retrying while the stopping qpcd still holds
// the data directory's lock.
func (m *Manager) restore(ctx context.Context, backup string) error {
	deadline := m.cfg.Now().Add(m.cfg.StartTimeout)
	for {
		err := m.cfg.Restore(ctx, backup)
		if err == nil || !errors.Is(err, admin.ErrLocked) || !m.cfg.Now().Before(deadline) {
			return err
		}
		if err := m.cfg.Sleep(ctx, min(m.cfg.Poll, 250*time.Millisecond)); err != nil {
			return err
		}
	}
}

// Release is one installed release.
type Release struct {
	Version  string    `json:"version"`
	Path     string    `json:"path"`
	Current  bool      `json:"current"`
	Previous bool      `json:"previous"`
	Canary   bool      `json:"canary"` // under canary: baking, or passed and not yet promoted
	Stable   bool      `json:"stable"` // the last promoted release
	Modified time.Time `json:"installed_at"`
}

// List lists the installed releases.
func (m *Manager) List() ([]Release, error) {
	vs, err := m.l.versions()
	if err != nil {
		return nil, err
	}
	cur, err := m.l.link(CurrentLink)
	if err != nil {
		return nil, err
	}
	prev, err := m.l.link(PreviousLink)
	if err != nil {
		return nil, err
	}
	st, _, err := m.l.readState()
	if err != nil {
		return nil, err
	}
	out := make([]Release, 0, len(vs))
	for _, v := range vs {
		r := Release{Version: v, Path: m.l.binary(v), Current: v == cur, Previous: v == prev,
			Canary: v == st.Version && (st.Phase == PhaseBaking || st.Phase == PhasePassed), Stable: v == st.Stable}
		if fi, err := os.Stat(filepath.Dir(r.Path)); err == nil {
			r.Modified = fi.ModTime().UTC()
		}
		out = append(out, r)
	}
	return out, nil
}

// StatusReport is `release status`.
type StatusReport struct {
	ReleasesDir string    `json:"releases_dir"`
	Current     string    `json:"current"`
	Previous    string    `json:"previous"`
	Releases    []Release `json:"releases"`
	Canary      *State    `json:"canary,omitempty"`
	Running     string    `json:"running_version,omitempty"` // from qpcd_build_info
	Ready       bool      `json:"ready"`
	OpsError    string    `json:"ops_error,omitempty"`
}

// Status shows the releases, the links, the canary state and what runs.
func (m *Manager) Status(ctx context.Context) (StatusReport, error) {
	rep := StatusReport{ReleasesDir: m.cfg.ReleasesDir}
	var err error
	if rep.Releases, err = m.List(); err != nil {
		return rep, err
	}
	rep.Current, _ = m.l.link(CurrentLink)
	rep.Previous, _ = m.l.link(PreviousLink)
	if st, have, err := m.l.readState(); err == nil && have {
		rep.Canary = &st
	}
	s, err := m.probe.scrape(ctx)
	if err != nil {
		rep.OpsError = err.Error()
		return rep, nil
	}
	rep.Running = s.Version
	rep.Ready = m.probe.ready(ctx) == nil
	return rep, nil
}
