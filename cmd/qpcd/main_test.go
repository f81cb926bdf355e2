package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// qpcdBin is the real binary, built once for these tests.
var qpcdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qpcd-bin")
	if err != nil {
		panic(err)
	}
	qpcdBin = filepath.Join(dir, "qpcd")
	if out, err := exec.Command("go", "build", "-o", qpcdBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building qpcd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if err := pgtest.StopShared(); err != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// cleanEnv drops QPC_* from the inherited environment so tests see only their own.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QPC_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

type daemon struct {
	cmd   *exec.Cmd
	lines chan map[string]any
	ready map[string]any
}

// startDaemon runs qpcd with JSON logs on ephemeral loopback ports and waits
// for its "ready" line.
func startDaemon(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	args = append([]string{"--data-dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--log-format", "json"}, args...)
	cmd := exec.Command(qpcdBin, args...)
	cmd.Dir = filepath.Dir(dir)
	cmd.Env = cleanEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, lines: make(chan map[string]any, 100)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				d.lines <- m
			} else {
				d.lines <- map[string]any{"msg": "non-json: " + sc.Text()}
			}
		}
		close(d.lines)
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	d.ready = d.waitLine(t, func(m map[string]any) bool { return strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") })
	return d
}

func (d *daemon) waitLine(t *testing.T, match func(map[string]any) bool) map[string]any {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case m, ok := <-d.lines:
			if !ok {
				t.Fatal("qpcd exited before the expected log line")
			}
			if match(m) {
				return m
			}
		case <-timeout:
			t.Fatal("timed out waiting for a qpcd log line")
		}
	}
}

// stop sends SIGTERM and returns the exit code.
func (d *daemon) stop(t *testing.T) int {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range d.lines {
		}
	}()
	err := d.cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func TestDevModeFirstAndSecondStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d := startDaemon(t, dir)
	r := d.ready
	if r["level"] != "WARN" || !strings.Contains(fmt.Sprint(r["msg"]), "generated on first start") ||
		!strings.Contains(fmt.Sprint(r["msg"]), "back it up apart from the database") {
		t.Fatalf("first start should warn what was generated and what the operator must do: %v", r)
	}
	for _, k := range []string{"quic", "ops", "data_dir", "db", "db_key_file", "tls_cert", "cert_sha256"} {
		if fmt.Sprint(r[k]) == "" || r[k] == nil {
			t.Errorf("ready line lacks %q: %v", k, r)
		}
	}
	fp := fmt.Sprint(r["cert_sha256"])
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(fp) {
		t.Fatalf("fingerprint %q", fp)
	}
	mode := func(p string) os.FileMode {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	if m := mode(dir); m != 0o700 {
		t.Errorf("data dir mode %o, want 700", m)
	}
	keyFile := filepath.Join(dir, "db.key")
	if m := mode(keyFile); m != 0o600 {
		t.Errorf("db.key mode %o, want 600", m)
	}
	key1, _ := os.ReadFile(keyFile)
	if !regexp.MustCompile(`^[0-9a-f]{64}\n?$`).Match(key1) {
		t.Fatalf("db.key is not 32 bytes of hex")
	}
	if _, err := os.Stat(filepath.Join(dir, "qpcd.db")); err != nil {
		t.Fatal(err)
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("SIGTERM exit code %d, want 0", code)
	}

	d2 := startDaemon(t, dir)
	if d2.ready["level"] != "INFO" || d2.ready["generated"] != nil {
		t.Fatalf("second start regenerated something: %v", d2.ready)
	}
	if d2.ready["cert_sha256"] != fp {
		t.Fatal("certificate changed between starts")
	}
	key2, _ := os.ReadFile(keyFile)
	if string(key1) != string(key2) {
		t.Fatal("db.key changed between starts")
	}
	if code := d2.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func TestWrongKeyStopsStartup(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir)
	d.stop(t)
	cmd := exec.Command(qpcdBin, "--data-dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0")
	cmd.Env = cleanEnv("QPC_DB_KEY=" + strings.Repeat("17", 32))
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "wrong database key") || strings.Contains(string(out), strings.Repeat("17", 32)) {
		t.Fatalf("unclear or leaky error:\n%s", out)
	}
}

// runQpcd runs a short-lived qpcd command and returns its exit code and output.
func runQpcd(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(qpcdBin, args...)
	cmd.Env = cleanEnv(env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func TestConfigInvalidValuesExit2WithOneLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unknown := write("unknown.yaml", "listen: 127.0.0.1:7443\nbogus_option: 1\n")
	shortKey := write("short.key", "abcd\n")
	cases := []struct {
		name     string
		env      []string
		args     []string
		mentions []string
	}{
		{"negative duration", []string{"QPC_LIMITS_IDLE_TIMEOUT=-5s"}, nil, []string{"limits.idle_timeout", "QPC_LIMITS_IDLE_TIMEOUT", `"-5s"`, "expected"}},
		{"unreadable key file", nil, []string{"--db-key-file", filepath.Join(dir, "missing.key")}, []string{"db.key_file", "missing.key", "expected"}},
		{"key not 32 bytes", nil, []string{"--db-key-file", shortKey}, []string{"db.key_file", "32 bytes"}},
		{"inline key not hex", []string{"QPC_DB_KEY=not-hex"}, nil, []string{"db.key", "QPC_DB_KEY", "[REDACTED]", "64 hex"}},
		{"port out of range", nil, []string{"--listen", "127.0.0.1:70000"}, []string{"listen", "127.0.0.1:70000", "expected"}},
		{"unknown option in file", nil, []string{"--config", unknown}, []string{"bogus_option", "expected"}},
		{"bad registration", []string{"QPC_AUTH_REGISTRATION=maybe"}, nil, []string{"auth.registration", `"maybe"`, "open"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runQpcd(t, c.env, append([]string{"config", "check"}, c.args...)...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, stderr)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 {
				t.Fatalf("want one line, got %d:\n%s", n+1, stderr)
			}
			for _, m := range c.mentions {
				if !strings.Contains(stderr, m) {
					t.Errorf("error %q does not mention %q", stderr, m)
				}
			}
			// The server itself refuses the same configuration the same way.
			if code, _, _ := runQpcd(t, c.env, append([]string{"--data-dir", t.TempDir()}, c.args...)...); code != 2 {
				t.Fatalf("qpcd started with an invalid configuration (exit %d)", code)
			}
		})
	}
}

func TestConfigPrecedenceAndPrint(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "qpcd.yaml")
	os.WriteFile(file, []byte("log:\n  level: debug\n  format: json\nlimits:\n  max_connections: 10\n  rate_limit: 7\ndb:\n  key: "+strings.Repeat("ab", 32)+"\n"), 0o600)
	code, out, stderr := runQpcd(t,
		[]string{"QPC_LOG_LEVEL=warn", "QPC_LIMITS_MAX_CONNECTIONS=20"},
		"config", "print", "--config", file, "--max-connections", "30")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"format: json",        // file over default
		"level: warn",         // env over file
		"max_connections: 30", // flag over env
		"rate_limit: 7",       // file value kept
		"registration: open",  // default
		"key: '[REDACTED]'",   // secret redacted
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config print lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, strings.Repeat("ab", 32)) {
		t.Fatal("config print leaks the inline key")
	}
	if code, out, _ := runQpcd(t, nil, "config", "check", "--config", file); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("config check: %d %s", code, out)
	}
}

func TestVersionAndUsage(t *testing.T) {
	if code, out, _ := runQpcd(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "qpcd ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, _ := runQpcd(t, nil, "--no-such-flag"); code != 2 {
		t.Fatalf("unknown flag exit %d, want 2", code)
	}
}

// On the PostgreSQL backend: qpcd starts, says which backend it serves
// from, and stops cleanly; each start-up failure is one line naming the
// option and the fix, with the right exit code and never the password.
func TestPostgresBackendStartAndStartupErrors(t *testing.T) {
	c := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t)
	dsnFile := filepath.Join(t.TempDir(), "postgres.dsn")
	if err := os.WriteFile(dsnFile, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"}

	cmd := exec.Command(qpcdBin, append(args, "--log-format", "json")...)
	cmd.Env = cleanEnv("QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE="+dsnFile)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, lines: make(chan map[string]any, 100)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				d.lines <- m
			}
		}
		close(d.lines)
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := d.waitLine(t, func(m map[string]any) bool { return strings.HasPrefix(fmt.Sprint(m["msg"]), "qpcd ready") })
	if ready["backend"] != "postgres" || strings.Contains(fmt.Sprint(ready), c.Password) {
		t.Fatalf("ready line %v", ready)
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}

	wrongPW := strings.Replace(dsn, ":"+c.Password+"@", ":not-the-password@", 1)
	for _, tc := range []struct {
		name string
		env  []string
		code int
		want string
	}{
		{"wrong password", []string{"QPC_POSTGRES_DSN=" + wrongPW}, 1, "check the user and password in postgres.dsn"},
		{"unreachable", []string{"QPC_POSTGRES_DSN=postgres://qpc:pw@127.0.0.1:1/qpc?sslmode=disable", "QPC_POSTGRES_CONNECT_TIMEOUT=2s"}, 1, "PostgreSQL unreachable"},
		{"missing database", []string{"QPC_POSTGRES_DSN=" + c.DSN("no_such_database")}, 1, "createdb"},
		{"no DSN", nil, 2, "postgres.dsn"},
		{"bad DSN", []string{"QPC_POSTGRES_DSN=postgres://qpc:s3cret@[::1"}, 2, "postgres.dsn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runQpcd(t, append([]string{"QPC_STORE_BACKEND=postgres"}, tc.env...), args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d (want %d), stderr:\n%s", code, tc.code, errOut)
			}
			if strings.Contains(errOut, c.Password) || strings.Contains(errOut, "s3cret") || strings.Contains(errOut, "not-the-password") {
				t.Fatalf("password in the output:\n%s", errOut)
			}
			if strings.Contains(errOut, "panic") || strings.Contains(errOut, "goroutine ") {
				t.Fatalf("crash:\n%s", errOut)
			}
		})
	}
}

// TestKeyFilesOpenToOthersRefused: a database or TLS key file that group or
// others may read is a configuration error (exit 2) naming the option, the
// file, its mode and the chmod fix; once fixed, qpcd starts.
func TestKeyFilesOpenToOthersRefused(t *testing.T) {
	dir := t.TempDir()
	startDaemon(t, dir).stop(t) // generates db.key and the TLS key pair, 0600
	dbKey := filepath.Join(dir, "db.key")
	tlsKey := filepath.Join(dir, "tls", "key.pem")
	cases := []struct {
		option, path string
		mode         os.FileMode
	}{
		{"db.key_file", dbKey, 0o644},
		{"db.key_file", dbKey, 0o640},
		{"tls.key_file", tlsKey, 0o644},
		{"tls.key_file", tlsKey, 0o600 | 0o020},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s %04o", c.option, uint32(c.mode)), func(t *testing.T) {
			if err := os.Chmod(c.path, c.mode); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = os.Chmod(c.path, 0o600) }()
			for _, args := range [][]string{{"config", "check", "--data-dir", dir}, {"--data-dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"}} {
				code, _, stderr := runQpcd(t, nil, args...)
				if code != 2 {
					t.Fatalf("qpcd %v: exit %d, want 2; stderr: %s", args, code, stderr)
				}
				for _, m := range []string{c.option, c.path, fmt.Sprintf("it has mode %04o; run: chmod 600 %s", uint32(c.mode), c.path)} {
					if !strings.Contains(stderr, m) {
						t.Errorf("qpcd %v: error %q does not mention %q", args, stderr, m)
					}
				}
			}
		})
	}
	startDaemon(t, dir).stop(t) // 0600 again: starts
}
