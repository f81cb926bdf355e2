//go:build interop

// Package interop runs internal/mls against other MLS implementations
// (make interop). Each peer runs in its own process, driven by the Go test.
package interop

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// tsPeer is one ts-mls client (interop/ts-mls/peer.mjs, ts-mls pinned by
// interop/ts-mls/package-lock.json) behind a JSON-lines pipe.
type tsPeer struct {
	t   *testing.T
	cmd *exec.Cmd
	in  *json.Encoder
	out *bufio.Scanner
	art *artifacts
}

func startTS(t *testing.T, peerDir string, art *artifacts) *tsPeer {
	t.Helper()
	dir, err := filepath.Abs(peerDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		t.Fatalf("the peer is not installed: run `npm ci` in %s (make interop does): %v", dir, err)
	}
	cmd := exec.Command("node", "peer.mjs")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node (is Node.js 20+ installed?): %v", err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	return &tsPeer{t: t, cmd: cmd, in: json.NewEncoder(stdin), out: sc, art: art}
}

// call sends one request and returns the reply's fields; a reply with
// ok=false is returned as an error (the peer refused).
func (p *tsPeer) call(op string, args map[string]any) (map[string]any, error) {
	p.t.Helper()
	req := map[string]any{"op": op}
	for k, v := range args {
		if b, ok := v.([]byte); ok {
			v = base64.StdEncoding.EncodeToString(b)
		}
		req[k] = v
	}
	if err := p.in.Encode(req); err != nil {
		p.t.Fatalf("write to ts-mls peer: %v", err)
	}
	if !p.out.Scan() {
		p.t.Fatalf("ts-mls peer closed its output: %v", p.out.Err())
	}
	var reply map[string]any
	if err := json.Unmarshal(p.out.Bytes(), &reply); err != nil {
		p.t.Fatalf("ts-mls peer reply %q: %v", p.out.Text(), err)
	}
	if reply["ok"] != true {
		return reply, fmt.Errorf("ts-mls %s: %v", op, reply["error"])
	}
	return reply, nil
}

func (p *tsPeer) must(op string, args map[string]any) map[string]any {
	p.t.Helper()
	r, err := p.call(op, args)
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}

// bytesOf returns a base64 field of a reply and keeps it as an artifact.
func (p *tsPeer) bytesOf(r map[string]any, field, name string) []byte {
	p.t.Helper()
	s, _ := r[field].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		p.t.Fatalf("reply field %s: %q (%v)", field, s, err)
	}
	p.art.keep(name, b)
	return b
}

// artifacts keeps every exchanged message, in QPC_INTEROP_ARTIFACTS when
// set (the CI job uploads it), else in the test's temporary directory.
type artifacts struct {
	t   *testing.T
	dir string
	n   int
}

func newArtifacts(t *testing.T, name string) *artifacts {
	dir := os.Getenv("QPC_INTEROP_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	dir = filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &artifacts{t: t, dir: dir}
}

func (a *artifacts) keep(name string, b []byte) {
	a.n++
	if err := os.WriteFile(filepath.Join(a.dir, fmt.Sprintf("%02d-%s.bin", a.n, name)), b, 0o644); err != nil {
		a.t.Fatal(err)
	}
}

// goPeer is the internal/mls side.
type goPeer struct {
	suite  mls.CipherSuiteID
	cfg    mls.Config
	sig    mls.SignaturePrivateKey
	bundle *mls.KeyPackageBundle
	g      *mls.Group
}

func newGoPeer(t *testing.T, suite mls.CipherSuiteID, identity string) *goPeer {
	t.Helper()
	s, err := mls.Suite(suite)
	if err != nil {
		t.Fatal(err)
	}
	sig, _, err := s.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := mls.GenerateKeyPackage(suite, []byte(identity), sig, mls.KeyPackageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &goPeer{suite: suite, cfg: mls.Config{AllowedSuites: []mls.CipherSuiteID{suite}}, sig: sig, bundle: b}
}

func (g *goPeer) keyPackage(t *testing.T) []byte {
	t.Helper()
	raw, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: &g.bundle.KeyPackage}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// sameSecrets checks both sides derive the same exporter secret (so the
// same epoch and key schedule).
func sameSecrets(t *testing.T, g *goPeer, ts *tsPeer, step string) {
	t.Helper()
	ctx := []byte(step)
	mine, err := g.g.ExportSecret("qpc interop", ctx, 32)
	if err != nil {
		t.Fatal(err)
	}
	r := ts.must("export", map[string]any{"label": "qpc interop", "context": ctx, "length": 32})
	theirs, _ := base64.StdEncoding.DecodeString(r["secret"].(string))
	if !bytes.Equal(mine.Bytes(), theirs) || uint64(r["epoch"].(float64)) != g.g.Epoch() {
		t.Fatalf("%s: internal/mls (epoch %d) and ts-mls (epoch %v) disagree on the exporter secret", step, g.g.Epoch(), r["epoch"])
	}
}

func messagesBothWays(t *testing.T, g *goPeer, ts *tsPeer, step string) {
	t.Helper()
	ct, err := g.g.Protect([]byte("from go: "+step), nil)
	if err != nil {
		t.Fatal(err)
	}
	ts.art.keep("app-go-to-ts", ct)
	r := ts.must("process", map[string]any{"message": ct})
	if r["text"] != "from go: "+step {
		t.Fatalf("%s: ts-mls read %v", step, r)
	}
	r = ts.must("protect", map[string]any{"text": "from ts: " + step})
	p, err := g.g.ProcessMessage(ts.bytesOf(r, "message", "app-ts-to-go"))
	if err != nil {
		t.Fatalf("%s: internal/mls refused ts-mls's application message: %v", step, err)
	}
	if p.Kind != mls.KindApplication || string(p.ApplicationData) != "from ts: "+step {
		t.Fatalf("%s: internal/mls read %+v", step, p)
	}
}

// commitsBothWays: an empty commit (full UpdatePath) from each side,
// as PrivateMessage and as PublicMessage.
func commitsBothWays(t *testing.T, g *goPeer, ts *tsPeer) {
	t.Helper()
	for _, public := range []bool{false, true} {
		r := ts.must("commit", map[string]any{"public_message": public})
		if _, err := g.g.ProcessMessage(ts.bytesOf(r, "commit", fmt.Sprintf("commit-ts-to-go-public-%v", public))); err != nil {
			t.Fatalf("internal/mls refused ts-mls's commit with path (public=%v): %v", public, err)
		}
		sameSecrets(t, g, ts, fmt.Sprintf("after ts commit public=%v", public))

		cfg := g.cfg
		cfg.PublicHandshake = public
		gg, err := mls.ImportGroup(cfg, mustExport(t, g.g))
		if err != nil {
			t.Fatal(err)
		}
		g.g = gg
		pc, err := g.g.Commit(mls.CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ts.art.keep(fmt.Sprintf("commit-go-to-ts-public-%v", public), pc.Message)
		if _, err := ts.call("process", map[string]any{"message": pc.Message}); err != nil {
			t.Fatalf("ts-mls refused internal/mls's commit with path (public=%v): %v", public, err)
		}
		if err := g.g.MergePendingCommit(pc); err != nil {
			t.Fatal(err)
		}
		sameSecrets(t, g, ts, fmt.Sprintf("after go commit public=%v", public))
	}
}

func mustExport(t *testing.T, g *mls.Group) []byte {
	t.Helper()
	raw, err := g.Export()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestTSMLS runs internal/mls against ts-mls 1.6.4 (pinned in
// interop/ts-mls/package-lock.json) on suite 1: KeyPackages both ways,
// Welcome joins both ways (ratchet tree in the extension), application
// messages both ways, and commits with an UpdatePath both ways (as
// PrivateMessage and PublicMessage), checking after each step that both
// sides export the same secret.
func TestTSMLS(t *testing.T) {
	runPair(t, "ts-mls", mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519)
}

// TestTSMLS2XWing is the same against ts-mls 2.0.0-rc.10 (interop/ts-mls-rc10)
// on the X-Wing suite 0xF00D, the code point both use, and on suite 1.
func TestTSMLS2XWing(t *testing.T) {
	for _, suite := range []mls.CipherSuiteID{mls.MLS256XWingAES256GCMSHA512Ed25519, mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519} {
		t.Run(suite.String(), func(t *testing.T) { runPair(t, "ts-mls-rc10", suite) })
	}
}

// runPair runs the scenario with the peer in peerDir on suite.
func runPair(t *testing.T, peerDir string, suite mls.CipherSuiteID) {
	suiteName := suite.String()
	t.Run("go creates, ts joins", func(t *testing.T) {
		art := newArtifacts(t, peerDir+"/"+suiteName+"/go-creates")
		ts := startTS(t, peerDir, art)
		g := newGoPeer(t, suite, "go/d1")
		r := ts.must("init", map[string]any{"suite": suiteName, "identity": "ts/d1"})
		raw := ts.bytesOf(r, "key_package", "keypackage-ts")
		var m mls.MLSMessage
		if err := m.Unmarshal(raw); err != nil || m.KeyPackage == nil {
			t.Fatalf("ts-mls KeyPackage does not decode: %v", err)
		}
		if err := mls.ValidateKeyPackage(m.KeyPackage, mls.KeyPackagePolicy{AllowedSuites: []mls.CipherSuiteID{suite}}); err != nil {
			t.Fatalf("ts-mls KeyPackage refused by internal/mls: %v", err)
		}
		var err error
		g.g, err = mls.CreateGroup(g.cfg, mls.NewGroupID(), suite, []byte("go/d1"), g.sig, mls.GroupOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pc, err := g.g.Commit(mls.CommitOptions{Add: []*mls.KeyPackage{m.KeyPackage}})
		if err != nil {
			t.Fatal(err)
		}
		art.keep("welcome-go-to-ts", pc.Welcome)
		if err := g.g.MergePendingCommit(pc); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.call("join", map[string]any{"welcome": pc.Welcome}); err != nil {
			t.Fatalf("ts-mls refused internal/mls's Welcome: %v", err)
		}
		sameSecrets(t, g, ts, "after join")
		messagesBothWays(t, g, ts, "epoch 1")
		commitsBothWays(t, g, ts)
		messagesBothWays(t, g, ts, "after commits")
	})

	t.Run("ts creates, go joins", func(t *testing.T) {
		art := newArtifacts(t, peerDir+"/"+suiteName+"/ts-creates")
		ts := startTS(t, peerDir, art)
		g := newGoPeer(t, suite, "go/d1")
		ts.must("init", map[string]any{"suite": suiteName, "identity": "ts/d1"})
		ts.must("create", map[string]any{"group_id": mls.NewGroupID()})
		kp := g.keyPackage(t)
		art.keep("keypackage-go", kp)
		r, err := ts.call("add", map[string]any{"key_package": kp})
		if err != nil {
			t.Fatalf("ts-mls refused internal/mls's KeyPackage: %v", err)
		}
		welcome := ts.bytesOf(r, "welcome", "welcome-ts-to-go")
		g.g, err = mls.JoinFromWelcome(g.cfg, welcome, g.bundle, mls.JoinOptions{})
		if err != nil {
			t.Fatalf("internal/mls refused ts-mls's Welcome: %v", err)
		}
		sameSecrets(t, g, ts, "after join")
		messagesBothWays(t, g, ts, "epoch 1")
		commitsBothWays(t, g, ts)
		messagesBothWays(t, g, ts, "after commits")
	})
}
