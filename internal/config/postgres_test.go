package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// testPassword is the database password in every test DSN; no output may
// contain it.
const testPassword = "s3cr3t-Pw"

const (
	testURLDSN     = "postgres://qpc:" + testPassword + "@db.example:5432/qpc?application_name=qpcd"
	testKeywordDSN = "host=db.example port=5432 user=qpc password='" + testPassword + "' dbname=qpc"
)

// clearPGEnv keeps libpq's PG* variables of the developer's shell out of
// pgconn.ParseConfig.
func clearPGEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE",
		"PGSSLROOTCERT", "PGSERVICE", "PGSERVICEFILE", "PGCONNECT_TIMEOUT", "PGTARGETSESSIONATTRS"} {
		t.Setenv(k, "")
	}
}

func postgresEnv(dir string, extra ...string) []string {
	return append([]string{"QPC_DATA_DIR=" + dir, "QPC_STORE_BACKEND=postgres"}, extra...)
}

// parsed runs pgconn.ParseConfig on the DSN PostgresConn returns.
func parsed(t *testing.T, c Config) (PostgresConn, *pgconn.Config) {
	t.Helper()
	pc, err := c.PostgresConn()
	if err != nil {
		t.Fatalf("PostgresConn: %v", err)
	}
	cfg, err := pgconn.ParseConfig(string(pc.DSN.Reveal()))
	if err != nil {
		t.Fatalf("pgconn.ParseConfig(PostgresConn().DSN): %v", err)
	}
	return pc, cfg
}

func TestPostgresDefaults(t *testing.T) {
	d := Default()
	if d.Store.Backend != "sqlcipher" || d.Postgres.MaxConns != 10 || d.Postgres.MinConns != 2 ||
		d.Postgres.StatementTimeout != 30*time.Second || d.Postgres.ConnectTimeout != 10*time.Second ||
		d.Postgres.SSLMode != "" || !d.Postgres.DSN.IsZero() || d.Postgres.DSNFile != "" || d.Postgres.CAFile != "" {
		t.Fatalf("postgres defaults drifted: %+v %+v", d.Store, d.Postgres)
	}
	// With the sqlcipher backend the postgres options are not checked.
	c, err := load(t, "", []string{"QPC_DATA_DIR=" + t.TempDir(), "QPC_POSTGRES_MAX_CONNS=1",
		"QPC_POSTGRES_SSLMODE=bogus", "QPC_POSTGRES_DSN_FILE=/nonexistent"})
	if err != nil {
		t.Fatalf("postgres options must be ignored with store.backend=sqlcipher: %v", err)
	}
	if c.Postgres.MaxConns != 1 || c.Postgres.SSLMode != "bogus" {
		t.Fatalf("ignored options are still loaded (and printed): %+v", c.Postgres)
	}
}

func TestPostgresLoad(t *testing.T) {
	clearPGEnv(t)
	dir := t.TempDir()

	t.Run("env DSN", func(t *testing.T) {
		c, err := load(t, "", postgresEnv(dir, "QPC_POSTGRES_DSN="+testURLDSN, "QPC_STORE_BACKEND=Postgres"))
		if err != nil {
			t.Fatal(err)
		}
		if c.Store.Backend != BackendPostgres || string(c.Postgres.DSN.Reveal()) != testURLDSN {
			t.Fatalf("backend %q or DSN not loaded", c.Store.Backend)
		}
		pc, cfg := parsed(t, c)
		if pc.MaxConns != 10 || pc.MinConns != 2 || pc.StatementTimeout != 30*time.Second ||
			pc.ConnectTimeout != 10*time.Second || pc.SSLMode != "prefer" {
			t.Fatalf("PostgresConn = %+v", pc)
		}
		if cfg.Password != testPassword || cfg.User != "qpc" || cfg.Host != "db.example" || cfg.Database != "qpc" ||
			cfg.ConnectTimeout != 10*time.Second || cfg.RuntimeParams["statement_timeout"] != "30000" ||
			cfg.RuntimeParams["application_name"] != "qpcd" {
			t.Fatalf("the DSN lost or missed settings: %+v %v", cfg.ConnectTimeout, cfg.RuntimeParams)
		}
		if cfg.TLSConfig == nil || len(cfg.Fallbacks) != 1 || cfg.Fallbacks[0].TLSConfig != nil {
			t.Fatal("sslmode prefer expected: TLS first, then plain")
		}
	})
	t.Run("flag and keyword DSN", func(t *testing.T) {
		c, err := load(t, "", []string{"QPC_DATA_DIR=" + dir, "QPC_POSTGRES_DSN=" + testKeywordDSN,
			"QPC_POSTGRES_MAX_CONNS=20", "QPC_POSTGRES_MIN_CONNS=0", "QPC_POSTGRES_STATEMENT_TIMEOUT=1500ms",
			"QPC_POSTGRES_CONNECT_TIMEOUT=3s", "QPC_POSTGRES_SSLMODE=disable"}, "--store-backend", "postgres")
		if err != nil {
			t.Fatal(err)
		}
		pc, cfg := parsed(t, c)
		if pc.MaxConns != 20 || pc.MinConns != 0 || pc.SSLMode != "disable" {
			t.Fatalf("PostgresConn = %+v", pc)
		}
		if cfg.Password != testPassword || cfg.ConnectTimeout != 3*time.Second ||
			cfg.RuntimeParams["statement_timeout"] != "1500" || cfg.TLSConfig != nil {
			t.Fatalf("settings not applied: %v %v tls=%v", cfg.ConnectTimeout, cfg.RuntimeParams, cfg.TLSConfig != nil)
		}
	})
	t.Run("YAML file", func(t *testing.T) {
		file := writeFile(t, dir, "qpcd.yaml", "data_dir: "+dir+"\nstore:\n  backend: postgres\npostgres:\n  dsn: \""+testURLDSN+"\"\n  max_conns: 4\n", 0o600)
		c, err := load(t, file, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(c.Postgres.DSN.Reveal()) != testURLDSN || c.Postgres.MaxConns != 4 {
			t.Fatal("file values not loaded")
		}
	})
	t.Run("DSN file", func(t *testing.T) {
		dsnFile := writeFile(t, dir, "dsn", testURLDSN+"\n\n", 0o600)
		c, err := load(t, "", postgresEnv(dir, "QPC_POSTGRES_DSN_FILE="+dsnFile))
		if err != nil {
			t.Fatal(err)
		}
		if !c.Postgres.DSN.IsZero() {
			t.Fatal("the file's content must not be kept in Config")
		}
		_, cfg := parsed(t, c)
		if cfg.Password != testPassword || cfg.RuntimeParams["application_name"] != "qpcd" {
			t.Fatal("DSN file not used (or its newline kept)")
		}
		// PostgresConn reads the file again, so a rotated password is seen.
		writeFile(t, dir, "dsn", strings.Replace(testURLDSN, testPassword, "rotated", 1), 0o600)
		if _, cfg := parsed(t, c); cfg.Password != "rotated" {
			t.Fatalf("PostgresConn did not re-read the file: password %q", cfg.Password)
		}
	})
	t.Run("DSN wins over DSN file", func(t *testing.T) {
		c, err := load(t, "", postgresEnv(dir, "QPC_POSTGRES_DSN_FILE=/nonexistent/dsn", "QPC_POSTGRES_DSN="+testKeywordDSN))
		if err != nil {
			t.Fatalf("the DSN file must not be read when postgres.dsn is set: %v", err)
		}
		if _, cfg := parsed(t, c); cfg.Host != "db.example" {
			t.Fatal("postgres.dsn not used")
		}
	})
}

func TestPostgresSSLMode(t *testing.T) {
	clearPGEnv(t)
	dir := t.TempDir()
	caFile, _ := writeTestCert(t, dir)
	cases := []struct {
		name, dsn, sslmode, caFile string
		wantMode                   string
		wantTLS                    bool // first attempt uses TLS
		wantFallback               bool // a plain-text fallback follows
		wantVerify                 bool // certificate checked against a CA
	}{
		{name: "default prefer", dsn: "postgres://qpc@db/qpc", wantMode: "prefer", wantTLS: true, wantFallback: true},
		{name: "DSN's own mode kept", dsn: "host=db user=qpc sslmode=require", wantMode: "require", wantTLS: true},
		{name: "URL ssl=true alias", dsn: "postgres://qpc@db/qpc?ssl=true", wantMode: "require", wantTLS: true},
		{name: "option overrides DSN (URL)", dsn: "postgres://qpc@db/qpc?sslmode=require", sslmode: "disable", wantMode: "disable"},
		{name: "option overrides DSN (keyword)", dsn: "host=db sslmode=disable", sslmode: "require", wantMode: "require", wantTLS: true},
		{name: "verify-full with ca_file", dsn: "postgres://qpc@db/qpc", sslmode: "verify-full", caFile: caFile,
			wantMode: "verify-full", wantTLS: true, wantVerify: true},
		{name: "verify-ca from DSN with its sslrootcert", dsn: "host=db sslmode=verify-ca sslrootcert='" + caFile + "'",
			wantMode: "verify-ca", wantTLS: true, wantVerify: true},
		{name: "ca_file replaces DSN's sslrootcert", dsn: "postgres://qpc@db/qpc?sslrootcert=/nonexistent.pem",
			sslmode: "verify-full", caFile: caFile, wantMode: "verify-full", wantTLS: true, wantVerify: true},
		{name: "sslrootcert=system", dsn: "postgres://qpc@db/qpc?sslrootcert=system", wantMode: "verify-full", wantTLS: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := postgresEnv(dir, "QPC_POSTGRES_DSN="+tc.dsn, "QPC_POSTGRES_SSLMODE="+tc.sslmode, "QPC_POSTGRES_CA_FILE="+tc.caFile)
			c, err := load(t, "", env)
			if err != nil {
				t.Fatal(err)
			}
			pc, cfg := parsed(t, c)
			if pc.SSLMode != tc.wantMode {
				t.Fatalf("SSLMode = %q, want %q", pc.SSLMode, tc.wantMode)
			}
			if (cfg.TLSConfig != nil) != tc.wantTLS || (len(cfg.Fallbacks) > 0) != tc.wantFallback {
				t.Fatalf("TLS %v fallbacks %d for %s", cfg.TLSConfig != nil, len(cfg.Fallbacks), string(pc.DSN.Reveal()))
			}
			if tc.wantVerify && cfg.TLSConfig.RootCAs == nil {
				t.Fatal("the CA is not loaded")
			}
		})
	}
}

func TestPostgresInvalid(t *testing.T) {
	clearPGEnv(t)
	dir := t.TempDir()
	caFile, keyFile := writeTestCert(t, dir)
	notPEM := writeFile(t, dir, "not.pem", "hello\n", 0o644)
	open := writeFile(t, dir, "dsn-open", testURLDSN+"\n", 0o600)
	if err := os.Chmod(open, 0o644); err != nil { // not at the umask's mercy
		t.Fatal(err)
	}
	groupOnly := writeFile(t, dir, "dsn-group", testURLDSN+"\n", 0o600)
	if err := os.Chmod(groupOnly, 0o640); err != nil {
		t.Fatal(err)
	}
	spaced := writeFile(t, dir, "my dsn", testURLDSN, 0o600)
	if err := os.Chmod(spaced, 0o604); err != nil {
		t.Fatal(err)
	}
	empty := writeFile(t, dir, "dsn-empty", " \n", 0o600)
	badInFile := writeFile(t, dir, "dsn-bad", "host=db password="+testPassword+" target_session_attrs=sometimes\n", 0o600)
	dsn := "QPC_POSTGRES_DSN=" + testURLDSN

	cases := []struct {
		name   string
		env    []string // added to postgresEnv
		key    string
		value  string
		expect string
	}{
		{name: "unknown backend", env: []string{"QPC_STORE_BACKEND=mysql"},
			key: "store.backend", value: "mysql", expect: "one of sqlcipher, postgres"},
		{name: "no DSN", key: "postgres.dsn", value: "",
			expect: "set postgres.dsn (QPC_POSTGRES_DSN) or postgres.dsn_file"},
		{name: "max_conns too small", env: []string{dsn, "QPC_POSTGRES_MAX_CONNS=1"},
			key: "postgres.max_conns", value: "1", expect: "from 2 to 10000"},
		{name: "max_conns too large", env: []string{dsn, "QPC_POSTGRES_MAX_CONNS=100000"},
			key: "postgres.max_conns", value: "100000", expect: "from 2 to 10000"},
		{name: "max_conns not a number", env: []string{dsn, "QPC_POSTGRES_MAX_CONNS=many"},
			key: "postgres.max_conns", value: "many", expect: "an integer such as 10"},
		{name: "min_conns above max_conns", env: []string{dsn, "QPC_POSTGRES_MIN_CONNS=11"},
			key: "postgres.min_conns", value: "11", expect: "from 0 to postgres.max_conns (10)"},
		{name: "min_conns negative", env: []string{dsn, "QPC_POSTGRES_MIN_CONNS=-1"},
			key: "postgres.min_conns", value: "-1", expect: "from 0 to postgres.max_conns"},
		{name: "statement_timeout zero", env: []string{dsn, "QPC_POSTGRES_STATEMENT_TIMEOUT=0s"},
			key: "postgres.statement_timeout", value: "0s", expect: "positive duration such as 30s"},
		{name: "statement_timeout sub-millisecond", env: []string{dsn, "QPC_POSTGRES_STATEMENT_TIMEOUT=1500us"},
			key: "postgres.statement_timeout", value: "1500us", expect: "whole number of milliseconds"},
		{name: "statement_timeout too long", env: []string{dsn, "QPC_POSTGRES_STATEMENT_TIMEOUT=1000h"},
			key: "postgres.statement_timeout", value: "1000h", expect: "up to 596h"},
		{name: "connect_timeout negative", env: []string{dsn, "QPC_POSTGRES_CONNECT_TIMEOUT=-1s"},
			key: "postgres.connect_timeout", value: "-1s", expect: "positive duration such as 10s"},
		{name: "connect_timeout sub-second", env: []string{dsn, "QPC_POSTGRES_CONNECT_TIMEOUT=1500ms"},
			key: "postgres.connect_timeout", value: "1500ms", expect: "whole number of seconds"},
		{name: "connect_timeout no unit", env: []string{dsn, "QPC_POSTGRES_CONNECT_TIMEOUT=10"},
			key: "postgres.connect_timeout", value: "10", expect: "a duration such as 10s"},
		{name: "bad sslmode", env: []string{dsn, "QPC_POSTGRES_SSLMODE=always"},
			key: "postgres.sslmode", value: "always", expect: "one of disable, allow, prefer, require, verify-ca, verify-full"},
		{name: "verify-full without CA", env: []string{dsn, "QPC_POSTGRES_SSLMODE=verify-full"},
			key: "postgres.ca_file", value: "", expect: "because sslmode is verify-full"},
		{name: "DSN's verify-ca without CA", env: []string{"QPC_POSTGRES_DSN=" + testKeywordDSN + " sslmode=verify-ca"},
			key: "postgres.ca_file", value: "", expect: "because sslmode is verify-ca"},
		{name: "CA file missing", env: []string{dsn, "QPC_POSTGRES_CA_FILE=" + filepath.Join(dir, "missing.pem")},
			key: "postgres.ca_file", value: filepath.Join(dir, "missing.pem"), expect: "readable PEM file"},
		{name: "CA file not PEM", env: []string{dsn, "QPC_POSTGRES_CA_FILE=" + notPEM},
			key: "postgres.ca_file", value: notPEM, expect: "no CERTIFICATE block"},
		{name: "CA file holds a key", env: []string{dsn, "QPC_POSTGRES_CA_FILE=" + keyFile},
			key: "postgres.ca_file", value: keyFile, expect: "CA certificates only (block 1 is PRIVATE KEY)"},
		{name: "DSN file readable by others", env: []string{"QPC_POSTGRES_DSN_FILE=" + open},
			key: "postgres.dsn_file", value: open, expect: "mode 0644; run: chmod 600 " + open},
		{name: "DSN file readable by group", env: []string{"QPC_POSTGRES_DSN_FILE=" + groupOnly},
			key: "postgres.dsn_file", value: groupOnly, expect: "mode 0640; run: chmod 600 " + groupOnly},
		{name: "DSN file name quoted in the fix", env: []string{"QPC_POSTGRES_DSN_FILE=" + spaced},
			key: "postgres.dsn_file", value: spaced, expect: "run: chmod 600 '" + spaced + "'"},
		{name: "DSN file missing", env: []string{"QPC_POSTGRES_DSN_FILE=" + filepath.Join(dir, "nope")},
			key: "postgres.dsn_file", value: filepath.Join(dir, "nope"), expect: "readable file"},
		{name: "DSN file is a directory", env: []string{"QPC_POSTGRES_DSN_FILE=" + dir},
			key: "postgres.dsn_file", value: dir, expect: "regular file"},
		{name: "DSN file empty", env: []string{"QPC_POSTGRES_DSN_FILE=" + empty},
			key: "postgres.dsn_file", value: empty, expect: "this file is empty"},
		{name: "DSN file rejected by pgx", env: []string{"QPC_POSTGRES_DSN_FILE=" + badInFile},
			key: "postgres.dsn_file", value: badInFile, expect: "target_session_attrs"},
		{name: "keyword DSN unterminated", env: []string{"QPC_POSTGRES_DSN=host=db password='" + testPassword},
			key: "postgres.dsn", value: "[redacted: unparseable DSN]", expect: "unterminated quoted value"},
		{name: "URL DSN with an unencoded @ in the password", env: []string{"QPC_POSTGRES_DSN=postgres://qpc:" + testPassword + "@x@db/qpc"},
			key: "postgres.dsn", value: "[redacted: unparseable DSN]", expect: "percent-encode"},
		{name: "URL DSN with an unencoded / in the password", env: []string{"QPC_POSTGRES_DSN=postgres://qpc:" + testPassword + "/x@db/qpc"},
			key: "postgres.dsn", value: "[redacted: unparseable DSN]", expect: "percent-encode"},
		{name: "URL DSN rejected by pgx", env: []string{"QPC_POSTGRES_DSN=postgres://qpc:" + testPassword + "@db:notaport/qpc"},
			key: "postgres.dsn", value: "postgres://qpc:REDACTED@db:notaport/qpc", expect: "invalid port"},
		{name: "keyword DSN rejected by pgx", env: []string{"QPC_POSTGRES_DSN=" + testKeywordDSN + " sslmode=sometimes"},
			key: "postgres.dsn", value: "host=db.example port=5432 user=qpc password='REDACTED' dbname=qpc sslmode=sometimes",
			expect: "sslmode is invalid"},
		{name: "DSN's sslrootcert missing", env: []string{"QPC_POSTGRES_DSN=" + testURLDSN + "&sslmode=verify-full&sslrootcert=/nonexistent.pem"},
			key: "postgres.dsn", value: "postgres://qpc:REDACTED@db.example:5432/qpc?application_name=qpcd&sslmode=verify-full&sslrootcert=/nonexistent.pem",
			expect: "unable to read CA file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, "", postgresEnv(dir, tc.env...))
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load error = %v (%T), want *FieldError", err, err)
			}
			if fe.Key != tc.key || fe.Value != tc.value || !strings.Contains(fe.Expected, tc.expect) {
				t.Fatalf("FieldError = {Key:%q Value:%q Expected:%q}, want key %q value %q expected ~%q",
					fe.Key, fe.Value, fe.Expected, tc.key, tc.value, tc.expect)
			}
			msg := err.Error()
			o, _ := optionByKey(tc.key)
			if !strings.HasPrefix(msg, "config: "+tc.key+" ("+o.env()) || strings.Contains(msg, "\n") {
				t.Fatalf("message %q must be one line naming %s and %s", msg, tc.key, o.env())
			}
			if leaks(msg) || leaks(fmt.Sprintf("%+v %#v", err, fe)) {
				t.Fatalf("error leaks the password: %q", msg)
			}
			t.Log(msg)
		})
	}
	// The CA file fixture is valid (the key-file case above is not a fluke).
	if fe := checkCAFile(caFile); fe != nil {
		t.Fatal(fe)
	}
}

func leaks(s string) bool { return strings.Contains(s, testPassword) || strings.Contains(s, "s3cr3t") }

func TestPostgresPasswordNeverShown(t *testing.T) {
	clearPGEnv(t)
	dir := t.TempDir()
	for _, dsn := range []string{
		testURLDSN,
		testKeywordDSN,
		"postgresql://qpc:" + testPassword + "@db1:5432,db2:5433/qpc?sslpassword=" + testPassword,
		"postgres://qpc@db/qpc?password=" + testPassword + "&sslmode=require",
		"user=qpc password=" + testPassword + " host=db",
		"user=qpc PASSWORD=" + testPassword + " host=db",
		"postgres://qpc:" + testPassword + "@/qpc?host=/run/postgresql",
	} {
		t.Run(dsn[:12], func(t *testing.T) {
			c, err := load(t, "", postgresEnv(dir, "QPC_POSTGRES_DSN="+dsn, "QPC_POSTGRES_SSLMODE=require"))
			if err != nil {
				t.Fatal(err)
			}
			pc, err := c.PostgresConn()
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := c.WriteYAML(&buf); err != nil {
				t.Fatal(err)
			}
			shown := []string{
				buf.String(),
				fmt.Sprint(c.Redacted()),
				fmt.Sprintf("%v %+v %#v", c, c, c),
				fmt.Sprintf("%v %+v %#v", pc, pc, pc),
				fmt.Sprintf("%v %+v", c.Resolved(), &c),
				RedactDSN(string(pc.DSN.Reveal())),
			}
			for _, s := range shown {
				if leaks(s) {
					t.Fatalf("password shown:\n%s", s)
				}
			}
			if !strings.Contains(buf.String(), "REDACTED") {
				t.Fatalf("config print does not show the DSN redacted:\n%s", buf.String())
			}
			// An invalid value elsewhere does not echo the DSN.
			_, err = load(t, "", postgresEnv(dir, "QPC_POSTGRES_DSN="+dsn, "QPC_POSTGRES_MAX_CONNS=0"))
			if err == nil || leaks(err.Error()) {
				t.Fatalf("Load error %v", err)
			}
		})
	}
}

func TestPrintShowsRedactedDSN(t *testing.T) {
	clearPGEnv(t)
	c, err := load(t, "", postgresEnv(t.TempDir(), "QPC_POSTGRES_DSN="+testURLDSN))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := c.WriteYAML(&buf); err != nil {
		t.Fatal(err)
	}
	want := "dsn: postgres://qpc:REDACTED@db.example:5432/qpc?application_name=qpcd # QPC_POSTGRES_DSN"
	if !strings.Contains(buf.String(), want) || !strings.Contains(buf.String(), "backend: postgres # QPC_STORE_BACKEND") {
		t.Fatalf("config print:\n%s\nwant a line %q", buf.String(), want)
	}
	if got := c.Redacted()["postgres"].(map[string]any)["dsn"]; got != "postgres://qpc:REDACTED@db.example:5432/qpc?application_name=qpcd" {
		t.Fatalf("Redacted()[postgres][dsn] = %v", got)
	}
}

func TestRedactDSN(t *testing.T) {
	cases := []struct{ in, want string }{
		{"postgres://qpc:" + testPassword + "@db:5432/qpc", "postgres://qpc:REDACTED@db:5432/qpc"},
		{"postgresql://qpc:p%40ss%2Fw@db/qpc?sslmode=verify-full", "postgresql://qpc:REDACTED@db/qpc?sslmode=verify-full"},
		{"postgres://qpc:a:b?c#d@db/qpc", "postgres://qpc:REDACTED@db/qpc"},
		{"postgres://qpc@db/qpc", "postgres://qpc@db/qpc"},
		{"postgres://qpc:@db/qpc", "postgres://qpc:@db/qpc"},
		{"postgres://db", "postgres://db"},
		{"postgres://[::1]:5432/qpc?password=x&sslpassword=y&application_name=a", "postgres://[::1]:5432/qpc?password=REDACTED&sslpassword=REDACTED&application_name=a"},
		{"postgres://db/qpc?pass%77ord=x", "postgres://db/qpc?pass%77ord=REDACTED"},
		{"postgres://db/qpc?", "postgres://db/qpc?"},
		{"host=db user=qpc password=" + testPassword, "host=db user=qpc password=REDACTED"},
		{"host=db password = 'it''s' user=qpc", "[redacted: unparseable DSN]"},
		{`host=db password='it\'s secret' user=qpc`, "host=db password='REDACTED' user=qpc"},
		{`password=a\ b sslpassword='' user=qpc`, "password=REDACTED sslpassword='' user=qpc"},
		{"  host=db\tpassword=x  ", "  host=db\tpassword=REDACTED  "},
		{"", ""},
		// Unparseable: only the marker, never a guess.
		{"host=db password='" + testPassword, "[redacted: unparseable DSN]"},
		{"host=db " + testPassword, "[redacted: unparseable DSN]"},
		{"postgres://qpc:" + testPassword + "@more@db/qpc", "[redacted: unparseable DSN]"},
		{"postgres://qpc:pa/ss@db/qpc", "[redacted: unparseable DSN]"},
		{"postgres://db/qpc?password", "[redacted: unparseable DSN]"},
		{"postgres://db/qpc?a=b&&password=x", "[redacted: unparseable DSN]"},
		{"postgres://[::1/qpc?password=x", "[redacted: unparseable DSN]"},
		{"host=db password=x\x00", "[redacted: unparseable DSN]"},
	}
	for _, tc := range cases {
		if got := RedactDSN(tc.in); got != tc.want {
			t.Errorf("RedactDSN(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestDSNParamsApplied checks that appended parameters land where pgconn
// reads them, for the awkward shapes of both forms.
func TestDSNParamsApplied(t *testing.T) {
	clearPGEnv(t)
	for _, dsn := range []string{
		"postgres://qpc@db",
		"postgres://qpc@db/qpc?",
		"postgres://qpc@db/qpc?application_name=a&",
		"postgres://qpc@db/qpc?connect_timeout=99&statement_timeout=1&sslmode=disable",
		"postgres://qpc:p?ss@db/qpc",
		"host=db",
		`host=db application_name=a\`,
		"host=db connect_timeout=99 statement_timeout=1 sslmode=disable ",
	} {
		c := Default()
		c.Store.Backend = BackendPostgres
		c.Postgres.DSNFile = writeFile(t, t.TempDir(), "dsn", dsn, 0o600)
		c.Postgres.SSLMode = "require"
		c.Postgres.CAFile, _ = writeTestCert(t, t.TempDir())
		if err := c.Validate(); err != nil {
			t.Fatalf("%q: %v", dsn, err)
		}
		pc, cfg := parsed(t, c)
		if cfg.ConnectTimeout != 10*time.Second || cfg.RuntimeParams["statement_timeout"] != "30000" ||
			cfg.TLSConfig == nil || cfg.TLSConfig.RootCAs == nil || len(cfg.Fallbacks) != 0 || cfg.Host != "db" {
			t.Errorf("%q -> %q: timeout %v params %v tls %v", dsn, string(pc.DSN.Reveal()), cfg.ConnectTimeout, cfg.RuntimeParams, cfg.TLSConfig != nil)
		}
	}
}

// FuzzRedactDSN checks RedactDSN against pgx's own parser: whatever pgx
// reads as the password of a connection string is gone from the redacted
// form, which still parses the same way.
func FuzzRedactDSN(f *testing.F) {
	f.Setenv("HOME", f.TempDir()) // no ~/.pgpass
	for _, k := range []string{"PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGHOST"} {
		f.Setenv(k, "")
	}
	for _, s := range []string{testURLDSN, testKeywordDSN, "postgres://u:p%40ss@h/db?password=x&ssl=true",
		`host=h password='a\'b' user=u`, "postgres://u:a:b?c@[::1]:5,h2/d?sslpassword=y&", "password=x\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := RedactDSN(s)
		orig, err := pgconn.ParseConfig(s)
		if r == unparseableDSN || err != nil {
			return
		}
		red, err := pgconn.ParseConfig(r)
		if err != nil {
			t.Fatalf("redacted %q of %q does not parse: %v", r, s, err)
		}
		// Appended parameters replace the string's own and change nothing else.
		d, _ := parseDSN(s)
		full := d.with(s, [][2]string{{"connect_timeout", "7"}, {"statement_timeout", "123"}, {"application_name", "a b'&c"}})
		got, err := pgconn.ParseConfig(full)
		if err != nil {
			t.Fatalf("with(%q) = %q does not parse: %v", s, full, err)
		}
		if got.ConnectTimeout != 7*time.Second || got.RuntimeParams["statement_timeout"] != "123" ||
			got.RuntimeParams["application_name"] != "a b'&c" || got.Password != orig.Password ||
			got.Host != orig.Host || got.Port != orig.Port || got.User != orig.User || got.Database != orig.Database {
			t.Fatalf("with(%q) = %q: %+v %v", s, full, got.ConnectTimeout, got.RuntimeParams)
		}
		// Redacting more than pgx reads (" " decodes to no password) is fine.
		if orig.Password != "" && red.Password != dsnPasswordMask || red.Host != orig.Host || red.User != orig.User || red.Database != orig.Database {
			t.Fatalf("RedactDSN(%q) = %q: pgx reads password %q host %q user %q db %q", s, r, red.Password, red.Host, red.User, red.Database)
		}
	})
}

// TestPostgresMultiHostDSN: a DSN naming several servers (failover) in
// either form parses into one host plus fallbacks, prints with every host
// and without the password, and gets target_session_attrs=read-write
// unless it asks for read-write or primary itself; an attribute that would
// put qpcd, which writes, on a standby is refused with the reason.
func TestPostgresMultiHostDSN(t *testing.T) {
	clearPGEnv(t)
	cases := []struct {
		name, dsn, redacted string
		hosts               int
		wantAttrs           string // in the DSN qpcd uses; "" none
	}{
		{"URL two hosts", "postgres://qpc:" + testPassword + "@db1.example:5432,db2.example:5433/qpc",
			"postgres://qpc:REDACTED@db1.example:5432,db2.example:5433/qpc", 2, "read-write"},
		{"URL three hosts default ports", "postgres://qpc:" + testPassword + "@a,b,c/qpc?sslmode=disable",
			"postgres://qpc:REDACTED@a,b,c/qpc?sslmode=disable", 3, "read-write"},
		{"URL IPv6 hosts", "postgres://qpc:" + testPassword + "@[::1]:5432,[::2]:5433/qpc",
			"postgres://qpc:REDACTED@[::1]:5432,[::2]:5433/qpc", 2, "read-write"},
		{"URL primary kept", "postgres://qpc:" + testPassword + "@a:1,b:2/qpc?target_session_attrs=primary",
			"postgres://qpc:REDACTED@a:1,b:2/qpc?target_session_attrs=primary", 2, "primary"},
		{"keyword two hosts", "host=db1,db2 port=5432,5433 user=qpc password=" + testPassword + " dbname=qpc",
			"host=db1,db2 port=5432,5433 user=qpc password=REDACTED dbname=qpc", 2, "read-write"},
		{"keyword any becomes read-write", "host=db1,db2 user=qpc password='" + testPassword + "' target_session_attrs=any",
			"host=db1,db2 user=qpc password='REDACTED' target_session_attrs=any", 2, "read-write"},
		{"keyword read-write kept", "host=db1,db2 user=qpc target_session_attrs=read-write",
			"host=db1,db2 user=qpc target_session_attrs=read-write", 2, "read-write"},
		{"one host left alone", "postgres://qpc:" + testPassword + "@db1:5432/qpc",
			"postgres://qpc:REDACTED@db1:5432/qpc", 1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := RedactDSN(tc.dsn); got != tc.redacted {
				t.Fatalf("RedactDSN = %q, want %q", got, tc.redacted)
			}
			c, err := load(t, "", postgresEnv(t.TempDir(), "QPC_POSTGRES_DSN="+tc.dsn))
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := c.WriteYAML(&buf); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), "dsn: "+tc.redacted+" ") || strings.Contains(buf.String(), testPassword) {
				t.Fatalf("config print:\n%s\nwant dsn %q, no password", buf.String(), tc.redacted)
			}
			pc, cfg := parsed(t, c)
			// sslmode=prefer doubles each host (TLS, then plain).
			hosts := map[string]bool{fmt.Sprint(cfg.Host, ":", cfg.Port): true}
			for _, fb := range cfg.Fallbacks {
				hosts[fmt.Sprint(fb.Host, ":", fb.Port)] = true
			}
			if len(hosts) != tc.hosts {
				t.Fatalf("%q parses to hosts %v, want %d", RedactDSN(string(pc.DSN.Reveal())), hosts, tc.hosts)
			}
			attrs, err := pgconn.ParseConfig(string(pc.DSN.Reveal()))
			if err != nil {
				t.Fatal(err)
			}
			// pgconn keeps target_session_attrs only as a validation hook.
			if (attrs.ValidateConnect != nil) != (tc.wantAttrs != "") {
				t.Fatalf("%q: connection validation %v, want target_session_attrs %q", RedactDSN(string(pc.DSN.Reveal())), attrs.ValidateConnect != nil, tc.wantAttrs)
			}
			if tc.wantAttrs != "" && !strings.Contains(string(pc.DSN.Reveal()), "target_session_attrs="+tc.wantAttrs) &&
				!strings.Contains(string(pc.DSN.Reveal()), "target_session_attrs='"+tc.wantAttrs+"'") {
				t.Fatalf("%q lacks target_session_attrs=%s", RedactDSN(string(pc.DSN.Reveal())), tc.wantAttrs)
			}
		})
	}
	for _, attrs := range []string{"read-only", "standby", "prefer-standby"} {
		_, err := load(t, "", postgresEnv(t.TempDir(), "QPC_POSTGRES_DSN=postgres://qpc:"+testPassword+"@a,b/qpc?target_session_attrs="+attrs))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Key != "postgres.dsn" || !strings.Contains(err.Error(), "read-only server") || strings.Contains(err.Error(), testPassword) {
			t.Fatalf("target_session_attrs=%s: %v, want a postgres.dsn error naming the read-only server, without the password", attrs, err)
		}
	}
}
