package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// proc is the real qpcd binary under a chaos scenario: JSON logs kept in
// full (never blocking the process), the addresses from its ready line.
type proc struct {
	cmd     *exec.Cmd
	quic    string
	pin     string
	ops     string
	exited  chan struct{}
	waitErr error
	mu      sync.Mutex
	log     bytes.Buffer
}

// startProc runs qpcd on dataDir with ephemeral loopback ports, a rate
// limit out of the way of load, and env, and waits for its ready line.
func startProc(t *testing.T, dataDir string, env ...string) *proc {
	t.Helper()
	p, err := launchProc(t, dataDir, env...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// launchProc is startProc that returns an error (with the log) when qpcd
// exits before it is ready.
func launchProc(t *testing.T, dataDir string, env ...string) (*proc, error) {
	t.Helper()
	cmd := exec.Command(qpcdBin, "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--log-format", "json")
	cmd.Dir = filepath.Dir(dataDir)
	cmd.Env = cleanEnv(append([]string{"QPC_LIMITS_RATE_LIMIT=100000", "QPC_LIMITS_RATE_BURST=100000", "QPC_LIMITS_DRAIN_TIMEOUT=5s"}, env...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.log.Write(append(sc.Bytes(), '\n'))
			p.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") {
				select {
				case ready <- m:
				default:
				}
			}
		}
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("qpcd log:\n%s", p.logText())
		}
	})
	select {
	case m := <-ready:
		p.quic = strings.TrimSuffix(fmt.Sprint(m["quic"]), "/udp")
		p.pin, p.ops = fmt.Sprint(m["cert_sha256"]), fmt.Sprint(m["ops"])
	case <-p.exited:
		return p, fmt.Errorf("qpcd exited before ready: %v\n%s", p.waitErr, p.logText())
	case <-time.After(60 * time.Second):
		t.Fatalf("qpcd not ready after 60s\n%s", p.logText())
	}
	return p, nil
}

func (p *proc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// logLines returns the decoded log lines whose msg contains substr.
func (p *proc) logLines(substr string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(p.logText(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && strings.Contains(fmt.Sprint(m["msg"]), substr) {
			out = append(out, m)
		}
	}
	return out
}

// term sends SIGTERM and returns the exit code once qpcd has exited.
func (p *proc) term(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("qpcd did not exit within 60s of SIGTERM")
	}
	if ee, ok := p.waitErr.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if p.waitErr != nil {
		t.Fatal(p.waitErr)
	}
	return 0
}

// get fetches an ops endpoint: status code and body (0 if unreachable).
func (p *proc) get(path string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.ops + path)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of an unlabelled metric line from /metrics.
func (p *proc) metric(t *testing.T, name string) string {
	t.Helper()
	_, body := p.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("metric %s not exposed", name)
	return ""
}

func (p *proc) dial(t *testing.T) *rpcclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rpcclient.Dial(ctx, p.quic, transport.DialOptions{PinSHA256: p.pin})
	if err != nil {
		t.Fatalf("dial qpcd: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func rpcCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 15*time.Second)
}

// user is a registered, logged-in device with its own connection.
type user struct {
	c        *rpcclient.Client
	name     string
	deviceID string
	key      ed25519.PrivateKey
	token    string
}

func newUser(t *testing.T, p *proc, name string) *user {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u := &user{c: p.dial(t), name: name, key: priv}
	ctx, cancel := rpcCtx()
	defer cancel()
	var reg qpcv1.RegisterResponse
	if err := u.c.Call(ctx, "Register", "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "chaos"}, &reg); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	u.deviceID = reg.GetDeviceId()
	if err := u.login(); err != nil {
		t.Fatalf("login %s: %v", name, err)
	}
	return u
}

func (u *user) login() error {
	ctx, cancel := rpcCtx()
	defer cancel()
	var ch qpcv1.LoginChallengeResponse
	if err := u.c.Call(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: u.deviceID}, &ch); err != nil {
		return err
	}
	var lr qpcv1.LoginResponse
	if err := u.c.Call(ctx, "Login", "", &qpcv1.LoginRequest{
		DeviceId: u.deviceID, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(u.key, auth.LoginMessage(u.deviceID, ch.GetNonce())),
	}, &lr); err != nil {
		return err
	}
	u.token = lr.GetTokens().GetAccessToken()
	return nil
}

func (u *user) call(method string, req, resp proto.Message) error {
	ctx, cancel := rpcCtx()
	defer cancel()
	return u.c.Call(ctx, method, u.token, req, resp)
}

// readAll reads a channel from the start with read-ahead cursors (a pure
// read: no Ack) and returns its messages in order.
func (u *user) readAll(t *testing.T, ch []byte) []*qpcv1.ChannelMessage {
	t.Helper()
	var out []*qpcv1.ChannelMessage
	var after uint64
	for {
		var r qpcv1.FetchResponse
		if err := u.call("Fetch", &qpcv1.FetchRequest{Limit: 500, After: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: after}}}, &r); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		for _, m := range r.GetMessages() {
			if bytes.Equal(m.GetChannelId(), ch) {
				out = append(out, m)
				after = m.GetSeq()
			}
		}
		if !r.GetMore() {
			return out
		}
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, within, 20*time.Millisecond, what, cond)
}
