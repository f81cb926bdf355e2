package auth

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer collects log output from concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	s   *Service
	db  *store.DB
	clk *clock
	log *syncBuffer
	dir string
	key secret.Bytes
}

func openDB(t testing.TB, dir string, key secret.Bytes) *store.DB {
	t.Helper()
	return storetest.Open(t)
}

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	raw := make([]byte, store.KeySize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	e := &env{clk: &clock{t: time.UnixMilli(1764000000000)}, log: &syncBuffer{}, dir: t.TempDir(), key: secret.New(raw)}
	e.db = openDB(t, e.dir, e.key)
	t.Cleanup(func() { _ = e.db.Close() })
	lg, err := obs.NewLogger(e.log, "debug", "text")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{DB: e.db, Now: e.clk.Now, Logger: lg, Audit: obs.NewAudit(lg)}
	if mod != nil {
		mod(&o)
	}
	e.s, err = New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.s.Close)
	return e
}

type dev struct {
	account, id string
	priv        ed25519.PrivateKey
}

func genKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func (e *env) register(t testing.TB, name string) dev {
	t.Helper()
	pub, priv := genKey(t)
	acc, id, err := e.s.Register(context.Background(), RegisterParams{AccountName: name, SignatureKey: pub, DeviceName: "d"})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return dev{account: acc, id: id, priv: priv}
}

func (e *env) login(t testing.TB, d dev) Tokens {
	t.Helper()
	ctx := context.Background()
	nonce, _, err := e.s.Challenge(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.s.Login(ctx, d.id, nonce, ed25519.Sign(d.priv, LoginMessage(d.id, nonce)))
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	return tok
}

// reauth signs a fresh re-authentication challenge for one change by d.
func (e *env) reauth(t testing.TB, d dev, p Purpose, param []byte) Reauth {
	t.Helper()
	a := Actor{AccountID: d.account, DeviceID: d.id}
	c, _, err := e.s.ReauthChallenge(context.Background(), a, p, param)
	if err != nil {
		t.Fatalf("reauth challenge: %v", err)
	}
	return Reauth{Challenge: c, Signature: ed25519.Sign(d.priv, ReauthMessage(p, d.account, d.id, ReauthBinding(param), c))}
}

// addDevice adds a device with key pub to d's account, re-authenticated by d.
func (e *env) addDevice(d dev, pub []byte, name string, t testing.TB) (string, error) {
	return e.s.AddDevice(context.Background(), Actor{AccountID: d.account, DeviceID: d.id}, pub, name, e.reauth(t, d, PurposeAddDevice, pub))
}

// revoke revokes target from d's account, re-authenticated by d.
func (e *env) revoke(t testing.TB, d dev, target string) error {
	return e.s.RevokeDevice(context.Background(), Actor{AccountID: d.account, DeviceID: d.id}, target, e.reauth(t, d, PurposeRevokeDevice, []byte(target)))
}

func TestValidAccountName(t *testing.T) {
	for name, ok := range map[string]bool{
		"a": true, "alice": true, "a.b_c-d": true, "0day": true, strings.Repeat("x", 32): true,
		"": false, strings.Repeat("x", 33): false, "Alice": false, ".a": false, "-a": false, "_a": false,
		"a/b": false, "a b": false, "é": false, "a\x00": false,
	} {
		if got := ValidAccountName(name); got != ok {
			t.Errorf("ValidAccountName(%q) = %v, want %v", name, got, ok)
		}
	}
}

func TestRegisterRules(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	if !ValidID(a.account) || !ValidID(a.id) || a.account == a.id {
		t.Fatalf("ids %q %q", a.account, a.id)
	}
	pub, _ := genKey(t)
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "alice", SignatureKey: pub}); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("same name: %v", err)
	}
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: a.priv.Public().(ed25519.PublicKey)}); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("same key: %v", err)
	}
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "Bob", SignatureKey: pub}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad name: %v", err)
	}
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: make([]byte, 32)}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("zero key: %v", err)
	}
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: pub[:31]}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("short key: %v", err)
	}
	// A disabled account's name stays taken: names are never reused.
	if err := e.s.DisableAccount(ctx, a.account); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "alice", SignatureKey: pub}); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("name of a disabled account: %v", err)
	}
	if !strings.Contains(e.log.String(), "event=account.register") {
		t.Fatal("no account.register audit event")
	}
}

func TestRegistrationClosed(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Registration = config.RegistrationClosed })
	pub, _ := genKey(t)
	if _, _, err := e.s.Register(context.Background(), RegisterParams{AccountName: "alice", SignatureKey: pub}); !errors.Is(err, ErrRegistrationClosed) {
		t.Fatalf("got %v", err)
	}
}

func TestRegistrationByInvite(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Registration = config.RegistrationInvite })
	ctx := context.Background()
	reg := func(name, code string) error {
		pub, _ := genKey(t)
		_, _, err := e.s.Register(ctx, RegisterParams{AccountName: name, SignatureKey: pub, InviteCode: code})
		return err
	}
	// No code is not a bad code: the user is told to ask for one.
	if err := reg("a", ""); !errors.Is(err, ErrInviteRequired) || errors.Is(err, ErrInviteInvalid) || strings.Contains(err.Error(), "invalid") {
		t.Fatalf("no code: %v", err)
	}
	if err := reg("a", "nonsense"); !errors.Is(err, ErrInviteInvalid) {
		t.Fatalf("bad code: %v", err)
	}
	code, inv, err := e.s.CreateInvite(ctx, "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.log.String(), code) {
		t.Fatal("invite code in the log")
	}
	// Codes may be typed in upper case with dashes.
	typed := strings.ToUpper(code[:8]) + "-" + code[8:]
	if err := reg("a", typed); err != nil {
		t.Fatalf("valid code: %v", err)
	}
	if err := reg("b", code); !errors.Is(err, ErrInviteInvalid) {
		t.Fatalf("second use: %v", err)
	}
	// A failed registration (name taken) does not burn the invite.
	code2, _, err := e.s.CreateInvite(ctx, "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg("a", code2); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("taken name: %v", err)
	}
	if err := reg("c", code2); err != nil {
		t.Fatalf("invite after failed attempt: %v", err)
	}
	// Expired and revoked invites are refused.
	code3, _, _ := e.s.CreateInvite(ctx, "ops", time.Minute)
	e.clk.Advance(time.Minute)
	if err := reg("d", code3); !errors.Is(err, ErrInviteInvalid) {
		t.Fatalf("expired: %v", err)
	}
	code4, inv4, _ := e.s.CreateInvite(ctx, "ops", time.Hour)
	if err := e.s.RevokeInvite(ctx, inv4.ID); err != nil {
		t.Fatal(err)
	}
	if err := reg("e", code4); !errors.Is(err, ErrInviteInvalid) {
		t.Fatalf("revoked: %v", err)
	}
	if err := e.s.RevokeInvite(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	list, err := e.s.ListInvites(ctx)
	if err != nil || len(list) != 4 {
		t.Fatalf("list: %v %v", list, err)
	}
	var used Invite
	for _, i := range list {
		if i.ID == inv.ID {
			used = i
		}
	}
	if used.UsedBy == "" || used.UsedAt.IsZero() {
		t.Fatalf("used invite not marked: %+v", used)
	}
	if _, _, err := e.s.CreateInvite(ctx, "ops", 0); err == nil {
		t.Fatal("zero lifetime accepted")
	}
	// Concurrent registrations with one code: exactly one wins.
	code5, _, _ := e.s.CreateInvite(ctx, "ops", time.Hour)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = reg("race"+string(rune('a'+i)), code5)
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrInviteInvalid):
			t.Fatalf("race: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d registrations used one invite", wins)
	}
}

func TestLoginChallengeResponse(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	tok := e.login(t, a)
	id, err := e.s.Authenticate(ctx, tok.AccessToken)
	if err != nil || id.AccountID != a.account || id.DeviceID != a.id || id.AccountName != "alice" {
		t.Fatalf("authenticate: %+v %v", id, err)
	}
	if tok.RefreshToken.Len() != RefreshTokenSize || !tok.AccessExpires.Equal(e.clk.Now().Add(DefaultAccessTTL).Truncate(time.Millisecond)) {
		t.Fatalf("tokens: %d %v", tok.RefreshToken.Len(), tok.AccessExpires)
	}

	// A bad signature fails, and does not use the challenge up: whoever
	// lacks the key cannot burn the device's challenge.
	nonce, _, _ := e.s.Challenge(ctx, a.id)
	// Sign a different nonce (first byte flipped, so never equal to the real one).
	bad := ed25519.Sign(a.priv, LoginMessage(a.id, append([]byte{nonce[0] ^ 0xff}, nonce[1:]...)))
	if _, err := e.s.Login(ctx, a.id, nonce, bad); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("bad signature: %v", err)
	}
	if _, err := e.s.Login(ctx, a.id, nonce, ed25519.Sign(a.priv, LoginMessage(a.id, nonce))); err != nil {
		t.Fatalf("the device's own answer after a failed guess: %v", err)
	}
	// A nonce is single use.
	nonce, _, _ = e.s.Challenge(ctx, a.id)
	good := ed25519.Sign(a.priv, LoginMessage(a.id, nonce))
	if _, err := e.s.Login(ctx, a.id, nonce, good); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Login(ctx, a.id, nonce, good); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("replayed login: %v", err)
	}
	// Expired nonce.
	nonce, exp, _ := e.s.Challenge(ctx, a.id)
	e.clk.Advance(exp.Sub(e.clk.Now()))
	if _, err := e.s.Login(ctx, a.id, nonce, ed25519.Sign(a.priv, LoginMessage(a.id, nonce))); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("expired nonce: %v", err)
	}
	// Another device's key cannot log in as this device.
	b := e.register(t, "bob")
	nonce, _, _ = e.s.Challenge(ctx, a.id)
	if _, err := e.s.Login(ctx, a.id, nonce, ed25519.Sign(b.priv, LoginMessage(a.id, nonce))); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("other key: %v", err)
	}
	// A nonce issued for one device does not log in another.
	nonce, _, _ = e.s.Challenge(ctx, a.id)
	if _, err := e.s.Login(ctx, b.id, nonce, ed25519.Sign(b.priv, LoginMessage(b.id, nonce))); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("cross-device nonce: %v", err)
	}
	// Unknown devices get a nonce too, which logs in nothing.
	ghost := strings.Repeat("ab", 16)
	nonce, _, err = e.s.Challenge(ctx, ghost)
	if err != nil || len(nonce) != NonceSize {
		t.Fatalf("unknown device challenge: %v", err)
	}
	if _, err := e.s.Login(ctx, ghost, nonce, ed25519.Sign(a.priv, LoginMessage(ghost, nonce))); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("unknown device: %v", err)
	}
	// Handing out challenges stores nothing.
	for range 100 {
		if _, _, err := e.s.Challenge(ctx, a.id); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	_ = e.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT count(*) FROM used_challenges").Scan(&n)
	})
	if n > 3 {
		t.Fatalf("%d challenges recorded; only answered ones are", n)
	}
	if !strings.Contains(e.log.String(), "event=auth.login_failed") || !strings.Contains(e.log.String(), "event=auth.login ") {
		t.Fatal("login audit events missing")
	}
}

func TestTokenVerification(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	tok := e.login(t, a).AccessToken

	if _, err := e.s.Authenticate(ctx, ""); !errors.Is(err, ErrTokenMissing) {
		t.Fatalf("missing: %v", err)
	}
	raw, sig, ok := splitToken(tok)
	if !ok {
		t.Fatal("own token does not split")
	}
	enc := base64.RawURLEncoding.EncodeToString
	for name, bad := range map[string]string{
		"garbage":       "hello",
		"prefix":        "qpcat2." + tok[len(tokenPrefix):],
		"no dot":        tokenPrefix + enc(raw) + enc(sig),
		"extra part":    tok + ".x",
		"short claims":  tokenPrefix + enc(raw[:80]) + "." + enc(sig),
		"short sig":     tokenPrefix + enc(raw) + "." + enc(sig[:63]),
		"bad base64":    tokenPrefix + "!!!" + "." + enc(sig),
		"padded":        tokenPrefix + enc(raw) + "." + base64.URLEncoding.EncodeToString(sig),
		"version":       tokenPrefix + enc(append([]byte{2}, raw[1:]...)) + "." + enc(sig),
		"too long":      tok + strings.Repeat("A", MaxTokenLen),
		"negative time": tokenPrefix + enc(setBytes(raw, 57, bytes.Repeat([]byte{0xff}, 8))) + "." + enc(sig),
	} {
		if _, err := e.s.Authenticate(ctx, bad); !errors.Is(err, ErrTokenMalformed) {
			t.Errorf("%s: %v, want ErrTokenMalformed", name, err)
		}
	}
	// Forged: any claim changed, a flipped signature bit, an unknown key id,
	// a token signed by a key the server never had.
	later := setBytes(raw, 65, be64(uint64(e.clk.Now().Add(24*time.Hour).UnixMilli())))
	otherDev := setBytes(raw, 25, make([]byte, 16))
	flipped := append([]byte(nil), sig...)
	flipped[10] ^= 1
	unknownKid := setBytes(raw, 1, []byte("12345678"))
	_, foreign, _ := ed25519.GenerateKey(rand.Reader)
	fk := &signingKey{id: hex.EncodeToString(raw[1:9]), priv: secret.New(foreign)}
	for name, bad := range map[string]string{
		"extended expiry": tokenPrefix + enc(later) + "." + enc(sig),
		"other device":    tokenPrefix + enc(otherDev) + "." + enc(sig),
		"flipped sig":     tokenPrefix + enc(raw) + "." + enc(flipped),
		"unknown key id":  tokenPrefix + enc(unknownKid) + "." + enc(sig),
		"foreign key":     fk.sign(raw),
	} {
		if _, err := e.s.Authenticate(ctx, bad); !errors.Is(err, ErrTokenForged) {
			t.Errorf("%s: %v, want ErrTokenForged", name, err)
		}
	}
	// Expiry follows the injected clock.
	e.clk.Advance(DefaultAccessTTL - time.Millisecond)
	if _, err := e.s.Authenticate(ctx, tok); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	e.clk.Advance(time.Millisecond)
	if _, err := e.s.Authenticate(ctx, tok); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	// Revocation and account state are read on every call.
	tok = e.login(t, a).AccessToken
	b := e.register(t, "bob")
	btok := e.login(t, b).AccessToken
	if err := e.s.DisableAccount(ctx, b.account); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Authenticate(ctx, btok); !errors.Is(err, ErrAccountDisabled) && !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("disabled account: %v", err)
	}
	if err := e.s.EnableAccount(ctx, b.account); err != nil {
		t.Fatal(err)
	}
	// Tokens from before the account was disabled stay dead.
	if _, err := e.s.Authenticate(ctx, btok); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("token from before disable: %v", err)
	}
	if _, err := e.s.Authenticate(ctx, e.login(t, b).AccessToken); err != nil {
		t.Fatalf("re-enabled account: %v", err)
	}
	if err := e.revoke(t, a, a.id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Authenticate(ctx, tok); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("revoked device: %v", err)
	}
	nonce, _, _ := e.s.Challenge(ctx, a.id)
	if _, err := e.s.Login(ctx, a.id, nonce, ed25519.Sign(a.priv, LoginMessage(a.id, nonce))); !errors.Is(err, ErrDeviceRevoked) {
		t.Fatalf("login of a revoked device: %v", err)
	}
	if err := (Identity{DeviceID: a.id}).CheckDevice(b.id); !errors.Is(err, ErrWrongDevice) {
		t.Fatalf("CheckDevice: %v", err)
	}
}

func setBytes(b []byte, off int, v []byte) []byte {
	out := append([]byte(nil), b...)
	copy(out[off:], v)
	return out
}

func be64(v uint64) []byte {
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return b
}

func TestRefreshRotationAndReuse(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	t1 := e.login(t, a)
	rt1 := t1.RefreshToken.Clone()

	e.clk.Advance(time.Minute)
	t2, err := e.s.Refresh(ctx, a.id, rt1)
	if err != nil {
		t.Fatal(err)
	}
	if t2.RefreshToken.Equal(rt1) || t2.AccessToken == t1.AccessToken {
		t.Fatal("refresh did not rotate")
	}
	if _, err := e.s.Authenticate(ctx, t2.AccessToken); err != nil {
		t.Fatal(err)
	}
	devs, _ := e.s.ListDevices(ctx, a.account)
	if !devs[0].LastSeen.Equal(e.clk.Now().Truncate(time.Millisecond)) {
		t.Fatalf("last seen %v", devs[0].LastSeen)
	}
	// Wrong device: refused, token not consumed.
	b := e.register(t, "bob")
	if _, err := e.s.Refresh(ctx, b.id, t2.RefreshToken); !errors.Is(err, ErrWrongDevice) {
		t.Fatalf("wrong device: %v", err)
	}
	// Unknown and malformed tokens.
	if _, err := e.s.Refresh(ctx, a.id, secret.New(make([]byte, 32))); !errors.Is(err, ErrRefreshInvalid) {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := e.s.Refresh(ctx, a.id, secret.New(make([]byte, 5))); !errors.Is(err, ErrRefreshInvalid) {
		t.Fatalf("short: %v", err)
	}
	// A second login opens another family.
	other := e.login(t, a)

	// Replaying rt1 revokes everything of the device.
	if _, err := e.s.Refresh(ctx, a.id, rt1); !errors.Is(err, ErrRefreshReused) {
		t.Fatalf("replay: %v", err)
	}
	if _, err := e.s.Refresh(ctx, a.id, t2.RefreshToken); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("family member after reuse: %v", err)
	}
	if _, err := e.s.Refresh(ctx, a.id, other.RefreshToken); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("other family after reuse: %v", err)
	}
	for _, tok := range []string{t1.AccessToken, t2.AccessToken, other.AccessToken} {
		if _, err := e.s.Authenticate(ctx, tok); !errors.Is(err, ErrTokenRevoked) {
			t.Fatalf("access token after reuse: %v", err)
		}
	}
	if !strings.Contains(e.log.String(), "event=token.refresh_reuse") {
		t.Fatal("no refresh_reuse audit event")
	}
	// Other devices are untouched, and the device can log in again.
	bt := e.login(t, b)
	if _, err := e.s.Authenticate(ctx, bt.AccessToken); err != nil {
		t.Fatal(err)
	}
	t3 := e.login(t, a)
	if _, err := e.s.Authenticate(ctx, t3.AccessToken); err != nil {
		t.Fatalf("fresh login after reuse: %v", err)
	}
	// Expiry.
	e.clk.Advance(DefaultRefreshTTL)
	if _, err := e.s.Refresh(ctx, a.id, t3.RefreshToken); !errors.Is(err, ErrRefreshExpired) {
		t.Fatalf("expired: %v", err)
	}
	// Nothing secret reached the log.
	out := e.log.String()
	for _, tok := range []Tokens{t1, t2, t3, bt} {
		if strings.Contains(out, tok.AccessToken) || strings.Contains(out, hex.EncodeToString(tok.RefreshToken.Reveal())) ||
			strings.Contains(out, base64.RawURLEncoding.EncodeToString(tok.RefreshToken.Reveal())) {
			t.Fatal("a token reached the log")
		}
	}
}

func TestRotateSigningKey(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	old := e.login(t, a).AccessToken
	oldKey := e.s.keys.current()
	oldPriv := oldKey.priv.Clone()

	e.clk.Advance(time.Minute)
	kid, err := e.s.RotateSigningKey(ctx)
	if err != nil || kid == oldKey.id {
		t.Fatalf("rotate: %q %v", kid, err)
	}
	fresh := e.login(t, a).AccessToken
	c, err := e.s.VerifySignature(ctx, fresh)
	if err != nil || c.KeyID != kid {
		t.Fatalf("new token key id %q, want %q (%v)", c.KeyID, kid, err)
	}
	if _, err := e.s.Authenticate(ctx, old); err != nil {
		t.Fatalf("token of the retired key: %v", err)
	}
	// The retired key's private half is gone from the database.
	var n int
	_ = e.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT count(*) FROM token_keys WHERE private_key IS NOT NULL").Scan(&n)
	})
	if n != 1 {
		t.Fatalf("%d keys with a private half, want 1", n)
	}
	// A stolen retired key cannot mint tokens dated after its retirement.
	e.clk.Advance(time.Second)
	stolen := &signingKey{id: oldKey.id, priv: oldPriv}
	claims := Claims{KeyID: oldKey.id, AccountID: a.account, DeviceID: a.id, TokenID: strings.Repeat("0", 32),
		IssuedAt: e.clk.Now(), ExpiresAt: e.clk.Now().Add(time.Minute)}
	b, _ := claims.marshal()
	if _, err := e.s.Authenticate(ctx, stolen.sign(b)); !errors.Is(err, ErrTokenForged) {
		t.Fatalf("post-retirement token: %v", err)
	}
	// Old tokens die by their expiry.
	e.clk.Advance(DefaultAccessTTL)
	if _, err := e.s.Authenticate(ctx, old); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("old token after TTL: %v", err)
	}

	// Keys persist: a new Service on the same database verifies the tokens
	// signed before and keeps the same active key.
	fresh = e.login(t, a).AccessToken
	s2, err := New(ctx, Options{DB: e.db, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.keys.current().id != kid {
		t.Fatal("restart changed the active key")
	}
	if _, err := s2.Authenticate(ctx, fresh); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	// A key rotated by another instance is picked up on first sight.
	kid3, err := s2.RotateSigningKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(keyReloadEvery)
	nt, _, err := s2.issueAccess(a.account, a.id, 0, e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if c, err := e.s.Authenticate(ctx, nt); err != nil || c.TokenID == "" {
		t.Fatalf("token of a key rotated elsewhere (%s): %v", kid3, err)
	}
}

func TestDevicesAndAdmin(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxDevices = 2 })
	ctx := context.Background()
	a := e.register(t, "alice")
	pub, _ := genKey(t)
	d2, err := e.addDevice(a, pub, "phone", t)
	if err != nil {
		t.Fatal(err)
	}
	pub3, _ := genKey(t)
	if _, err := e.addDevice(a, pub3, "third", t); !errors.Is(err, ErrTooManyDevices) {
		t.Fatalf("device cap: %v", err)
	}
	d, err := e.s.Device(ctx, d2)
	if err != nil || d.AccountID != a.account || d.AccountName != "alice" || !bytes.Equal(d.SignatureKey, pub) || !d.Active() {
		t.Fatalf("Device: %+v %v", d, err)
	}
	if d.Credential() != "alice/"+d2 {
		t.Fatalf("credential %q", d.Credential())
	}
	if _, err := e.s.Device(ctx, strings.Repeat("0", 32)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := e.s.Device(ctx, "x"); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("bad id: %v", err)
	}
	b := e.register(t, "bob")
	if err := e.revoke(t, b, d2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoking another account's device: %v", err)
	}
	if err := e.s.AdminRevokeDevice(ctx, d2); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.s.Device(ctx, d2); d.Status != StatusRevoked || d.Active() {
		t.Fatalf("after revoke: %+v", d)
	}
	// A key stays bound to its device, even after revocation.
	if _, err := e.addDevice(a, pub, "again", t); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("same key: %v", err)
	}
	// The revoked device no longer counts toward the cap.
	if _, err := e.addDevice(a, pub3, "third", t); err != nil {
		t.Fatal(err)
	}
	acc, devs, err := e.s.LookupAccount(ctx, "alice")
	if err != nil || acc.ID != a.account || len(devs) != 2 {
		t.Fatalf("lookup: %+v %d %v", acc, len(devs), err)
	}
	for _, d := range devs {
		if d.ID == d2 {
			t.Fatal("lookup lists a revoked device")
		}
	}
	if _, _, err := e.s.LookupAccount(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup unknown: %v", err)
	}
	all, err := e.s.ListDevices(ctx, a.account)
	if err != nil || len(all) != 3 {
		t.Fatalf("list: %d %v", len(all), err)
	}
	if _, err := e.s.ListDevices(ctx, strings.Repeat("0", 32)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("list unknown account: %v", err)
	}
	accs, err := e.s.ListAccounts(ctx, "", 0)
	if err != nil || len(accs) != 2 || accs[0].Name != "alice" || accs[1].Name != "bob" {
		t.Fatalf("accounts: %+v %v", accs, err)
	}
	if page, _ := e.s.ListAccounts(ctx, "alice", 1); len(page) != 1 || page[0].Name != "bob" {
		t.Fatalf("page: %+v", page)
	}
	if err := e.s.DisableAccount(ctx, b.account); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.s.GetAccount(ctx, b.account); got.Status != StatusDisabled {
		t.Fatalf("status %q", got.Status)
	}
	nonce, _, _ := e.s.Challenge(ctx, b.id)
	if _, err := e.s.Login(ctx, b.id, nonce, ed25519.Sign(b.priv, LoginMessage(b.id, nonce))); !errors.Is(err, ErrAccountDisabled) {
		t.Fatalf("login of a disabled account: %v", err)
	}
	pub4, _ := genKey(t)
	if _, err := e.addDevice(b, pub4, "x", t); !errors.Is(err, ErrAccountDisabled) {
		t.Fatalf("add device to disabled account: %v", err)
	}
	if _, err := e.s.GetAccount(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if err := e.s.DisableAccount(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("disable unknown: %v", err)
	}
}

func TestOptions(t *testing.T) {
	if _, err := New(context.Background(), Options{}); err == nil {
		t.Fatal("nil DB accepted")
	}
	e := newEnv(t, nil)
	if _, err := New(context.Background(), Options{DB: e.db, Registration: "sometimes"}); err == nil {
		t.Fatal("unknown policy accepted")
	}
}

// Tokens issued while the key rotates are all valid: no token is ever
// signed with a wiped key.
func TestRotateDuringLogins(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	var wg sync.WaitGroup
	toks := make(chan string, 64)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 8 {
				nonce, _, err := e.s.Challenge(ctx, a.id)
				if err != nil {
					t.Error(err)
					return
				}
				tok, err := e.s.Login(ctx, a.id, nonce, ed25519.Sign(a.priv, LoginMessage(a.id, nonce)))
				if err != nil {
					t.Error(err)
					return
				}
				toks <- tok.AccessToken
			}
		}()
	}
	for range 5 {
		if _, err := e.s.RotateSigningKey(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(toks)
	n := 0
	for tok := range toks {
		n++
		if _, err := e.s.Authenticate(ctx, tok); err != nil {
			t.Fatalf("token issued during rotation: %v", err)
		}
	}
	if n != 32 {
		t.Fatalf("%d tokens", n)
	}
}

func TestExpiredRefreshTokensAreDropped(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.RefreshTTL = time.Hour })
	ctx := context.Background()
	a := e.register(t, "alice")
	tok := e.login(t, a)
	for range 5 {
		next, err := e.s.Refresh(ctx, a.id, tok.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		tok = next
	}
	count := func() int {
		var n int
		_ = e.db.ReadTx(ctx, func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, "SELECT count(*) FROM refresh_tokens WHERE device_id = ?", a.id).Scan(&n)
		})
		return n
	}
	if n := count(); n != 6 {
		t.Fatalf("%d rows, want 6 (5 used, 1 live)", n)
	}
	e.clk.Advance(time.Hour)
	e.login(t, a)
	if n := count(); n != 1 {
		t.Fatalf("%d rows after expiry and a login, want 1", n)
	}
}
