package chaos

import (
	"context"
	"encoding/csv"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/store"
)

// soakSample is one row of the soak CSV.
type soakSample struct {
	at                time.Duration // since the start
	rss, dbBytes, wal int64
	goroutines, fds   float64
	ops, errs         int64
	p50, p99          time.Duration // latency of the workload's operations in the interval (client side)
	rpcMean           time.Duration // qpcd's mean RPC handling time in the interval (server side)
	retentionInForce  bool
}

var soakHeader = []string{"t_s", "rss_bytes", "goroutines", "open_fds", "db_bytes", "wal_bytes", "ops", "errors", "latency_p50_ms", "latency_p99_ms", "retention_in_force", "rpc_mean_ms"}

func (s soakSample) record() []string {
	return []string{
		strconv.FormatFloat(s.at.Seconds(), 'f', 1, 64), strconv.FormatInt(s.rss, 10), strconv.FormatFloat(s.goroutines, 'f', 0, 64),
		strconv.FormatFloat(s.fds, 'f', 0, 64), strconv.FormatInt(s.dbBytes, 10), strconv.FormatInt(s.wal, 10),
		strconv.FormatInt(s.ops, 10), strconv.FormatInt(s.errs, 10),
		strconv.FormatFloat(float64(s.p50.Microseconds())/1000, 'f', 2, 64), strconv.FormatFloat(float64(s.p99.Microseconds())/1000, 'f', 2, 64),
		strconv.FormatBool(s.retentionInForce),
		strconv.FormatFloat(float64(s.rpcMean.Microseconds())/1000, 'f', 3, 64),
	}
}

// slope is the least-squares slope of ys over xs (units of y per unit of x).
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if len(xs) < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// trendLimit is the stated bound on a soak series' upward slope per minute:
// the larger of an absolute floor and a fraction of the series' mean.
// A short window's fit is noisy, so a rise of `noise` over the whole
// window is always allowed: the limit is the largest of floor per minute,
// fraction of the mean per minute, and noise over the window's length.
type trendLimit struct {
	name     string
	value    func(soakSample) float64
	floor    float64 // per minute, in the series' unit
	fraction float64 // of the mean, per minute
	noise    float64 // over the window, in the series' unit
	unit     string
}

var soakLimits = []trendLimit{
	{"RSS", func(s soakSample) float64 { return float64(s.rss) }, 1 << 20, 0.02, 4 << 20, "B"},
	{"goroutines", func(s soakSample) float64 { return s.goroutines }, 1, 0.02, 3, ""},
	{"open fds", func(s soakSample) float64 { return s.fds }, 0.5, 0, 2, ""},
	{"database size", func(s soakSample) float64 { return float64(s.dbBytes) }, 256 << 10, 0.02, 512 << 10, "B"},
	{"WAL size", func(s soakSample) float64 { return float64(s.wal) }, 256 << 10, 0.02, 512 << 10, "B"},
	// qpcd's own handling time: the client operations' latency also grows
	// with the clients' local state (they keep every message) and with
	// the machine's load, so it is recorded but not judged.
	{"RPC latency (server mean)", func(s soakSample) float64 { return float64(s.rpcMean.Microseconds()) / 1000 }, 0.5, 0.05, 1, "ms"},
}

// checkTrends applies soakLimits over the second half of the samples taken
// with retention in force; it returns one line per series and the
// failures.
func checkTrends(samples []soakSample) (report []string, failures []string) {
	var inForce []soakSample
	for _, s := range samples {
		if s.retentionInForce {
			inForce = append(inForce, s)
		}
	}
	half := inForce[len(inForce)/2:]
	if len(half) < 4 {
		return nil, []string{fmt.Sprintf("only %d samples in the second half with retention in force; run longer", len(half))}
	}
	xs := make([]float64, len(half))
	for i, s := range half {
		xs[i] = s.at.Minutes()
	}
	for _, l := range soakLimits {
		ys := make([]float64, len(half))
		var mean float64
		for i, s := range half {
			ys[i] = l.value(s)
			mean += ys[i] / float64(len(half))
		}
		k := slope(xs, ys)
		window := xs[len(xs)-1] - xs[0]
		limit := math.Max(math.Max(l.floor, l.fraction*mean), l.noise/window)
		line := fmt.Sprintf("%s: mean %.4g%s, slope %+.4g%s/min, limit %.4g%s/min", l.name, mean, l.unit, k, l.unit, limit, l.unit)
		report = append(report, line)
		if k > limit {
			failures = append(failures, line)
		}
	}
	return report, failures
}

func TestSoakTrendCheck(t *testing.T) {
	mk := func(n int, f func(i int) soakSample) []soakSample {
		out := make([]soakSample, n)
		for i := range out {
			out[i] = f(i)
			out[i].at = time.Duration(i) * 5 * time.Second
			out[i].retentionInForce = i >= n/4
		}
		return out
	}
	flat := mk(120, func(i int) soakSample {
		return soakSample{rss: 40<<20 + int64(i%7)<<18, goroutines: 30 + float64(i%3), fds: 20, dbBytes: 8 << 20, wal: 4 << 20, rpcMean: 2 * time.Millisecond}
	})
	if _, fails := checkTrends(flat); len(fails) != 0 {
		t.Fatalf("flat series flagged: %v", fails)
	}
	leaky := mk(120, func(i int) soakSample {
		return soakSample{rss: 40<<20 + int64(i)<<19, goroutines: 30 + float64(i)/2, fds: 20, dbBytes: 8 << 20, wal: 4 << 20, rpcMean: 2 * time.Millisecond}
	})
	_, fails := checkTrends(leaky)
	if len(fails) != 2 {
		t.Fatalf("a 6 MiB/min RSS and 6/min goroutine leak: flagged %v", fails)
	}
	if got := slope([]float64{0, 1, 2, 3}, []float64{1, 3, 5, 7}); got != 2 {
		t.Fatalf("slope of y = 2x + 1: %v", got)
	}
}

// latencies collects operation latencies between samples.
type latencies struct {
	mu     sync.Mutex
	d      []time.Duration
	errs   int64
	byOp   map[string]int64  // failures per operation, whole run
	firstE map[string]string // first failure per operation
}

func (l *latencies) add(op string, d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs++
		if l.byOp == nil {
			l.byOp, l.firstE = map[string]int64{}, map[string]string{}
		}
		if l.byOp[op]++; l.byOp[op] == 1 {
			l.firstE[op] = err.Error()
		}
		return
	}
	l.d = append(l.d, d)
}

func (l *latencies) take() (ops, errs int64, p50, p99 time.Duration) {
	l.mu.Lock()
	d, e := l.d, l.errs
	l.d, l.errs = nil, 0
	l.mu.Unlock()
	if len(d) == 0 {
		return 0, e, 0, 0
	}
	slices.Sort(d)
	return int64(len(d)), e, d[len(d)/2], d[len(d)*99/100]
}

// Soak: a steady mixed workload through the client SDK with real MLS
// (group commits, application messages, joins by Welcome, KeyPackage
// uploads and fetches, DMs, logins and token refreshes) against one qpcd,
// sampled into a CSV; fails if a resource trends upward beyond its stated
// slope (soakLimits) over the second half of the run with retention in force.
// Runs only with QPC_SOAK_DURATION set (make soak DURATION=10m).
func TestSoak(t *testing.T) {
	durEnv := os.Getenv("QPC_SOAK_DURATION")
	if durEnv == "" {
		t.Skip("set QPC_SOAK_DURATION (make soak DURATION=10m)")
	}
	duration, err := time.ParseDuration(durEnv)
	if err != nil || duration < 5*time.Minute {
		t.Fatalf("QPC_SOAK_DURATION=%q: want a duration of at least 5m (a shorter run's second half is too short to fit a trend)", durEnv)
	}
	forEachBackend(t, func(t *testing.T, backend string) { soak(t, backend, duration) })
}

func soak(t *testing.T, backend string, duration time.Duration) {
	// Retention short enough to be in force for most of the run: messages
	// expire after `retention`, swept every 30 s.
	retention := min(time.Minute, duration/4)
	interval := min(5*time.Second, max(2*time.Second, duration/120))
	// The churn invites user3, fetching its KeyPackages, every few seconds:
	// above the hourly invitation and KeyPackage fetch limits (5 fetches
	// per pair an hour held the churn to a handful of cycles).
	n := newNode(t, backend, "QPC_RETENTION_MESSAGES="+retention.String(), "QPC_AUTH_ACCESS_TOKEN_TTL=1m",
		"QPC_LIMITS_LONG_POLL_MAX=5s", "QPC_INVITATIONS_MAX_PER_HOUR=100000",
		"QPC_KEYPACKAGES_FETCH_PER_PAIR=100000", "QPC_KEYPACKAGES_FETCH_PER_TARGET=100000")
	n.start()
	csvPath := os.Getenv("QPC_SOAK_CSV")
	if csvPath == "" {
		csvPath = filepath.Join(t.TempDir(), "soak.csv")
	} else {
		csvPath = fmt.Sprintf("%s-%s.csv", csvPath, backend)
	}
	f, err := os.Create(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write(soakHeader)

	const users = 6
	names := make([]string, users)
	cs := make([]*client.Client, users)
	for i := range cs {
		names[i] = fmt.Sprintf("user%d", i)
		cs[i] = sdkClient(t, n.listen, n.pin, names[i])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Two steady groups of three, one DM per neighbour pair, and a "churn"
	// group that user0 keeps adding a member to and removing it from.
	must(cs[0].CreateGroup(ctx, "g0"))
	must(cs[0].AddMembers(ctx, "g0", names[1:3]))
	must(cs[3].CreateGroup(ctx, "g1"))
	must(cs[3].AddMembers(ctx, "g1", names[4:6]))
	must(cs[0].CreateGroup(ctx, "churn"))
	// Joining is by consent: the invited accept (groups, then DMs).
	for _, c := range cs {
		_, err := acceptAll(ctx, c)
		must(err)
		_, err = c.Sync(ctx, 0)
		must(err)
	}
	dms := make([]string, users)
	for i := range cs {
		dms[i], err = cs[i].DM(ctx, names[(i+1)%users])
		must(err)
	}
	for _, c := range cs {
		_, err := acceptAll(ctx, c)
		must(err)
		_, err = c.Sync(ctx, 0)
		must(err)
	}
	// Joined members see a group under a local name until a message names
	// it: the creators send one, everyone processes it, then each member's
	// group names are read from its list.
	_, err = cs[0].Send(ctx, "g0", "hello g0", "")
	must(err)
	_, err = cs[3].Send(ctx, "g1", "hello g1", "")
	must(err)
	for _, c := range cs {
		_, err := c.Sync(ctx, 0)
		must(err)
	}
	groupsOf := make([][]string, users)
	for i, c := range cs {
		gs, err := c.Groups(ctx)
		must(err)
		var mine []string
		for _, g := range gs {
			if g.Kind == "group" && g.Name != "churn" && g.Status == "active" {
				mine = append(mine, g.Name)
			}
		}
		if len(mine) == 0 {
			t.Fatalf("%s is in no group: %v", names[i], gs)
		}
		groupsOf[i] = mine
	}

	lat := &latencies{}
	timed := func(op string, f func() error) {
		start := time.Now()
		err := f()
		if ctx.Err() != nil {
			return // the run ended under it
		}
		lat.add(op, time.Since(start), err)
	}
	var wg sync.WaitGroup
	var sent, churns, logins atomic.Int64
	// Each user: send to a group and its DM, sync (which processes
	// Welcomes and commits and keeps KeyPackages stocked), now and then log in again.
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(i), 24))
			for k := 0; ctx.Err() == nil; k++ {
				g := groupsOf[i][rng.IntN(len(groupsOf[i]))]
				timed("send", func() error { _, err := c.Send(ctx, g, fmt.Sprintf("msg %d", k), ""); return err })
				timed("dm", func() error { _, err := c.Send(ctx, dms[i], fmt.Sprintf("dm %d", k), ""); return err })
				sent.Add(2)
				timed("sync", func() error { _, err := c.Sync(ctx, 0); return err })
				if k%50 == 49 {
					timed("login", func() error { return c.Login(ctx) })
					timed("keypackages", func() error { _, err := c.KeyPackageUpkeep(ctx); return err })
					logins.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(200+rng.IntN(200)) * time.Millisecond): // a steady rate, not a flood
				}
			}
		}()
	}
	// Churn: user0 invites user3 to "churn" (KeyPackage fetch, commit,
	// Welcome held), user3 accepts and joins by the Welcome, then user0
	// removes it (server first, then the commit).
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			timed("add", func() error { return cs[0].AddMembers(ctx, "churn", []string{names[3]}) })
			timed("join", func() error { _, err := acceptAll(ctx, cs[3]); return err })
			timed("remove", func() error { return cs[0].RemoveMember(ctx, "churn", names[3]) })
			churns.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(3 * time.Second):
			}
		}
	}()

	start := time.Now()
	inForceAt := retention + 45*time.Second // expiry plus a sweep interval and a margin
	var samples []soakSample
	var prevSum, prevCount float64
	for time.Since(start) < duration {
		time.Sleep(interval) // the sampling period
		m, err := n.metrics()
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		s := soakSample{at: time.Since(start), goroutines: m["go_goroutines"], fds: m["process_open_fds"],
			dbBytes: int64(m["qpcd_db_size_bytes"]), retentionInForce: time.Since(start) >= inForceAt}
		if s.rss, err = rssOf(n.pid()); err != nil {
			t.Fatal(err)
		}
		if backend == store.BackendSQLCipher {
			if st, err := os.Stat(filepath.Join(n.dataDir, "qpcd.db-wal")); err == nil {
				s.wal = st.Size()
			}
			if st, err := os.Stat(filepath.Join(n.dataDir, "qpcd.db")); err == nil {
				s.dbBytes = st.Size()
			}
		}
		s.ops, s.errs, s.p50, s.p99 = lat.take()
		sum, count := m["qpcd_rpc_duration_seconds_sum"], m["qpcd_rpc_duration_seconds_count"]
		if count > prevCount {
			s.rpcMean = time.Duration((sum - prevSum) / (count - prevCount) * float64(time.Second))
		}
		prevSum, prevCount = sum, count
		samples = append(samples, s)
		_ = w.Write(s.record())
		w.Flush()
	}
	cancel()
	wg.Wait()
	var totalErrs, totalOps int64
	for _, s := range samples {
		totalErrs += s.errs
		totalOps += s.ops
	}
	report, failures := checkTrends(samples)
	summary(t, "%s over %s: %d samples every %s into %s; %d operations (%d failed), %d messages sent, %d add/remove cycles, %d re-logins; retention %s",
		backend, duration, len(samples), interval, csvPath, totalOps, totalErrs, sent.Load(), churns.Load(), logins.Load(), retention)
	for _, line := range report {
		summary(t, "  %s", line)
	}
	for op, c := range lat.byOp {
		summary(t, "  %s failed %d times, first: %s", op, c, lat.firstE[op])
	}
	if totalErrs*100 > totalOps {
		t.Errorf("%d of %d operations failed (more than 1%%)", totalErrs, totalOps)
	}
	for _, f := range failures {
		t.Errorf("trends upward: %s", f)
	}
}
