package compat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/testutil"
)

// release is one version's binaries.
type release struct {
	name              string // "old 822e83f" or "new"
	qpcd, qpc, qpcctl string
	dir               string // bin/compat/<commit> (old) or a temporary directory (new)
	commit            string // full id (old only)
}

var (
	repoRoot   string
	oldRel     release
	newRel     release
	skipReason string // non-empty: the old build is not cached and QPC_COMPAT is unset
)

// full reports the full matrix (`make compat`, QPC_COMPAT set); otherwise a
// short form runs when the old build is already cached.
func full() bool { return os.Getenv("QPC_COMPAT") != "" }

func TestMain(m *testing.M) {
	code := run(m)
	if err := pgtest.StopShared(); err != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

func run(m *testing.M) int {
	var err error
	if repoRoot, err = filepath.Abs("../.."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out, err := exec.Command(filepath.Join(repoRoot, "scripts/previous-release.sh"), "-v").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		fmt.Fprintf(os.Stderr, "compat: scripts/previous-release.sh: %v\n", err)
		return 1
	}
	f := strings.Fields(string(out))
	oldRel.commit = f[0]
	short := oldRel.commit[:7]
	oldRel.name = "old " + short
	oldRel.dir = filepath.Join(repoRoot, "bin", "compat", short)
	// This tree's binaries first: TestCompatExpandOnlySchemaAhead needs only
	// them, so it runs even when the previous release is not built.
	dir, err := os.MkdirTemp("", "qpc-compat-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	newRel = release{name: "new", dir: dir, qpcd: filepath.Join(dir, "qpcd"), qpc: filepath.Join(dir, "qpc"), qpcctl: filepath.Join(dir, "qpcctl")}
	for bin, pkg := range map[string]string{newRel.qpcd: "./cmd/qpcd", newRel.qpc: "./cmd/qpc", newRel.qpcctl: "./cmd/qpcctl"} {
		c := exec.Command("go", "build", "-o", bin, pkg)
		c.Dir = repoRoot
		if out, err := c.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	if _, err := os.Stat(filepath.Join(oldRel.dir, ".complete")); err != nil {
		if !full() {
			skipReason = fmt.Sprintf("the previous release (%s) is not built: run `make compat` (it builds %s once, in minutes, then reuses it) or set QPC_COMPAT=1",
				strings.Join(f[1:], " "), oldRel.dir)
			return m.Run()
		}
		fmt.Fprintf(os.Stderr, "compat: building the previous release %s (once; cached in %s)\n", short, oldRel.dir)
		begin := time.Now()
		c := exec.Command(filepath.Join(repoRoot, "scripts/compat-build.sh"), oldRel.commit)
		c.Stderr = os.Stderr
		if err := c.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "compat: scripts/compat-build.sh: %v\n", err)
			return 1
		}
		fmt.Printf("compat: built the previous release %s in %s\n", short, time.Since(begin).Round(time.Second))
	}
	for _, c := range []string{"qpcd", "qpc", "qpcctl"} {
		if _, err := os.Stat(filepath.Join(oldRel.dir, c)); err != nil {
			fmt.Fprintf(os.Stderr, "compat: the cached previous release lacks %s: %v (rebuild with QPC_COMPAT_REBUILD=1 make compat)\n", c, err)
			return 1
		}
	}
	oldRel.qpcd, oldRel.qpc, oldRel.qpcctl = filepath.Join(oldRel.dir, "qpcd"), filepath.Join(oldRel.dir, "qpc"), filepath.Join(oldRel.dir, "qpcctl")

	return m.Run()
}

// needOld skips the test when the previous release is not built.
func needOld(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip("compat: " + skipReason)
	}
}

// backends is the storage backends to run: QPC_TEST_BACKENDS (default
// both) in the full run, SQLCipher only in the short one.
func backends(t *testing.T) []string {
	t.Helper()
	bs, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	if !full() && os.Getenv("QPC_TEST_BACKENDS") == "" {
		return []string{store.BackendSQLCipher}
	}
	return bs
}

// figure prints one figures line to the log and standard output (so
// `make compat` shows it without -v).
func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf("compat: %s: ", t.Name()) + fmt.Sprintf(format, args...)
	t.Log(line)
	fmt.Println(line)
}

// shortDir is a temporary directory with a short path (the admin socket's
// path is limited to 108 bytes).
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func freeAddr(t testing.TB, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cleanEnv drops QPC_* from the inherited environment.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QPC_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// server is one data directory (and, on PostgreSQL, one database) served
// by whichever qpcd release the test starts on it; the QUIC and ops
// addresses stay the same across restarts. Only options both releases know
// are set.
type server struct {
	t       *testing.T
	backend string
	dataDir string
	listen  string
	ops     string
	env     []string
	pin     string

	mu      sync.Mutex
	rel     release
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	log     bytes.Buffer
}

func newServer(t *testing.T, backend string, env ...string) *server {
	t.Helper()
	s := &server{t: t, backend: backend, dataDir: shortDir(t), listen: freeAddr(t, "udp"), ops: freeAddr(t, "tcp")}
	s.env = []string{"QPC_LIMITS_RATE_LIMIT=1000000", "QPC_LIMITS_RATE_BURST=1000000", "QPC_LIMITS_DRAIN_TIMEOUT=2s"}
	if backend == store.BackendPostgres {
		s.env = append(s.env, "QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN="+pgtest.NewDatabase(t))
	}
	s.env = append(s.env, env...)
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("qpcd log (last 8 KiB):\n%s", s.logTail(8<<10))
		}
	})
	return s
}

// launch runs rel's qpcd on the server's data; ready receives the ready
// line, exited closes when the process ends.
func (s *server) launch(rel release) (ready chan map[string]any, exited chan struct{}) {
	s.t.Helper()
	cmd := exec.Command(rel.qpcd, "--data-dir", s.dataDir, "--listen", s.listen, "--ops-listen", s.ops, "--log-format", "json")
	cmd.Env = cleanEnv(s.env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	exited = make(chan struct{})
	ready = make(chan map[string]any, 1)
	s.mu.Lock()
	s.rel, s.cmd, s.exited, s.waitErr = rel, cmd, exited, nil
	fmt.Fprintf(&s.log, "--- %s qpcd started\n", rel.name)
	s.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.log.Write(append(sc.Bytes(), '\n'))
			s.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") {
				select {
				case ready <- m:
				default:
				}
			}
		}
		err := cmd.Wait()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(exited)
	}()
	return ready, exited
}

// start runs rel's qpcd and waits for it to be ready.
func (s *server) start(rel release) time.Duration {
	s.t.Helper()
	begin := time.Now()
	ready, exited := s.launch(rel)
	select {
	case m := <-ready:
		s.pin = fmt.Sprint(m["cert_sha256"])
	case <-exited:
		s.t.Fatalf("%s qpcd exited before ready: %v\n%s", rel.name, s.waitErr, s.logTail(8<<10))
	case <-time.After(90 * time.Second):
		s.t.Fatalf("%s qpcd not ready after 90s\n%s", rel.name, s.logTail(8<<10))
	}
	return time.Since(begin)
}

// refused runs rel's qpcd, expects it to exit non-zero before it is ready
// and returns its log.
func (s *server) refused(rel release) string {
	s.t.Helper()
	s.mu.Lock()
	from := s.log.Len()
	s.mu.Unlock()
	ready, exited := s.launch(rel)
	select {
	case <-ready:
		s.t.Fatalf("%s qpcd started on data it should refuse", rel.name)
	case <-exited:
	case <-time.After(60 * time.Second):
		s.t.Fatalf("%s qpcd neither refused nor started within 60s", rel.name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waitErr == nil {
		s.t.Fatalf("%s qpcd exited 0 on data it should refuse", rel.name)
	}
	return s.log.String()[from:]
}

// stop sends SIGTERM and requires exit 0.
func (s *server) stop() {
	s.t.Helper()
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		s.t.Fatal("qpcd did not exit within 30s of SIGTERM")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waitErr != nil {
		s.t.Fatalf("%s qpcd after SIGTERM: %v (want exit 0)\n%s", s.rel.name, s.waitErr, s.log.String())
	}
}

func (s *server) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
	default:
		_ = cmd.Process.Kill()
		<-exited
	}
}

func (s *server) logTail(max int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.log.Bytes()
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// metrics is the server's /metrics page, a line per sample.
func (s *server) metrics(t *testing.T) []string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	r, err := c.Get("http://" + s.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(body), "\n")
}

// rpcCount is qpcd_rpc_requests_total summed over the codes for method.
func (s *server) rpcCount(t *testing.T, method string) float64 {
	t.Helper()
	var sum float64
	for _, line := range s.metrics(t) {
		if !strings.HasPrefix(line, "qpcd_rpc_requests_total{") || !strings.Contains(line, `method="`+method+`"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// qpctl runs rel's qpcctl against the server's admin socket.
func (s *server) qpcctl(t *testing.T, rel release, args ...string) string {
	t.Helper()
	c := exec.Command(rel.qpcctl, append([]string{"--socket", filepath.Join(s.dataDir, "admin.sock")}, args...)...)
	c.Env = cleanEnv()
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%s qpcctl %s: %v\n%s", rel.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// user is one qpc home used through one release's qpc binary (which can
// change: a user upgrading qpc keeps the home).
type user struct {
	t    *testing.T
	name string
	home string
	rel  release
}

func newUser(t *testing.T, name string, rel release) *user {
	return &user{t: t, name: name, home: filepath.Join(t.TempDir(), name), rel: rel}
}

type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// run runs qpc with a deadline: a hang is a failure, not a stuck test.
func (u *user) run(args ...string) result {
	u.t.Helper()
	c := exec.Command(u.rel.qpc, append([]string{"--home", u.home}, args...)...)
	c.Env = cleanEnv()
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	begin := time.Now()
	if err := c.Start(); err != nil {
		u.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		_ = c.Process.Kill()
		<-done
		u.t.Fatalf("%s qpc %s (%s) hung for 3 minutes\nstdout: %s\nstderr: %s", u.rel.name, strings.Join(args, " "), u.name, out.String(), errb.String())
	}
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(begin)}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		u.t.Fatalf("run qpc: %v", err)
	}
	return r
}

// ok runs a qpc command that must succeed and returns its standard output.
func (u *user) ok(args ...string) string {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("%s qpc %s (%s): exit %d\nstdout: %s\nstderr: %s", u.rel.name, strings.Join(args, " "), u.name, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// jsonOK runs a qpc --json command that must succeed: one object a line.
func (u *user) jsonOK(args ...string) []map[string]any {
	u.t.Helper()
	out := u.ok(append([]string{"--json"}, args...)...)
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			u.t.Fatalf("%s qpc --json %s: not one JSON object a line: %q", u.rel.name, strings.Join(args, " "), line)
		}
		objs = append(objs, m)
	}
	return objs
}

// texts are the "text" fields of message objects.
func texts(objs []map[string]any) []string {
	var out []string
	for _, o := range objs {
		if s, ok := o["text"].(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// count is how often s occurs in list.
func count(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// acceptInvitations accepts every pending invitation with the new qpc
// (joining is by consent on the new qpcd; the old qpc cannot accept).
func (u *user) acceptInvitations() {
	u.t.Helper()
	invs := u.jsonOK("invitations")
	if len(invs) == 0 {
		u.t.Fatalf("%s qpc invitations (%s): none to accept", u.rel.name, u.name)
	}
	for _, in := range invs {
		u.ok("invitations", "accept", fmt.Sprint(in["id"]))
	}
}

// recvUntil runs recv until every text in want has arrived (a condition
// with a deadline: delivery after a commit can take a second fetch); it
// returns every text received.
func (u *user) recvUntil(want ...string) []string {
	u.t.Helper()
	var got []string
	testutil.WaitFor(u.t, time.Minute, 100*time.Millisecond, fmt.Sprintf("%s receives %q", u.name, want), func() bool {
		got = append(got, texts(u.jsonOK("recv"))...)
		for _, w := range want {
			if !contains(got, w) {
				return false
			}
		}
		return true
	})
	return got
}

// copyDir copies a qpc home (regular files and directories).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if info.IsDir() {
			return os.MkdirAll(dst, info.Mode().Perm())
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// jsonLines decodes --json output: one object a line.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not one JSON object a line: %q", line)
		}
		objs = append(objs, m)
	}
	return objs
}
