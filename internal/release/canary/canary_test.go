package canary

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/release"
)

func TestQuantileAndDelta(t *testing.T) {
	from := Sample{Requests: 10, Errors: 1, Count: 10, Buckets: map[float64]float64{0.01: 10, 1: 10, math.Inf(1): 10}}
	to := Sample{Requests: 210, Errors: 3, Count: 110, Buckets: map[float64]float64{0.01: 100, 1: 110, math.Inf(1): 110}}
	m := Delta(from, to)
	if m.Requests != 200 || m.Errors != 2 || m.ErrorRatio != 0.01 || m.Timed != 100 {
		t.Fatalf("delta = %+v", m)
	}
	// 90 of 100 within 10 ms, 10 in (10 ms, 1 s]: rank 99 is 9/10 into that bucket.
	if want := 0.01 + 0.99*0.9; math.Abs(m.P99Seconds-want) > 1e-9 {
		t.Fatalf("p99 = %v, want %v", m.P99Seconds, want)
	}
	// Everything above the highest finite bucket: its bound.
	if q := quantile(0.99, []float64{0.5, math.Inf(1)}, []float64{0, 10}, 10); q != 0.5 {
		t.Fatalf("quantile in +Inf bucket = %v, want 0.5", q)
	}
	none := Delta(to, to)
	if none.P99Seconds != -1 || none.ErrorRatio != 0 {
		t.Fatalf("no traffic: %+v", none)
	}
	th := Thresholds{MaxErrorRatio: 0.005, MaxP99: time.Second}
	if why := th.check(none); why != "" {
		t.Fatalf("no traffic fails: %s", why)
	}
	if why := th.check(Delta(from, to)); !strings.Contains(why, "error ratio") || strings.Contains(why, "p99") {
		t.Fatalf("check = %q", why)
	}
}

func TestParseMetricsCountsOnlyServerErrors(t *testing.T) {
	f := newFakeOps()
	f.set("1.0.0", 100, profile{ready: true})
	f.mu.Lock()
	f.ok, f.internal, f.invalid, f.fetchWait = 10, 3, 50, 7
	f.mu.Unlock()
	s, err := ParseMetrics(strings.NewReader(f.exposition()))
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != "1.0.0" || s.StartTime != 100 || s.Requests != 70 || s.Errors != 3 {
		t.Fatalf("sample = %+v", s)
	}
	if s.Count != 63 {
		t.Fatalf("timed = %v", s.Count)
	}
	if _, err := ParseMetrics(strings.NewReader("# nothing\n")); !errors.Is(err, ErrScrape) {
		t.Fatalf("no build info: %v", err)
	}
}

// profile is how a fake qpcd version behaves.
type profile struct {
	ready  bool
	schema int // the schema this version migrates to (0: leaves it)
	knows  int // the newest schema this version knows (0: any); on a newer one it refuses to start unless the steps are expand-only
	errors int // internal errors per scrape
	slow   int // RPCs of 2 s per scrape
}

// fakeOps is qpcd's ops listener, admin API and service manager in one:
// the service starts whatever `current` points at.
type fakeOps struct {
	mu                               sync.Mutex
	version                          string
	start                            float64
	prof                             profile
	running                          bool
	ok, internal, invalid, fetchWait int
	slow                             int
	schema                           int
	profiles                         map[string]profile
	calls                            []string
	restored                         string
	releases                         string
	backupErr                        error
	backend                          string       // "postgres": a cluster's shared database
	peers                            []admin.Node // the registry's other nodes
	contract                         bool         // the schema's newer steps are not expand-only
}

func newFakeOps() *fakeOps { return &fakeOps{profiles: map[string]profile{}, schema: 4} }

func (f *fakeOps) set(v string, start float64, p profile) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.version, f.start, f.prof, f.running = v, start, p, true
	f.ok, f.internal, f.invalid, f.fetchWait, f.slow = 0, 0, 0, 0, 0
	if p.schema != 0 {
		f.schema = p.schema
	}
}

func (f *fakeOps) exposition() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# TYPE qpcd_build_info gauge\nqpcd_build_info{commit=\"x\",goversion=\"go\",version=%q} 1\n", f.version)
	fmt.Fprintf(&b, "# TYPE qpcd_start_time_seconds gauge\nqpcd_start_time_seconds %g\n", f.start)
	fmt.Fprintf(&b, "# TYPE qpcd_rpc_requests_total counter\n")
	fmt.Fprintf(&b, "qpcd_rpc_requests_total{method=\"Enqueue\",status=\"ok\"} %d\n", f.ok+f.slow)
	fmt.Fprintf(&b, "qpcd_rpc_requests_total{method=\"Enqueue\",status=\"internal\"} %d\n", f.internal)
	fmt.Fprintf(&b, "qpcd_rpc_requests_total{method=\"Enqueue\",status=\"invalid_argument\"} %d\n", f.invalid)
	fmt.Fprintf(&b, "qpcd_rpc_requests_total{method=\"FetchWait\",status=\"ok\"} %d\n", f.fetchWait)
	fast := f.ok + f.internal + f.invalid
	fmt.Fprintf(&b, "# TYPE qpcd_rpc_duration_seconds histogram\n")
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_bucket{method=\"Enqueue\",le=\"0.01\"} %d\n", fast)
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_bucket{method=\"Enqueue\",le=\"2.5\"} %d\n", fast+f.slow)
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_bucket{method=\"Enqueue\",le=\"+Inf\"} %d\n", fast+f.slow)
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_sum{method=\"Enqueue\"} 1\nqpcd_rpc_duration_seconds_count{method=\"Enqueue\"} %d\n", fast+f.slow)
	// Long polls take their full wait; the gate leaves them out.
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_bucket{method=\"FetchWait\",le=\"0.01\"} 0\n")
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_bucket{method=\"FetchWait\",le=\"2.5\"} 0\n")
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_bucket{method=\"FetchWait\",le=\"+Inf\"} %d\n", f.fetchWait)
	fmt.Fprintf(&b, "qpcd_rpc_duration_seconds_sum{method=\"FetchWait\"} 1\nqpcd_rpc_duration_seconds_count{method=\"FetchWait\"} %d\n", f.fetchWait)
	return b.String()
}

func (f *fakeOps) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		http.Error(w, "down", http.StatusBadGateway)
		return
	}
	switch r.URL.Path {
	case "/readyz":
		if !f.prof.ready {
			http.Error(w, "not ready: fault", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	case "/metrics":
		// Traffic since the last scrape.
		f.ok += 200
		f.invalid += 20 // client mistakes: not errors
		f.fetchWait += 50
		f.internal += f.prof.errors
		f.slow += f.prof.slow
		_, _ = w.Write([]byte(f.exposition()))
	default:
		http.NotFound(w, r)
	}
}

// Service: start whatever `current` points at.
func (f *fakeOps) Name() string { return "fake" }
func (f *fakeOps) Restart(ctx context.Context) error {
	f.record("restart")
	return f.launch()
}
func (f *fakeOps) Stop(context.Context) error {
	f.record("stop")
	f.mu.Lock()
	f.running = false
	f.mu.Unlock()
	return nil
}
func (f *fakeOps) Start(context.Context) error {
	f.record("start")
	return f.launch()
}

func (f *fakeOps) launch() error {
	v, err := os.Readlink(filepath.Join(f.releases, CurrentLink))
	if err != nil {
		return err
	}
	f.mu.Lock()
	p, start := f.profiles[v], f.start+1
	refused := p.knows != 0 && f.schema > p.knows && f.contract
	if refused {
		f.running = false // exits at once: schema newer, step not expand-only
	}
	f.mu.Unlock()
	if !refused {
		f.set(v, start, p)
	}
	return nil
}

func (f *fakeOps) record(c string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
}

func (f *fakeOps) callList() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, ",")
}

// Admin.
func (f *fakeOps) Status(context.Context) (admin.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return admin.Status{}, admin.ErrNotRunning
	}
	nodes := append([]admin.Node{{ID: "self", Version: f.version, State: "running", Self: true}}, f.peers...)
	return admin.Status{Version: f.version, SchemaVersion: f.schema, Backend: f.backend, NodeID: "self", Nodes: nodes}, nil
}

func (f *fakeOps) Backup(_ context.Context, out string, _ bool, _ func(int64, int64)) (admin.BackupResult, error) {
	f.record("backup")
	if f.backupErr != nil {
		return admin.BackupResult{}, f.backupErr
	}
	f.mu.Lock()
	schema := f.schema
	f.mu.Unlock()
	return admin.BackupResult{File: out}, os.WriteFile(out, []byte(fmt.Sprint(schema)), 0o600)
}

func (f *fakeOps) restore(_ context.Context, backup string) error {
	f.record("restore")
	b, err := os.ReadFile(backup)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running {
		return fmt.Errorf("%w: qpcd runs", admin.ErrLocked)
	}
	_, err = fmt.Sscan(string(b), &f.schema)
	f.restored = backup
	return err
}

// fakeClock advances only when the manager sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

type rig struct {
	t       *testing.T
	dir     string
	f       *fakeOps
	m       *Manager
	pubFile string
	key     release.SigningKey
}

// newRig installs 1.0.0 as current and runs it; artifacts are shell
// scripts answering `version` like qpcd, signed with a throwaway key.
func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	key, pub, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	txt, err := pub.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, dir: dir, f: newFakeOps(), pubFile: filepath.Join(dir, "minisign.pub"), key: key}
	if err := os.WriteFile(r.pubFile, txt, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.f)
	t.Cleanup(srv.Close)
	clock := &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	data := filepath.Join(dir, "data")
	r.f.releases = filepath.Join(data, "releases")
	r.m, err = New(Config{
		DataDir: data, PublicKey: r.pubFile, Service: r.f, Admin: r.f, Restore: r.f.restore,
		OpsURL: srv.URL, Bake: time.Minute, Poll: 5 * time.Second, StartTimeout: 30 * time.Second,
		Thresholds: Thresholds{MaxErrorRatio: 0.01, MaxP99: 500 * time.Millisecond},
		Now:        clock.Now, Sleep: clock.Sleep,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.f.profiles["1.0.0"] = profile{ready: true}
	inst, made, err := r.m.Install(context.Background(), r.artifact("1.0.0"), "")
	if err != nil || !made || inst.Version != "1.0.0" {
		t.Fatalf("install 1.0.0: %+v %v %v", inst, made, err)
	}
	if err := r.f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.f.calls = nil
	return r
}

func (r *rig) artifact(version string) string {
	r.t.Helper()
	p := filepath.Join(r.dir, "qpcd_"+version)
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'qpcd "+version+" (commit test)'\n"), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if _, err := release.SignFile(r.key, p, 1); err != nil {
		r.t.Fatal(err)
	}
	return p
}

func (r *rig) link(name string) string {
	v, _ := r.m.l.link(name)
	return v
}

// A release that migrates the schema and then fails the error-ratio gate:
// the canary stops qpcd, restores the pre-upgrade backup and starts the old
// release.
func TestCanarySchemaMovedRestoresBackup(t *testing.T) {
	r := newRig(t)
	r.f.profiles["2.0.0"] = profile{ready: true, schema: 5, errors: 30}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if !errors.Is(err, ErrGate) {
		t.Fatalf("canary: %v, want ErrGate", err)
	}
	if !strings.Contains(rep.Gate.Reason, "error ratio") || rep.Gate.Passed || !rep.RolledBack || !rep.Restored {
		t.Fatalf("report: %+v", rep)
	}
	if rep.SchemaBefore != 4 || rep.SchemaAfter != 5 {
		t.Fatalf("schema %d -> %d, want 4 -> 5", rep.SchemaBefore, rep.SchemaAfter)
	}
	if got, want := r.f.callList(), "backup,restart,stop,restore,start"; got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
	if r.f.restored != rep.Backup || r.f.schema != 4 || r.f.version != "1.0.0" {
		t.Fatalf("restored %q (backup %q), schema %d, running %s", r.f.restored, rep.Backup, r.f.schema, r.f.version)
	}
	if r.link(CurrentLink) != "1.0.0" || r.link(PreviousLink) != "" {
		t.Fatalf("current %q previous %q", r.link(CurrentLink), r.link(PreviousLink))
	}
	st, _, err := r.m.l.readState()
	if err != nil || st.Phase != PhaseRolledBack || !st.Restored || st.Gate == nil {
		t.Fatalf("state %+v %v", st, err)
	}
}

// Slow RPCs fail the p99 gate; the schema did not move, so only the binary
// goes back (restart, no restore).
func TestCanaryP99GateRollsBackBinaryOnly(t *testing.T) {
	r := newRig(t)
	r.f.profiles["2.0.0"] = profile{ready: true, slow: 10}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if !errors.Is(err, ErrGate) || !strings.Contains(rep.Gate.Reason, "p99") || rep.Restored || !rep.RolledBack {
		t.Fatalf("canary: %v, report %+v", err, rep)
	}
	if got, want := r.f.callList(), "backup,restart,restart"; got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
	if r.f.version != "1.0.0" || r.link(CurrentLink) != "1.0.0" {
		t.Fatalf("running %s, current %s", r.f.version, r.link(CurrentLink))
	}
}

// A healthy release passes, is promoted, and can still be rolled back once;
// a manual rollback across a schema change needs --accept-data-loss.
func TestCanaryPassPromoteRollback(t *testing.T) {
	r := newRig(t)
	r.f.profiles["2.0.0"] = profile{ready: true}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if err != nil || !rep.Gate.Passed || rep.Gate.Polls == 0 || rep.Gate.Requests == 0 || rep.Gate.P99Seconds < 0 {
		t.Fatalf("canary: %v, report %+v", err, rep)
	}
	if rep.Gate.Errors != 0 || rep.Gate.P99Seconds > 0.01 {
		t.Fatalf("client errors or long polls counted: %+v", rep.Gate)
	}
	if r.link(CurrentLink) != "2.0.0" || r.link(PreviousLink) != "1.0.0" {
		t.Fatalf("current %q previous %q", r.link(CurrentLink), r.link(PreviousLink))
	}
	// A second canary must wait for promote or rollback.
	r.f.profiles["3.0.0"] = profile{ready: true}
	if _, err := r.m.Canary(context.Background(), r.artifact("3.0.0"), ""); !errors.Is(err, ErrConflict) {
		t.Fatalf("second canary: %v, want ErrConflict", err)
	}
	st, err := r.m.Promote(context.Background())
	if err != nil || st.Phase != PhasePromoted || st.Stable != "2.0.0" {
		t.Fatalf("promote: %+v %v", st, err)
	}
	if _, err := r.m.Promote(context.Background()); !errors.Is(err, ErrConflict) {
		t.Fatalf("second promote: %v", err)
	}

	// The schema moved under 2.0.0 meanwhile: rollback refuses without consent.
	r.f.mu.Lock()
	r.f.schema = 5
	r.f.mu.Unlock()
	if _, err := r.m.Rollback(context.Background(), false); !errors.Is(err, ErrDataLoss) || !strings.Contains(err.Error(), "--accept-data-loss") {
		t.Fatalf("rollback without consent: %v", err)
	}
	if r.link(CurrentLink) != "2.0.0" {
		t.Fatal("refused rollback switched the link")
	}
	st, err = r.m.Rollback(context.Background(), true)
	if err != nil || st.Phase != PhaseRolledBack || !st.Restored || r.f.version != "1.0.0" || r.f.schema != 4 {
		t.Fatalf("rollback: %+v %v (running %s schema %d)", st, err, r.f.version, r.f.schema)
	}
	list, err := r.m.List()
	if err != nil || len(list) != 2 || !list[0].Current || !list[0].Stable || list[1].Stable {
		t.Fatalf("list: %+v %v", list, err)
	}
}

// Nothing is switched when the signature does not verify or the backup fails.
func TestCanaryRefusesBeforeSwitching(t *testing.T) {
	r := newRig(t)
	a := r.artifact("2.0.0")
	if err := os.WriteFile(a, []byte("#!/bin/sh\necho 'qpcd 2.0.0 (evil)'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := r.m.Canary(context.Background(), a, "")
	if !errors.Is(err, ErrVerify) || !errors.Is(err, release.ErrFileTampered) {
		t.Fatalf("tampered: %v", err)
	}
	r.f.backupErr = errors.New("disk full")
	if _, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), ""); !errors.Is(err, ErrBackup) {
		t.Fatalf("backup failure: %v", err)
	}
	if r.link(CurrentLink) != "1.0.0" || r.link(PreviousLink) != "" || r.f.callList() != "backup" {
		t.Fatalf("switched anyway: current %q previous %q calls %s", r.link(CurrentLink), r.link(PreviousLink), r.f.callList())
	}
	ents, _ := os.ReadDir(r.m.ReleasesDir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".staging-") || strings.HasSuffix(e.Name(), ".tmp-link") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// A release that never turns ready fails within the start timeout.
func TestCanaryNeverReady(t *testing.T) {
	r := newRig(t)
	r.f.profiles["2.0.0-fail"] = profile{ready: false}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0-fail"), "")
	if !errors.Is(err, ErrGate) || rep.Gate.Ready || !strings.Contains(rep.Gate.Reason, "not ready") || !rep.RolledBack {
		t.Fatalf("canary: %v, report %+v", err, rep)
	}
}

// Ctrl-C during the bake (the context cancelled) still rolls back.
func TestCanaryInterruptedRollsBack(t *testing.T) {
	r := newRig(t)
	r.f.profiles["2.0.0"] = profile{ready: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sleep, n := r.m.cfg.Sleep, 0
	r.m.cfg.Sleep = func(c context.Context, d time.Duration) error {
		if n++; n == 3 {
			cancel()
		}
		return sleep(c, d)
	}
	rep, err := r.m.Canary(ctx, r.artifact("2.0.0"), "")
	if !errors.Is(err, ErrGate) || !strings.Contains(rep.Gate.Reason, "interrupted") || !rep.RolledBack {
		t.Fatalf("canary: %v, report %+v", err, rep)
	}
	if r.f.version != "1.0.0" || r.link(CurrentLink) != "1.0.0" {
		t.Fatalf("running %s, current %s", r.f.version, r.link(CurrentLink))
	}
}

// Two release commands never run at once.
func TestReleaseLock(t *testing.T) {
	r := newRig(t)
	unlock, err := r.m.l.lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Promote(context.Background()); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "another qpcctl release command") {
		t.Fatalf("promote while locked: %v", err)
	}
	unlock()
	if _, err := r.m.Promote(context.Background()); err == nil || strings.Contains(err.Error(), "another qpcctl") {
		t.Fatalf("promote after unlock: %v", err)
	}
}

// clusterRig is a rig whose qpcd is one node of three on PostgreSQL.
func clusterRig(t *testing.T) *rig {
	r := newRig(t)
	r.f.backend = "postgres"
	r.f.peers = []admin.Node{
		{ID: "b", Address: "10.0.0.2:7443", Version: "1.0.0", State: "running"},
		{ID: "c", Address: "10.0.0.3:7443", Version: "1.0.0", State: "stale"},
		{ID: "old", Address: "10.0.0.9:7443", Version: "0.9.0", State: "stopped"},
	}
	r.f.profiles["1.0.0"] = profile{ready: true, knows: 4}
	return r
}

// On a cluster a failed canary that migrated the shared database (an
// expand-only step) rolls back the binary only: no backup was taken, the
// database is not stopped for, nor restored, and the old release serves on
// the migrated schema.
func TestCanaryClusterRollsBackBinaryOnly(t *testing.T) {
	r := clusterRig(t)
	r.f.profiles["2.0.0"] = profile{ready: true, schema: 5, errors: 30}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if !errors.Is(err, ErrGate) {
		t.Fatalf("canary: %v, want ErrGate", err)
	}
	if !rep.Shared || len(rep.Peers) != 2 || rep.Peers[0].ID != "b" || rep.Peers[1].State != "stale" {
		t.Fatalf("cluster in the report: shared %v, peers %+v", rep.Shared, rep.Peers)
	}
	if rep.Backup != "" || !rep.RolledBack || rep.Restored || rep.SchemaAfter != 5 {
		t.Fatalf("report: %+v", rep)
	}
	if calls := r.f.callList(); calls != "restart,restart" {
		t.Fatalf("calls %q, want restart,restart (no backup, stop or restore)", calls)
	}
	if r.link(CurrentLink) != "1.0.0" || r.f.version != "1.0.0" || !r.f.running || r.f.schema != 5 {
		t.Fatalf("after rollback: current %s, running %s (%v), schema %d", r.link(CurrentLink), r.f.version, r.f.running, r.f.schema)
	}
	st, _, _ := r.m.l.readState()
	if !st.Shared || len(st.Peers) != 2 || st.Phase != PhaseRolledBack {
		t.Fatalf("canary.json: %+v", st)
	}
}

// If a step was not expand-only, the old release refuses the shared
// database: the rollback says so and restores nothing.
func TestCanaryClusterContractStepIsNotRestored(t *testing.T) {
	r := clusterRig(t)
	r.f.contract = true
	r.f.profiles["2.0.0"] = profile{ready: true, schema: 5, errors: 30}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if !errors.Is(err, ErrGate) || !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "not expand-only") ||
		!strings.Contains(err.Error(), "not restored") {
		t.Fatalf("canary: %v, want ErrGate and ErrRollback explaining the contract step", err)
	}
	if rep.RolledBack || rep.Restored || strings.Contains(r.f.callList(), "restore") || strings.Contains(r.f.callList(), "backup") {
		t.Fatalf("report %+v, calls %s", rep, r.f.callList())
	}
}

// A manual rollback after a passing canary on a cluster needs no
// --accept-data-loss although the schema moved: nothing is restored.
func TestCanaryClusterPassThenRollback(t *testing.T) {
	r := clusterRig(t)
	r.f.profiles["2.0.0"] = profile{ready: true, schema: 5}
	rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if err != nil || !rep.Gate.Passed || !rep.Shared {
		t.Fatalf("canary: %v %+v", err, rep)
	}
	st, err := r.m.Rollback(context.Background(), false)
	if err != nil || st.Restored || st.Phase != PhaseRolledBack || r.f.version != "1.0.0" || r.f.schema != 5 {
		t.Fatalf("rollback: %v %+v (running %s, schema %d)", err, st, r.f.version, r.f.schema)
	}
}

// A node of a third version (a rolling upgrade left half done) stops the
// canary before anything is switched.
func TestCanaryClusterRefusesThirdVersion(t *testing.T) {
	r := clusterRig(t)
	r.f.peers[0].Version = "0.9.0"
	r.f.profiles["2.0.0"] = profile{ready: true}
	_, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), "")
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "node b") {
		t.Fatalf("canary: %v, want ErrConflict naming node b", err)
	}
	if r.link(CurrentLink) != "1.0.0" || r.f.callList() != "" {
		t.Fatalf("switched anyway: current %s, calls %q", r.link(CurrentLink), r.f.callList())
	}
	// One of the two versions of the upgrade is fine: node b already runs 2.0.0.
	r.f.peers[0].Version = "2.0.0"
	if rep, err := r.m.Canary(context.Background(), r.artifact("2.0.0"), ""); err != nil || !rep.Gate.Passed {
		t.Fatalf("canary beside a node already on 2.0.0: %v", err)
	}
}
