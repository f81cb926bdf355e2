package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The real binaries, built once for these tests (STYLE 3: test the CLI as a
// real binary against a real qpcd).
var qpcdBin, qpcctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qpcctl-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qpcdBin, qpcctlBin = filepath.Join(dir, "qpcd"), filepath.Join(dir, "qpcctl")
	for bin, pkg := range map[string]string{qpcctlBin: ".", qpcdBin: "../qpcd"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	// The PostgreSQL tests (migrate_test.go) share one throwaway cluster.
	if err := pgtest.StopShared(); err != nil && code == 0 {
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// shortDir is a temporary directory with a short path (Unix socket paths
// are limited to 108 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
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

type result struct {
	stdout, stderr string
	code           int
}

// ctl runs qpcctl with --data-dir dataDir.
func ctl(t *testing.T, dataDir string, args ...string) result {
	t.Helper()
	all := append([]string{"--data-dir", dataDir}, args...)
	cmd := exec.Command(qpcctlBin, all...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run qpcctl %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// ctlOK runs qpcctl --json and decodes stdout into v; it fails the test on a non-zero exit.
func ctlOK(t *testing.T, dataDir string, v any, args ...string) {
	t.Helper()
	r := ctl(t, dataDir, append([]string{"--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("qpcctl %v: exit %d\nstderr: %s", args, r.code, r.stderr)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
			t.Fatalf("qpcctl %v: --json output %q: %v", args, r.stdout, err)
		}
	}
}

type daemon struct {
	cmd     *exec.Cmd
	dataDir string
	quic    string
	pin     string
	ops     string
	exited  chan struct{}
	waitErr error
	mu      sync.Mutex
	log     bytes.Buffer
}

// startQPCD runs the qpcd binary on dataDir (ephemeral loopback ports, JSON
// logs, a rate limit high enough for load tests) and waits for its ready
// line and its admin socket.
func startQPCD(t *testing.T, dataDir string, env ...string) *daemon {
	t.Helper()
	return startQPCDBin(t, qpcdBin, dataDir, env...)
}

// startQPCDBin is startQPCD with another qpcd binary (a release of a drill).
func startQPCDBin(t *testing.T, bin, dataDir string, env ...string) *daemon {
	t.Helper()
	cmd := exec.Command(bin, "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
		"--log-format", "json", "--rate-limit", "100000")
	cmd.Env = cleanEnv(append([]string{"QPC_LIMITS_RATE_BURST=100000", "QPC_LIMITS_DRAIN_TIMEOUT=5s"}, env...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, dataDir: dataDir, exited: make(chan struct{})}
	ready := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.log.Write(append(sc.Bytes(), '\n'))
			d.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") {
				select {
				case ready <- m:
				default:
				}
			}
		}
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			_ = cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("qpcd log:\n%s", d.logText())
		}
	})
	select {
	case m := <-ready:
		d.quic, d.pin, d.ops = fmt.Sprint(m["quic"]), fmt.Sprint(m["cert_sha256"]), fmt.Sprint(m["ops"])
		d.quic = strings.TrimSuffix(d.quic, "/udp")
	case <-d.exited:
		t.Fatalf("qpcd exited before ready: %v\n%s", d.waitErr, d.logText())
	case <-time.After(30 * time.Second):
		t.Fatalf("qpcd not ready after 30s\n%s", d.logText())
	}
	waitFor(t, 20*time.Second, "admin socket answers", func() bool { return ctl(t, dataDir, "status").code == 0 })
	return d
}

func (d *daemon) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

// drain stops qpcd with `qpcctl drain` and waits for the process to exit 0.
func (d *daemon) drain(t *testing.T) {
	t.Helper()
	var out struct {
		Stopped bool `json:"stopped"`
	}
	ctlOK(t, d.dataDir, &out, "drain")
	if !out.Stopped {
		t.Fatalf("drain did not report a stop")
	}
	select {
	case <-d.exited:
		if d.waitErr != nil {
			t.Fatalf("qpcd exit after drain: %v", d.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("qpcd did not exit within 30s of drain")
	}
}

func (d *daemon) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (d *daemon) dial(t *testing.T, pin string) (*rpcclient.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rpcclient.Dial(ctx, d.quic, transport.DialOptions{PinSHA256: pin})
}

func (d *daemon) mustDial(t *testing.T) *rpcclient.Client {
	t.Helper()
	c, err := d.dial(t, d.pin)
	if err != nil {
		t.Fatalf("dial qpcd: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, within, 20*time.Millisecond, what, cond)
}

func rpcCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// register creates an account with a fresh device key; it returns the
// device id and key.
func register(c *rpcclient.Client, name string) (string, ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	var resp qpcv1.RegisterResponse
	if err := c.Call(ctx, "Register", "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "test"}, &resp); err != nil {
		return "", nil, err
	}
	return resp.GetDeviceId(), priv, nil
}

// login returns tokens for a registered device.
func login(c *rpcclient.Client, deviceID string, key ed25519.PrivateKey) (*qpcv1.Tokens, error) {
	ctx, cancel := rpcCtx()
	defer cancel()
	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: deviceID}, &ch); err != nil {
		return nil, err
	}
	var lr qpcv1.LoginResponse
	err := c.Call(ctx, "Login", "", &qpcv1.LoginRequest{
		DeviceId: deviceID, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, auth.LoginMessage(deviceID, ch.GetNonce())),
	}, &lr)
	if err != nil {
		return nil, err
	}
	return lr.GetTokens(), nil
}

// acceptInvitations logs a device in and accepts its account's pending
// invitations (joining is by consent: AddMembers only invites).
func acceptInvitations(t *testing.T, c *rpcclient.Client, deviceID string, key ed25519.PrivateKey) {
	t.Helper()
	tok, err := login(c, deviceID, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := rpcCtx()
	defer cancel()
	var li qpcv1.ListInvitationsResponse
	if err := c.Call(ctx, "ListInvitations", tok.GetAccessToken(), &qpcv1.ListInvitationsRequest{}, &li); err != nil {
		t.Fatal(err)
	}
	for _, in := range li.GetInvitations() {
		if err := c.Call(ctx, "AcceptInvitation", tok.GetAccessToken(), &qpcv1.AcceptInvitationRequest{InvitationId: in.GetInvitationId()},
			&qpcv1.AcceptInvitationResponse{}); err != nil {
			t.Fatal(err)
		}
	}
}

func whoAmI(c *rpcclient.Client, token string) error {
	ctx, cancel := rpcCtx()
	defer cancel()
	return c.Call(ctx, "WhoAmI", token, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
}

// writers registers accounts from several connections until stopped and
// records every acknowledged (committed) account name, in order.
type writers struct {
	wg    sync.WaitGroup
	stop  chan struct{}
	mu    sync.Mutex
	acked []string
	errs  []error
}

func startWriters(t *testing.T, d *daemon, n int, prefix string) *writers {
	t.Helper()
	w := &writers{stop: make(chan struct{})}
	for g := range n {
		c := d.mustDial(t)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-w.stop:
					return
				default:
				}
				name := fmt.Sprintf("%s%d-%d", prefix, g, i)
				if _, _, err := register(c, name); err != nil {
					w.mu.Lock()
					w.errs = append(w.errs, fmt.Errorf("%s: %w", name, err))
					w.mu.Unlock()
					continue
				}
				w.mu.Lock()
				w.acked = append(w.acked, name)
				w.mu.Unlock()
			}
		}()
	}
	return w
}

func (w *writers) snapshot() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...)
}

func (w *writers) waitMore(t *testing.T, n int) {
	t.Helper()
	target := len(w.snapshot()) + n
	waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledged writes", target), func() bool { return len(w.snapshot()) >= target })
}

func (w *writers) finish(t *testing.T) []string {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	if len(w.errs) > 0 {
		t.Fatalf("%d writes failed, first: %v", len(w.errs), w.errs[0])
	}
	return w.snapshot()
}

// accountNames lists every account through qpcctl.
func accountNames(t *testing.T, dataDir string) map[string]bool {
	t.Helper()
	var as []struct {
		Name string `json:"name"`
	}
	ctlOK(t, dataDir, &as, "accounts", "list")
	out := make(map[string]bool, len(as))
	for _, a := range as {
		out[a.Name] = true
	}
	return out
}
