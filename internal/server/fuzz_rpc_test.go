package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// FuzzRPCHandlers sends arbitrary request bodies to every method of a real
// qpcd over QUIC, as a logged-in device: whatever the bytes, the server
// answers with a status from the protocol's set (no panic, no hang, no
// dropped stream) and keeps serving. The body is what a handler decodes,
// so this reaches every handler's input past the envelope checks that
// FuzzDecodeFrame covers.
func FuzzRPCHandlers(f *testing.F) {
	rf := startRPCFuzz(f)
	for i := range rf.methods {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte{0x0a, 0x03, 'a', 'b', 'c'})
		f.Add(uint8(i), []byte{0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x00})
	}
	f.Fuzz(rf.check)
}

// rpcFuzz is a running qpcd with one logged-in device's connection.
type rpcFuzz struct {
	client  *rpcclient.Client
	token   string
	methods []string
	id      uint64
}

func startRPCFuzz(f testing.TB) *rpcFuzz {
	cfg := config.Default()
	cfg.DataDir = f.TempDir()
	cfg.Listen, cfg.OpsListen = "127.0.0.1:0", "127.0.0.1:0"
	// Generous limits: the fuzzer's request rate is not what is under test.
	cfg.Limits.RateLimit, cfg.Limits.RateBurst = 1e6, 1e6
	// Long polls (FetchWait, a held Ping) return at once instead of
	// holding each input for the default 30 s.
	cfg.Limits.LongPollMax = 50 * time.Millisecond
	if storetest.Postgres() {
		cfg.Store.Backend = config.BackendPostgres
		cfg.Postgres.DSN = secret.New([]byte(pgtest.NewDatabase(f)))
	}
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	srv, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	f.Cleanup(func() { stop(); <-done })
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + srv.OpsAddr() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			f.Fatal("server not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 20*time.Second)
	}
	c0, cancel0 := ctx()
	defer cancel0()
	client, err := rpcclient.Dial(c0, srv.QUICAddr(), transport.DialOptions{PinSHA256: srv.CertFingerprint()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = client.Close() })
	// A logged-in device, so authenticated methods reach their handlers.
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	var reg qpcv1.RegisterResponse
	if err := client.Call(c0, MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "fuzzer", SignatureKey: pub, DeviceName: "fuzz"}, &reg); err != nil {
		f.Fatal(err)
	}
	var ch qpcv1.LoginChallengeResponse
	if err := client.Call(c0, MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: reg.GetDeviceId()}, &ch); err != nil {
		f.Fatal(err)
	}
	var lr qpcv1.LoginResponse
	if err := client.Call(c0, MethodLogin, "", &qpcv1.LoginRequest{DeviceId: reg.GetDeviceId(), Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(priv, auth.LoginMessage(reg.GetDeviceId(), ch.GetNonce()))}, &lr); err != nil {
		f.Fatal(err)
	}
	token := lr.GetTokens().GetAccessToken()

	methods := make([]string, 0, len(srv.rpc.methods))
	for name := range srv.rpc.methods {
		methods = append(methods, name)
	}
	sort.Strings(methods)
	return &rpcFuzz{client: client, token: token, methods: methods}
}

// check sends one input and holds the answer to the protocol's promises.
func (rf *rpcFuzz) check(t *testing.T, which uint8, body []byte) {
	method := rf.methods[int(which)%len(rf.methods)]
	rf.id++
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := rf.client.Do(c, &qpcv1.Request{Version: wire.ProtocolVersion, RequestId: rf.id, Method: method, AccessToken: rf.token, Body: body})
	if err != nil {
		t.Fatalf("%s: no answer: %v", method, err)
	}
	if _, ok := qpcv1.Status_name[int32(resp.GetStatus())]; !ok || resp.GetStatus() == qpcv1.Status_STATUS_UNSPECIFIED {
		t.Fatalf("%s: answered status %v", method, resp.GetStatus())
	}
	if resp.GetStatus() == qpcv1.Status_STATUS_INTERNAL {
		t.Fatalf("%s: INTERNAL for body %x: %s", method, body, resp.GetMessage())
	}
}
