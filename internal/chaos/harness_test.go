package chaos

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
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

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The real binaries, built once for the suite.
var qpcdBin, qpcBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qpc-chaos-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qpcdBin, qpcBin = filepath.Join(dir, "qpcd"), filepath.Join(dir, "qpc")
	for bin, pkg := range map[string]string{qpcdBin: "../../cmd/qpcd", qpcBin: "../../cmd/qpc"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	if err := pgtest.StopShared(); err != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// long reports the long (nightly) mode: QPC_CHAOS=long.
func long() bool { return os.Getenv("QPC_CHAOS") == "long" }

// pick returns short in the short mode, long in the long one.
func pick[T any](short, long_ T) T {
	if long() {
		return long_
	}
	return short
}

// forEachBackend runs fn once per storage backend of QPC_TEST_BACKENDS
// (default both), as a subtest named after it.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	t.Helper()
	bs, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		t.Run(b, func(t *testing.T) { fn(t, b) })
	}
}

// summary prints one figures line, to the test log and (so `make chaos`
// shows it without -v) to standard output.
func summary(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf("chaos: %s: ", t.Name()) + fmt.Sprintf(format, args...)
	t.Log(line)
	fmt.Println(line)
}

// shortDir is a temporary directory with a short path (the admin socket's
// path is limited to 108 bytes).
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func freeAddr(t testing.TB, network string) string {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
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

// node is one qpcd process on a data directory (and, on PostgreSQL, a
// database) that outlives its restarts; the QUIC and ops ports stay the same
// across restarts, so clients reconnect to the same address.
type node struct {
	t       testing.TB
	backend string
	dataDir string
	listen  string // QUIC, UDP
	ops     string // HTTP
	env     []string
	pin     string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	log     bytes.Buffer
}

// newNode prepares a qpcd on backend: a fresh data dir and, for PostgreSQL,
// a fresh database on the shared test cluster. env adds QPC_* settings.
func newNode(t testing.TB, backend string, env ...string) *node {
	t.Helper()
	n := &node{t: t, backend: backend, dataDir: shortDir(t), listen: freeAddr(t, "udp"), ops: freeAddr(t, "tcp")}
	n.env = []string{"QPC_LIMITS_RATE_LIMIT=1000000", "QPC_LIMITS_RATE_BURST=1000000", "QPC_LIMITS_DRAIN_TIMEOUT=2s",
		"QPC_LIMITS_MAX_STREAMS_PER_CONN=1000"}
	if backend == store.BackendPostgres {
		n.env = append(n.env, "QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN="+pgtest.NewDatabase(t))
	}
	n.env = append(n.env, env...)
	t.Cleanup(func() {
		n.kill()
		if t.Failed() {
			t.Logf("qpcd log (last 8 KiB):\n%s", n.logTail(8<<10))
		}
	})
	return n
}

// start runs qpcd and waits for its ready line; it returns how long that took.
func (n *node) start() time.Duration {
	n.t.Helper()
	begin := time.Now()
	cmd := exec.Command(qpcdBin, "--data-dir", n.dataDir, "--listen", n.listen, "--ops-listen", n.ops, "--log-format", "json")
	cmd.Env = cleanEnv(n.env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	exited := make(chan struct{})
	ready := make(chan map[string]any, 1)
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			n.mu.Lock()
			n.log.Write(append(sc.Bytes(), '\n'))
			if n.log.Len() > 4<<20 { // keep the tail only
				tail := append([]byte(nil), n.log.Bytes()[n.log.Len()-(1<<20):]...)
				n.log.Reset()
				n.log.Write(tail)
			}
			n.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") {
				select {
				case ready <- m:
				default:
				}
			}
		}
		err := cmd.Wait()
		n.mu.Lock()
		n.waitErr = err
		n.mu.Unlock()
		close(exited)
	}()
	select {
	case m := <-ready:
		n.pin = fmt.Sprint(m["cert_sha256"])
	case <-exited:
		n.t.Fatalf("qpcd exited before ready: %v\n%s", n.waitErr, n.logTail(8<<10))
	case <-time.After(60 * time.Second):
		n.t.Fatalf("qpcd not ready after 60s\n%s", n.logTail(8<<10))
	}
	return time.Since(begin)
}

// kill9 kills qpcd with SIGKILL and waits for the process to be gone.
func (n *node) kill9() {
	n.t.Helper()
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		n.t.Fatal("kill9: qpcd not started")
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// kill ends qpcd if it runs (test cleanup).
func (n *node) kill() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
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

// alive reports whether the current qpcd process still runs.
func (n *node) alive() bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// pid is the current qpcd process id.
func (n *node) pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd.Process.Pid
}

// stop sends SIGTERM and returns the exit error (nil: exit 0).
func (n *node) stop() error {
	n.t.Helper()
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		n.t.Fatal("qpcd did not exit within 30s of SIGTERM")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.waitErr
}

func (n *node) logTail(max int) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	b := n.log.Bytes()
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// dial opens a fresh connection to qpcd at addr (the node's own address
// when empty).
func (n *node) dial(ctx context.Context, addr string) (*rpcclient.Client, error) {
	if addr == "" {
		addr = n.listen
	}
	return rpcclient.Dial(ctx, addr, transport.DialOptions{PinSHA256: n.pin})
}

func (n *node) mustDial(t testing.TB) *rpcclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.dial(ctx, "")
	if err != nil {
		t.Fatalf("dial qpcd: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// httpGet fetches a path from the ops listener.
func (n *node) httpGet(path string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	r, err := c.Get("http://" + n.ops + path)
	if err != nil {
		return 0, "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	return r.StatusCode, string(b), err
}

// readyz is /readyz's HTTP status (0 when it does not answer).
func (n *node) readyz() int {
	code, _, err := n.httpGet("/readyz")
	if err != nil {
		return 0
	}
	return code
}

// metrics scrapes /metrics: each metric name to the sum of its samples.
func (n *node) metrics() (map[string]float64, error) {
	code, body, err := n.httpGet("/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", code)
	}
	return parseMetrics(body), nil
}

func (n *node) metric(t testing.TB, name string) float64 {
	t.Helper()
	m, err := n.metrics()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m[name]
	if !ok {
		t.Fatalf("metric %s not exported", name)
	}
	return v
}

// parseMetrics reads the Prometheus text format: name -> sum over labels.
func parseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		f := strings.Fields(line[strings.LastIndexAny(line, "} ")+1:])
		if len(f) == 0 {
			f = strings.Fields(line)
			f = f[len(f)-1:]
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[name] += v
		}
	}
	return out
}

// integrityCheck opens the stopped node's SQLCipher database with its key
// through the store package (which recovers the WAL left by a crash, as
// qpcd would) and runs PRAGMA integrity_check.
func (n *node) integrityCheck(t testing.TB) {
	t.Helper()
	if n.backend != store.BackendSQLCipher {
		return
	}
	keyHex, err := os.ReadFile(filepath.Join(n.dataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := secretFromHex(strings.TrimSpace(string(keyHex)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := store.Open(ctx, store.Options{Path: filepath.Join(n.dataDir, "qpcd.db"), Key: key})
	if err != nil {
		t.Fatalf("database does not open after the crash: %v", err)
	}
	defer db.Close()
	var res []string
	err = db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "PRAGMA integrity_check")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return err
			}
			res = append(res, s)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatalf("integrity_check: %v", err)
	}
	if len(res) != 1 || res[0] != "ok" {
		t.Fatalf("PRAGMA integrity_check after the crash: %v", res)
	}
}

// device is a registered device talking raw RPCs.
type device struct {
	name, id string
	key      ed25519.PrivateKey
	token    string
}

func callCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// registerDevice creates an account with a fresh device key and logs it in.
func registerDevice(c *rpcclient.Client, name string) (*device, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	ctx, cancel := callCtx(10 * time.Second)
	defer cancel()
	var resp qpcv1.RegisterResponse
	if err := c.Call(ctx, "Register", "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "chaos"}, &resp); err != nil {
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	d := &device{name: name, id: resp.GetDeviceId(), key: priv}
	return d, d.login(c, 10*time.Second)
}

// login fetches a fresh access token.
func (d *device) login(c *rpcclient.Client, within time.Duration) error {
	ctx, cancel := callCtx(within)
	defer cancel()
	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: d.id}, &ch); err != nil {
		return fmt.Errorf("login challenge %s: %w", d.name, err)
	}
	var lr qpcv1.LoginResponse
	err := c.Call(ctx, "Login", "", &qpcv1.LoginRequest{
		DeviceId: d.id, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(d.key, auth.LoginMessage(d.id, ch.GetNonce())),
	}, &lr)
	if err != nil {
		return fmt.Errorf("login %s: %w", d.name, err)
	}
	d.token = lr.GetTokens().GetAccessToken()
	return nil
}

func (d *device) call(c *rpcclient.Client, within time.Duration, method string, req, resp proto.Message) error {
	ctx, cancel := callCtx(within)
	defer cancel()
	return c.Call(ctx, method, d.token, req, resp)
}

// statusOf is the wire status of err (OK for nil, -1 for a non-status error).
func statusOf(err error) qpcv1.Status {
	if err == nil {
		return qpcv1.Status_STATUS_OK
	}
	var se *wire.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, within, 50*time.Millisecond, what, cond)
}

// rssOf reads a process's resident set size from /proc, in bytes.
func rssOf(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func secretFromHex(h string) (secret.Bytes, error) {
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 32 {
		return secret.Bytes{}, fmt.Errorf("db.key: not 64 hex characters")
	}
	return secret.New(b), nil
}
