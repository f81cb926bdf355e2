package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/quicprochat/quicprochat/internal/secret"
)

const testKeyHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // the mode exactly, whatever the umask
		t.Fatal(err)
	}
	return p
}

// load runs Load with an empty environment unless env is given.
func load(t *testing.T, file string, env []string, args ...string) (Config, error) {
	t.Helper()
	if env == nil {
		env = []string{}
	}
	fs := pflag.NewFlagSet("qpcd", pflag.ContinueOnError)
	RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse flags %v: %v", args, err)
	}
	return Load(LoadOptions{File: file, Env: env, Flags: fs})
}

func TestDefaultsLoadAndValidate(t *testing.T) {
	dir := t.TempDir()
	c, err := load(t, "", []string{"QPC_DATA_DIR=" + dir})
	if err != nil {
		t.Fatalf("Load with defaults: %v", err)
	}
	want := Default()
	want.DataDir = dir
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Load() = %+v, want defaults %+v", c, want)
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if err := c.Resolved().Validate(); err != nil {
		t.Fatalf("Resolved defaults must validate before dev files exist: %v", err)
	}
	if c.Limits.MaxPayloadBytes != 5<<20 || c.Limits.RateLimit != 50 ||
		c.Retention.Messages != 7*24*time.Hour || c.KeyPackages.TTL != 24*time.Hour {
		t.Fatalf("defaults drifted from the issue: %+v", c)
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "qpcd.yaml", `
listen: "127.0.0.1:8001"
data_dir: `+dir+`
limits:
  max_connections: 11
  idle_timeout: 90s
  rate_limit: 7.5
auth:
  registration: invite
`, 0o600)
	env := []string{
		"QPC_LISTEN=127.0.0.1:8002",
		"QPC_LIMITS_MAX_CONNECTIONS=22",
		"PATH=/usr/bin",
		"QPC_SOMETHING_ELSE=ignored",
	}

	t.Run("defaults", func(t *testing.T) {
		c, err := load(t, "", []string{"QPC_DATA_DIR=" + dir})
		if err != nil {
			t.Fatal(err)
		}
		if c.Listen != "127.0.0.1:7443" || c.Limits.MaxConnections != 1000 || c.Auth.Registration != "open" {
			t.Fatalf("defaults not applied: %+v", c)
		}
	})
	t.Run("file over defaults", func(t *testing.T) {
		c, err := load(t, file, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.Listen != "127.0.0.1:8001" || c.Limits.MaxConnections != 11 || c.Limits.IdleTimeout != 90*time.Second ||
			c.Limits.RateLimit != 7.5 || c.Auth.Registration != "invite" {
			t.Fatalf("file not applied: %+v", c)
		}
		if c.Limits.KeepAlive != 0 || c.OpsListen != "127.0.0.1:7444" || c.OpsPprof != "off" {
			t.Fatalf("keys absent from the file must keep their defaults: %+v", c)
		}
	})
	t.Run("env over file", func(t *testing.T) {
		c, err := load(t, file, env)
		if err != nil {
			t.Fatal(err)
		}
		if c.Listen != "127.0.0.1:8002" || c.Limits.MaxConnections != 22 {
			t.Fatalf("env did not override file: %+v", c)
		}
		if c.Limits.IdleTimeout != 90*time.Second || c.Auth.Registration != "invite" {
			t.Fatalf("file values not overridden by env must stay: %+v", c)
		}
	})
	t.Run("flags over env", func(t *testing.T) {
		c, err := load(t, file, env, "--listen", "127.0.0.1:8003", "--registration", "closed")
		if err != nil {
			t.Fatal(err)
		}
		if c.Listen != "127.0.0.1:8003" || c.Auth.Registration != "closed" {
			t.Fatalf("flags did not override: %+v", c)
		}
		if c.Limits.MaxConnections != 22 {
			t.Fatalf("an unset flag must not override env (max_connections=%d)", c.Limits.MaxConnections)
		}
	})
	t.Run("unset flag does not override file with its default", func(t *testing.T) {
		c, err := load(t, file, nil, "--log-level", "debug")
		if err != nil {
			t.Fatal(err)
		}
		if c.Limits.MaxConnections != 11 || c.Log.Level != "debug" {
			t.Fatalf("got %+v", c)
		}
	})
	t.Run("empty env value sets empty", func(t *testing.T) {
		c, err := load(t, file, []string{"QPC_OPS_LISTEN="})
		if err != nil {
			t.Fatal(err)
		}
		if c.OpsListen != "" {
			t.Fatalf("QPC_OPS_LISTEN= must disable the ops listener, got %q", c.OpsListen)
		}
	})
	t.Run("later duplicate env wins", func(t *testing.T) {
		c, err := load(t, "", []string{"QPC_DATA_DIR=" + dir, "QPC_LIMITS_RATE_BURST=5", "QPC_LIMITS_RATE_BURST=6"})
		if err != nil {
			t.Fatal(err)
		}
		if c.Limits.RateBurst != 6 {
			t.Fatalf("rate_burst = %d, want 6", c.Limits.RateBurst)
		}
	})
}

func TestInlineKeyWinsAndIsRedacted(t *testing.T) {
	dir := t.TempDir()
	// The inline key wins: a key file named as well is not consulted.
	c, err := load(t, "", []string{"QPC_DATA_DIR=" + dir, "QPC_DB_KEY_FILE=/nonexistent/db.key", "QPC_DB_KEY=" + testKeyHex})
	if err != nil {
		t.Fatal(err)
	}
	if c.DB.Key.Hex() != testKeyHex {
		t.Fatal("inline key not loaded")
	}
	c2, err := load(t, "", []string{"QPC_DATA_DIR=" + dir, "QPC_DB_KEY=" + testKeyHex})
	if err != nil {
		t.Fatal(err)
	}
	if r := c2.Resolved(); r.DB.KeyFile != "" {
		t.Fatalf("Resolved must not invent a key file when an inline key is set: %q", r.DB.KeyFile)
	}

	var buf bytes.Buffer
	if err := c.WriteYAML(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(strings.ToLower(out), testKeyHex[:16]) {
		t.Fatalf("config print leaks the key:\n%s", out)
	}
	if !strings.Contains(out, "key: '[REDACTED]'") && !strings.Contains(out, `key: "[REDACTED]"`) {
		t.Fatalf("config print does not show the key as redacted:\n%s", out)
	}
	if got := c.Redacted()["db"].(map[string]any)["key"]; got != secret.Redacted {
		t.Fatalf("Redacted()[db][key] = %v", got)
	}
	if got := Default().Redacted()["db"].(map[string]any)["key"]; got != "" {
		t.Fatalf("an unset key prints as empty, got %v", got)
	}
}

func TestWriteYAMLRoundTrips(t *testing.T) {
	dir := t.TempDir()
	want := Default()
	want.DataDir = dir
	want.Limits.IdleTimeout = 45 * time.Second
	want.Limits.RateLimit = 12.5
	want.Auth.Registration = "closed"
	var buf bytes.Buffer
	if err := want.WriteYAML(&buf); err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, dir, "printed.yaml", buf.String(), 0o600)
	got, err := load(t, file, nil)
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

func TestInvalidValues(t *testing.T) {
	dir := t.TempDir()
	unreadable := writeFile(t, dir, "unreadable.key", testKeyHex, 0o000)
	shortKey := writeFile(t, dir, "short.key", "abcd\n", 0o600)
	goodKey := writeFile(t, dir, "good.key", testKeyHex+"\n", 0o600)
	openKey := writeFile(t, dir, "open.key", testKeyHex+"\n", 0o644)
	groupKey := writeFile(t, dir, "group key", testKeyHex+"\n", 0o640)
	openTLSKey := writeFile(t, dir, "tls-open.pem", "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n", 0o644)
	base := []string{"QPC_DATA_DIR=" + dir}

	cases := []struct {
		name       string
		yaml       string   // file content, "" = no file
		env        []string // added to base
		args       []string
		key        string // FieldError.Key
		value      string // FieldError.Value
		expect     string // substring of Expected
		skipAsRoot bool
	}{
		{name: "negative duration env", env: []string{"QPC_LIMITS_IDLE_TIMEOUT=-5s"},
			key: "limits.idle_timeout", value: "-5s", expect: "positive duration"},
		{name: "negative duration file", yaml: "retention:\n  messages: -1h\n",
			key: "retention.messages", value: "-1h", expect: "positive duration"},
		{name: "heartbeat too short", env: []string{"QPC_CLUSTER_HEARTBEAT=10ms"},
			key: "cluster.heartbeat", value: "10ms", expect: "at least 100ms"},
		{name: "negative drain", env: []string{"QPC_LIMITS_DRAIN_TIMEOUT=-1s"},
			key: "limits.drain_timeout", value: "-1s", expect: "duration >= 0"},
		{name: "duration type error", env: []string{"QPC_AUTH_ACCESS_TOKEN_TTL=abc"},
			key: "auth.access_token_ttl", value: "abc", expect: "a duration such as 15m"},
		{name: "duration without unit in file", yaml: "limits:\n  long_poll_max: 30\n",
			key: "limits.long_poll_max", value: "30", expect: "a duration such as 5m"},
		{name: "int type error", yaml: "limits:\n  max_connections: lots\n",
			key: "limits.max_connections", value: "lots", expect: "an integer"},
		{name: "int flag below minimum", args: []string{"--max-connections", "0"},
			key: "limits.max_connections", value: "0", expect: ">= 1"},
		{name: "keep-alive not below idle timeout", env: []string{"QPC_LIMITS_KEEP_ALIVE=2m"},
			key: "limits.keep_alive", value: "2m", expect: "shorter than limits.idle_timeout"},
		{name: "per-address cap below one", env: []string{"QPC_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=0"},
			key: "limits.max_connections_per_address", value: "0", expect: ">= 1"},
		{name: "first request timeout zero", yaml: "limits:\n  first_request_timeout: 0s\n",
			key: "limits.first_request_timeout", value: "0s", expect: "positive duration"},
		{name: "bad pprof switch", env: []string{"QPC_OPS_PPROF=yes"},
			key: "ops_pprof", value: "yes", expect: "one of off, on"},
		{name: "refresh shorter than access", env: []string{"QPC_AUTH_REFRESH_TOKEN_TTL=1m"},
			key: "auth.refresh_token_ttl", value: "1m", expect: "longer than auth.access_token_ttl"},
		{name: "payload too small", env: []string{"QPC_LIMITS_MAX_PAYLOAD_BYTES=10"},
			key: "limits.max_payload_bytes", value: "10", expect: "from 1024"},
		{name: "rate limit zero", env: []string{"QPC_LIMITS_RATE_LIMIT=0"},
			key: "limits.rate_limit", value: "0", expect: "> 0"},
		{name: "byte rate zero", env: []string{"QPC_LIMITS_BYTE_RATE=0"},
			key: "limits.byte_rate", value: "0", expect: "bytes per second > 0"},
		{name: "byte burst below the largest request", env: []string{"QPC_LIMITS_BYTE_BURST=1048576"},
			key: "limits.byte_burst", value: "1048576", expect: "at least limits.max_payload_bytes and limits.max_inbox_call_bytes (8388608)"},
		{name: "inbox call cap below the payload cap", env: []string{"QPC_LIMITS_MAX_INBOX_CALL_BYTES=4096"},
			key: "limits.max_inbox_call_bytes", value: "4096", expect: "at least limits.max_payload_bytes (5242880)"},
		{name: "negative quota", yaml: "quota:\n  messages: -1\n",
			key: "quota.messages", value: "-1", expect: ">= 0"},
		{name: "port out of range", env: []string{"QPC_LISTEN=127.0.0.1:70000"},
			key: "listen", value: "127.0.0.1:70000", expect: "to 65535"},
		{name: "port negative", args: []string{"--ops-listen", "127.0.0.1:-1"},
			key: "ops_listen", value: "127.0.0.1:-1", expect: "to 65535"},
		{name: "port not numeric", env: []string{"QPC_LISTEN=127.0.0.1:https"},
			key: "listen", value: "127.0.0.1:https", expect: "to 65535"},
		{name: "no port", yaml: "listen: localhost\n",
			key: "listen", value: "localhost", expect: "host:port"},
		{name: "unknown top-level option", yaml: "listne: 127.0.0.1:7443\n",
			key: "listne", value: "(unknown option)", expect: "documented options"},
		{name: "unknown nested option", yaml: "limits:\n  max_conections: 5\n",
			key: "limits.max_conections", value: "(unknown option)", expect: "documented options"},
		{name: "section not a mapping", yaml: "limits: 5\n",
			key: "limits", value: "5", expect: "a mapping"},
		{name: "mapping where a value is expected", yaml: "listen:\n  host: x\n",
			key: "listen", value: "(a mapping or list)", expect: "a single value"},
		{name: "bad registration enum", args: []string{"--registration", "sometimes"},
			key: "auth.registration", value: "sometimes", expect: "one of open, invite, closed"},
		{name: "bad log level", env: []string{"QPC_LOG_LEVEL=verbose"},
			key: "log.level", value: "verbose", expect: "one of debug, info, warn, error"},
		{name: "bad log format", yaml: "log:\n  format: xml\n",
			key: "log.format", value: "xml", expect: "one of text, json"},
		{name: "inline key not hex", env: []string{"QPC_DB_KEY=" + strings.Repeat("zz", 32)},
			key: "db.key", value: "[REDACTED]", expect: "64 hex characters (32 bytes)"},
		{name: "inline key wrong length", yaml: "db:\n  key: " + testKeyHex[:62] + "\n",
			key: "db.key", value: "[REDACTED]", expect: "64 hex characters (32 bytes)"},
		{name: "key file missing", args: []string{"--db-key-file", filepath.Join(dir, "missing.key")},
			key: "db.key_file", value: filepath.Join(dir, "missing.key"), expect: "readable file"},
		{name: "key file unreadable", env: []string{"QPC_DB_KEY_FILE=" + unreadable},
			key: "db.key_file", value: unreadable, expect: "readable file", skipAsRoot: true},
		{name: "key file is a directory", env: []string{"QPC_DB_KEY_FILE=" + dir},
			key: "db.key_file", value: dir, expect: "a regular file"},
		{name: "key file readable by all", env: []string{"QPC_DB_KEY_FILE=" + openKey},
			key: "db.key_file", value: openKey, expect: "only its owner may access, because it holds the database key (it has mode 0644; run: chmod 600 " + openKey + ")"},
		{name: "key file readable by group", args: []string{"--db-key-file", groupKey},
			key: "db.key_file", value: groupKey, expect: "it has mode 0640; run: chmod 600 '" + groupKey + "'"},
		{name: "tls key file readable by all", env: []string{"QPC_TLS_CERT_FILE=" + goodKey, "QPC_TLS_KEY_FILE=" + openTLSKey},
			key: "tls.key_file", value: openTLSKey, expect: "because it holds the server's TLS private key (it has mode 0644; run: chmod 600 " + openTLSKey + ")"},
		{name: "key file wrong content", env: []string{"QPC_DB_KEY_FILE=" + shortKey},
			key: "db.key_file", value: shortKey, expect: "64 hex characters"},
		{name: "tls cert without key", args: []string{"--tls-cert-file", goodKey},
			key: "tls.key_file", value: "", expect: "set both or neither"},
		{name: "tls files missing", env: []string{"QPC_TLS_CERT_FILE=/nonexistent/c.pem", "QPC_TLS_KEY_FILE=/nonexistent/k.pem"},
			key: "tls.cert_file", value: "/nonexistent/c.pem", expect: "readable PEM file"},
		{name: "tls files not a pair", env: []string{"QPC_TLS_CERT_FILE=" + goodKey, "QPC_TLS_KEY_FILE=" + goodKey},
			key: "tls.cert_file", value: goodKey, expect: "PEM certificate"},
		{name: "admin socket too long", env: []string{"QPC_ADMIN_SOCKET=/" + strings.Repeat("s", 200)},
			key: "admin.socket", value: "/" + strings.Repeat("s", 200), expect: "Unix socket path"},
		{name: "derived admin socket too long", env: []string{"QPC_DATA_DIR=/" + strings.Repeat("d", 120)},
			key: "admin.socket", value: "/" + strings.Repeat("d", 120) + "/admin.sock", expect: "shorter data_dir"},
		{name: "empty data dir", env: []string{"QPC_DATA_DIR="},
			key: "data_dir", value: "", expect: "directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skipAsRoot && os.Geteuid() == 0 {
				t.Skip("root can read a mode-0000 file")
			}
			file := ""
			if tc.yaml != "" {
				file = writeFile(t, t.TempDir(), "qpcd.yaml", tc.yaml, 0o600)
			}
			_, err := load(t, file, append(append([]string{}, base...), tc.env...), tc.args...)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Load error = %v (%T), want *FieldError", err, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("errors.Is(err, ErrInvalid) = false")
			}
			if fe.Key != tc.key || fe.Value != tc.value || !strings.Contains(fe.Expected, tc.expect) {
				t.Fatalf("FieldError = {Key:%q Value:%q Expected:%q}, want key %q value %q expected ~%q",
					fe.Key, fe.Value, fe.Expected, tc.key, tc.value, tc.expect)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Fatalf("message is not one line: %q", msg)
			}
			if !strings.HasPrefix(msg, "config: "+tc.key) || !strings.Contains(msg, tc.expect) {
				t.Fatalf("message %q must name %q and %q", msg, tc.key, tc.expect)
			}
			if o, ok := optionByKey(tc.key); ok && !strings.Contains(msg, o.env()) {
				t.Fatalf("message %q must name the environment variable %s", msg, o.env())
			}
			if strings.Contains(strings.ToLower(msg), "zzzz") || strings.Contains(msg, testKeyHex[:20]) {
				t.Fatalf("message leaks key material: %q", msg)
			}
			t.Log(msg)
		})
	}
}

func TestPortZeroMeansAnyPort(t *testing.T) {
	// Port 0 lets the system pick (tests and ephemeral setups).
	c, err := load(t, "", []string{"QPC_DATA_DIR=" + t.TempDir()}, "--listen", "127.0.0.1:0", "--ops-listen", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:0" || c.OpsListen != "[::1]:0" {
		t.Fatalf("got %q %q", c.Listen, c.OpsListen)
	}
}

func TestFileValuesKeepTheirText(t *testing.T) {
	// An all-digit hex key must not be read as a YAML number.
	dir := t.TempDir()
	digits := strings.Repeat("0123456789", 6) + "0123"
	file := writeFile(t, dir, "q.yaml", "data_dir: "+dir+"\ndb:\n  key: "+digits+"\nlimits:\n  rate_limit: 1e2\n", 0o600)
	c, err := load(t, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.DB.Key.Hex() != digits || c.Limits.RateLimit != 100 {
		t.Fatalf("key or rate misread (rate %v)", c.Limits.RateLimit)
	}
	dup := writeFile(t, dir, "dup.yaml", "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", 0o600)
	var fe *FieldError
	if _, err := load(t, dup, nil); !errors.As(err, &fe) || fe.Key != "listen" {
		t.Fatalf("duplicate key: %v", err)
	}
	anchors := writeFile(t, dir, "anchor.yaml", "data_dir: &d "+dir+"\nadmin:\n  socket: *d\n", 0o600)
	if c, err := load(t, anchors, nil); err != nil || c.Admin.Socket != dir {
		t.Fatalf("aliases: %v %q", err, c.Admin.Socket)
	}
}

func TestFieldErrorMessage(t *testing.T) {
	err := &FieldError{Key: "limits.idle_timeout", Value: "-5s", Expected: "a positive duration such as 60s"}
	want := `config: limits.idle_timeout (QPC_LIMITS_IDLE_TIMEOUT) = "-5s": expected a positive duration such as 60s`
	if err.Error() != want {
		t.Fatalf("got  %s\nwant %s", err.Error(), want)
	}
	err = &FieldError{Key: "listen", Value: "x", Expected: "y"}
	if got := err.Error(); got != `config: listen (QPC_LISTEN, --listen) = "x": expected y` {
		t.Fatalf("got %s", got)
	}
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := load(t, filepath.Join(dir, "missing.yaml"), nil)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Key != "--config" || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	bad := writeFile(t, dir, "bad.yaml", "listen: [unclosed\n", 0o600)
	_, err = load(t, bad, nil)
	if !errors.As(err, &fe) || fe.Key != "--config" || strings.Contains(err.Error(), "\n") {
		t.Fatalf("bad YAML: %v", err)
	}
	empty := writeFile(t, dir, "empty.yaml", "", 0o600)
	if _, err := load(t, empty, []string{"QPC_DATA_DIR=" + dir}); err != nil {
		t.Fatalf("an empty file is valid: %v", err)
	}
}

func TestNamedFilesValid(t *testing.T) {
	dir := t.TempDir()
	keyFile := writeFile(t, dir, "db.hex", "  "+testKeyHex+"\n", 0o600)
	certFile, tlsKeyFile := writeTestCert(t, dir)
	c, err := load(t, "", []string{"QPC_DATA_DIR=" + dir, "QPC_DB_KEY_FILE=" + keyFile,
		"QPC_TLS_CERT_FILE=" + certFile, "QPC_TLS_KEY_FILE=" + tlsKeyFile})
	if err != nil {
		t.Fatal(err)
	}
	k, err := ReadKeyFile(c.DB.KeyFile)
	if err != nil || k.Hex() != testKeyHex {
		t.Fatalf("ReadKeyFile: %v", err)
	}
	r := c.Resolved()
	if r.TLS.CertFile != certFile || r.DB.KeyFile != keyFile || r.Admin.Socket != filepath.Join(dir, "admin.sock") {
		t.Fatalf("Resolved changed named paths or missed the socket: %+v", r)
	}
}

func TestResolvedDefaults(t *testing.T) {
	c := Default()
	c.DataDir = "/var/lib/qpcd"
	r := c.Resolved()
	if r.DB.KeyFile != "/var/lib/qpcd/db.key" || r.TLS.CertFile != "/var/lib/qpcd/tls/cert.pem" ||
		r.TLS.KeyFile != "/var/lib/qpcd/tls/key.pem" || r.Admin.Socket != "/var/lib/qpcd/admin.sock" {
		t.Fatalf("Resolved() = %+v", r)
	}
	if c.DB.KeyFile != "" {
		t.Fatal("Resolved must not modify its receiver")
	}
}

func TestDefaultLocationPresentButBadIsInvalid(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "db.key", "not a key", 0o600)
	c := Default()
	c.DataDir = dir
	err := c.Resolved().Validate()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Key != "db.key_file" {
		t.Fatalf("a malformed key at the default location must be reported: %v", err)
	}
}

func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, dir, "tls/c.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), 0o600)
	keyFile = writeFile(t, dir, "tls/k.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), 0o600)
	return certFile, keyFile
}

// TestOptionTableCoversConfig makes sure every leaf field of Config has
// exactly one option, so a new field cannot be forgotten in Load, the flags,
// the printout, .env.example or the docs.
func TestOptionTableCoversConfig(t *testing.T) {
	leaves := countLeaves(reflect.TypeOf(Config{}))
	if leaves != len(options) {
		t.Fatalf("Config has %d leaf fields but the option table has %d entries", leaves, len(options))
	}
	seenKey := map[string]bool{}
	seenPtr := map[uintptr]string{}
	var c Config
	for _, o := range options {
		if seenKey[o.key] {
			t.Fatalf("duplicate key %s", o.key)
		}
		seenKey[o.key] = true
		p := reflect.ValueOf(o.ptr(&c)).Pointer()
		if other, dup := seenPtr[p]; dup {
			t.Fatalf("%s and %s point at the same field", o.key, other)
		}
		seenPtr[p] = o.key
		if section, _, nested := strings.Cut(o.key, "."); nested && !sections[section] {
			t.Fatalf("%s: section %s not in sections", o.key, section)
		}
		if o.help == "" {
			t.Fatalf("%s has no help", o.key)
		}
	}
}

func countLeaves(t reflect.Type) int {
	if t.Kind() != reflect.Struct || t == reflect.TypeOf(secret.Bytes{}) {
		return 1
	}
	n := 0
	for i := range t.NumField() {
		n += countLeaves(t.Field(i).Type)
	}
	return n
}

func TestFlagsRegistered(t *testing.T) {
	fs := pflag.NewFlagSet("qpcd", pflag.ContinueOnError)
	RegisterFlags(fs)
	for _, name := range []string{"listen", "ops-listen", "data-dir", "log-level", "log-format", "db-key-file",
		"tls-cert-file", "tls-key-file", "registration", "max-connections", "store-backend"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s not registered", name)
		}
	}
	if fs.Lookup("config") != nil {
		t.Error("RegisterFlags must leave --config to the command")
	}
}

func TestEveryOptionSettableFromEnv(t *testing.T) {
	// Each option, set from the environment to its default's text, gives the
	// defaults back: parsing and printing agree for every type.
	dir := t.TempDir()
	want := Default()
	want.DataDir = dir
	env := []string{}
	for _, o := range options {
		if o.secret() || o.key == "data_dir" {
			continue
		}
		env = append(env, o.env()+"="+o.text(want))
	}
	env = append(env, "QPC_DATA_DIR="+dir)
	got, err := load(t, "", env)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

// TestDefaultKeyFilesModeChecked: the key files qpcd generates in data_dir
// are held to the same mode rule as named ones once they exist (a broken
// content is left to where they are read, as before).
func TestDefaultKeyFilesModeChecked(t *testing.T) {
	dir := t.TempDir()
	env := []string{"QPC_DATA_DIR=" + dir}
	if _, err := load(t, "", env); err != nil {
		t.Fatalf("absent defaults: %v", err)
	}
	dbKey := writeFile(t, dir, DefaultDBKeyFile, "not even hex\n", 0o600)
	tlsKey := writeFile(t, dir, DefaultTLSKeyFile, "not a key\n", 0o600)
	if _, err := load(t, "", env); err != nil {
		t.Fatalf("0600 defaults: %v", err)
	}
	for _, c := range []struct{ key, path string }{{"db.key_file", dbKey}, {"tls.key_file", tlsKey}} {
		if err := os.Chmod(c.path, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := load(t, "", env)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Key != c.key || fe.Value != c.path ||
			!strings.Contains(fe.Expected, "it has mode 0644; run: chmod 600 "+c.path) {
			t.Fatalf("%s at 0644: %v", c.key, err)
		}
		if err := os.Chmod(c.path, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
