// Package ops_test checks the ops bundle: promtool on the Prometheus
// configuration and rules (syntax, unit tests), promlint on qpcd's metrics,
// runbook links, and a live run: qpcd and a real Prometheus on loopback,
// traffic, then every dashboard query and every alert expression must find
// series, so no panel stays empty and no alert is dead for a misspelled
// metric or label.
package ops_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

const (
	rulesFile     = "alerts/qpcd.rules.yml"
	rulesTestFile = "alerts/qpcd.rules.test.yml"
	rulesSlowTest = "alerts/qpcd.rules.slow.test.yml"
	promConfig    = "prometheus/prometheus.yml"
	dashboardFile = "grafana/qpcd.json"
)

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install Debian's prometheus package (make deps-test does)", name)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtoolCheckConfig(t *testing.T) { runTool(t, "promtool", "check", "config", promConfig) }

func TestPromtoolCheckRules(t *testing.T) { runTool(t, "promtool", "check", "rules", rulesFile) }

func TestPromtoolTestRules(t *testing.T) {
	runTool(t, "promtool", "test", "rules", rulesTestFile, rulesSlowTest)
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// TestAlertsComplete: every alert has severity, summary, description and a
// runbook link to an existing file in docs/runbooks/, and a firing and a
// quiet case in the promtool unit tests.
func TestAlertsComplete(t *testing.T) {
	var tests []byte
	for _, f := range []string{rulesTestFile, rulesSlowTest} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		tests = append(tests, b...)
	}
	const prefix = "https://github.com/quicprochat/quicprochat/blob/main/"
	n := 0
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			continue
		}
		n++
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q", r.Alert, s)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if r.Annotations[a] == "" {
				t.Errorf("%s: no %s", r.Alert, a)
			}
		}
		link := r.Annotations["runbook_url"]
		if !strings.HasPrefix(link, prefix+"docs/runbooks/") {
			t.Errorf("%s: runbook %q is not in docs/runbooks/", r.Alert, link)
		} else if _, err := os.Stat(filepath.Join("..", strings.TrimPrefix(link, prefix))); err != nil {
			t.Errorf("%s: runbook %s: %v", r.Alert, link, err)
		}
		for _, c := range []string{"fires", "stays quiet"} {
			if !bytes.Contains(tests, []byte(fmt.Sprintf(`"name": "%s %s"`, r.Alert, c))) {
				t.Errorf("%s: no %q case in %s or %s", r.Alert, c, rulesTestFile, rulesSlowTest)
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d alerts", n)
	}
}

// selector is one vector selector of a PromQL expression.
type selector struct {
	metric string
	labels []string // label names used in matchers
}

var (
	reDropGroups = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reDropRanges = regexp.MustCompile(`\[[^\]]*\]`)
	reDropString = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	reSelector   = regexp.MustCompile(`(^|[^a-zA-Z0-9_:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?`)
	reMatcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	keywords     = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
)

// selectors lists the vector selectors of a PromQL expression: names not
// followed by "(" (functions, aggregations) and not keywords, with the
// label names of their matchers.
func selectors(expr string) []selector {
	// Keep matchers (with strings) but remove grouping clauses and ranges.
	e := reDropGroups.ReplaceAllString(expr, " ")
	e = reDropRanges.ReplaceAllString(e, " ")
	// A match consumes the character before a name and a call's "(": keep
	// a separator after every "(" so the next name still has one.
	e = strings.ReplaceAll(e, "(", "( ")
	var out []selector
	for _, m := range reSelector.FindAllStringSubmatch(e, -1) {
		name, matchers, call := m[2], m[3], m[4]
		if call != "" || keywords[strings.ToLower(name)] {
			continue
		}
		s := selector{metric: name}
		for _, lm := range reMatcher.FindAllStringSubmatch(reDropString.ReplaceAllString(matchers, `""`), -1) {
			s.labels = append(s.labels, lm[1])
		}
		out = append(out, s)
	}
	return out
}

func TestSelectors(t *testing.T) {
	got := selectors(`sum by (job, instance) (rate(qpcd_x_total{job="qpcd",status=~"a|b"}[5m])) > 3 * up{job="qpcd"} and on (instance) qpcd:y:ratio_rate5m > 1e6`)
	want := "qpcd_x_total[job status] up[job] qpcd:y:ratio_rate5m[]"
	var b []string
	for _, s := range got {
		b = append(b, fmt.Sprintf("%s%v", s.metric, s.labels))
	}
	if strings.Join(b, " ") != want {
		t.Fatalf("selectors = %v, want %s", b, want)
	}
}

// TestLiveDashboardAndAlerts runs qpcd and Prometheus (with the shipped rule
// file) on loopback, drives traffic, and checks that every dashboard query
// returns series, every metric and label an alert or recording rule uses
// exists, every recording rule produces series, and qpcd's metrics pass promlint.
func TestLiveDashboardAndAlerts(t *testing.T) {
	prom := tool(t, "prometheus")
	dir := t.TempDir()

	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	cfg.Limits.RateLimit = 100000
	cfg.Limits.RateBurst = 100000
	cfg.Limits.DrainTimeout = time.Second
	cfg.Admin.Socket = filepath.Join(shortTemp(t), "a.sock")
	// On the PostgreSQL backend, so that the backend's own metrics
	// (qpcd_db_up, pool, LISTEN) are served too: every metric the
	// SQLCipher backend serves, this one serves as well.
	cfg.Store.Backend = config.BackendPostgres
	cfg.Postgres.DSN = secret.New([]byte(pgtest.NewDatabase(t)))
	srv, err := server.New(context.Background(), server.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// promlint on the live exposition.
	waitFor(t, 10*time.Second, "qpcd metrics", func() bool {
		resp, err := http.Get("http://" + srv.OpsAddr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	traffic := startTraffic(t, srv)
	defer traffic()
	lint := exec.Command(tool(t, "promtool"), "check", "metrics")
	lint.Stdin = strings.NewReader(get(t, "http://"+srv.OpsAddr()+"/metrics"))
	if out, err := lint.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics (promlint): %v\n%s", err, out)
	}

	promURL := startPrometheus(t, prom, dir, srv.OpsAddr())
	q := func(expr string) (int, error) { return query(promURL, expr) }
	waitFor(t, 60*time.Second, "Prometheus to scrape qpcd twice", func() bool {
		n, _ := q(`sum(rate(qpcd_rpc_requests_total{job="qpcd"}[30s])) > 0`)
		return n > 0
	})

	// Every dashboard query.
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	type check struct{ what, expr string }
	var checks []check
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			e := strings.NewReplacer("$__rate_interval", "30s", "$instance", ".*").Replace(tg.Expr)
			checks = append(checks, check{"panel " + p.Title, e})
		}
	}
	// Every selector of every rule, and every recording rule's output.
	seen := map[string]bool{}
	for _, r := range loadRules(t) {
		name := r.Alert + r.Record
		if r.Record != "" {
			checks = append(checks, check{"recording rule " + r.Record, r.Record})
		}
		for _, s := range selectors(r.Expr) {
			e := fmt.Sprintf(`{__name__=%q}`, s.metric)
			for _, l := range s.labels {
				e = fmt.Sprintf(`{__name__=%q,%s!=""}`, s.metric, l)
				if !seen[e] {
					seen[e] = true
					checks = append(checks, check{fmt.Sprintf("%s: label %s of %s", name, l, s.metric), e})
				}
			}
			if !seen[e] {
				seen[e] = true
				checks = append(checks, check{fmt.Sprintf("%s: metric %s", name, s.metric), e})
			}
		}
	}
	if len(checks) < 60 {
		t.Fatalf("only %d checks", len(checks))
	}
	// All must hold at the same time; wait for the last stragglers (rules
	// evaluate every second, rates need two scrapes).
	var failing []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		failing = failing[:0]
		for _, c := range checks {
			n, err := q(c.expr)
			if err != nil {
				t.Fatalf("%s: query %q: %v", c.what, c.expr, err)
			}
			if n == 0 {
				failing = append(failing, fmt.Sprintf("%s: %s", c.what, c.expr))
			}
		}
		if len(failing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	sort.Strings(failing)
	for _, f := range failing {
		t.Errorf("no series: %s", f)
	}
	t.Logf("%d dashboard queries and rule selectors return series", len(checks))
}

func shortTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, within, 50*time.Millisecond, what, cond)
}

func get(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// query runs an instant query and returns the number of series.
func query(base, expr string) (int, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s", r.Error)
	}
	if r.Data.ResultType == "scalar" {
		return 1, nil
	}
	return len(r.Data.Result), nil
}

// startPrometheus runs prometheus with a 1 s scrape of qpcd and the shipped
// rules, on a free loopback port, and returns its base URL.
func startPrometheus(t *testing.T, bin, dir, target string, flags ...string) string {
	t.Helper()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "prometheus.yml")
	body := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: qpcd
    static_configs:
      - targets: [%q]
`, rules, target)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var log bytes.Buffer
		args := append([]string{"--config.file=" + conf, "--storage.tsdb.path=" + filepath.Join(dir, fmt.Sprintf("tsdb%d", attempt)),
			"--web.listen-address=" + addr, "--log.level=warn"}, flags...)
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		base := "http://" + addr
		ready := false
		deadline := time.Now().Add(30 * time.Second)
		for !ready && time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Now() // port taken meanwhile: retry on another
				continue
			default:
			}
			if resp, err := http.Get(base + "/-/ready"); err == nil {
				ready = resp.StatusCode == http.StatusOK
				resp.Body.Close()
			}
			if !ready {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if ready {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("prometheus log:\n%s", log.String())
				}
			})
			return base
		}
		_ = cmd.Process.Kill()
		<-exited
		t.Logf("prometheus attempt %d on %s failed:\n%s", attempt, addr, log.String())
	}
	t.Fatal("prometheus did not start")
	return ""
}

// startTraffic sends a steady mix of RPCs until the returned stop is called:
// registrations, logins, authenticated calls, an auth failure, refused
// Enqueues and KeyPackage lookups, so every labelled series exists.
func startTraffic(t *testing.T, srv *server.Server) func() {
	t.Helper()
	dial := func() *rpcclient.Client {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := rpcclient.Dial(ctx, srv.QUICAddr(), transport.DialOptions{PinSHA256: srv.CertFingerprint()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer c.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			oneRound(c, i)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() { close(stop); wg.Wait() }
}

func oneRound(c *rpcclient.Client, i int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	name := fmt.Sprintf("ops%d", i)
	var reg qpcv1.RegisterResponse
	_ = c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "x"}, &qpcv1.PingResponse{})
	if err := c.Call(ctx, "Register", "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "ops"}, &reg); err != nil {
		return
	}
	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: reg.GetDeviceId()}, &ch); err != nil {
		return
	}
	var lr qpcv1.LoginResponse
	if err := c.Call(ctx, "Login", "", &qpcv1.LoginRequest{DeviceId: reg.GetDeviceId(), Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(priv, auth.LoginMessage(reg.GetDeviceId(), ch.GetNonce()))}, &lr); err != nil {
		return
	}
	tok := lr.GetTokens().GetAccessToken()
	_ = c.Call(ctx, "WhoAmI", tok, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	_ = c.Call(ctx, "WhoAmI", "not-a-token", &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	_ = c.Call(ctx, "Enqueue", tok, &qpcv1.EnqueueRequest{}, &qpcv1.EnqueueResponse{})
	_ = c.Call(ctx, "FetchKeyPackages", tok, &qpcv1.FetchKeyPackagesRequest{}, &qpcv1.FetchKeyPackagesResponse{})
}
