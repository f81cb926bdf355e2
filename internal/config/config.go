// Package config loads qpcd's configuration: defaults < YAML file < QPC_*
// environment < command-line flags, and validates every value.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// DBKeySize is the size of the database key in bytes (64 hex characters).
const DBKeySize = 32

// ErrInvalid matches every *FieldError with errors.Is, so callers can map any
// configuration mistake to exit code 2 without inspecting it.
var ErrInvalid = errors.New("config: invalid configuration")

// Config is qpcd's effective configuration. Each field's comment names its
// YAML key and default; the environment variable is QPC_ followed by the key
// in upper case with dots replaced by underscores.
type Config struct {
	Listen    string // listen: "127.0.0.1:7443"; QUIC (UDP) address
	OpsListen string // ops_listen: "127.0.0.1:7444"; HTTP /metrics /healthz /readyz; "" disables
	OpsPprof  string // ops_pprof: off|on; default off (on serves /debug/pprof/ on ops_listen)
	DataDir   string // data_dir: "./data"

	Store struct {
		Backend string // store.backend: sqlcipher|postgres; default sqlcipher
	}
	DB struct {
		KeyFile string       // db.key_file: "" = <data_dir>/db.key (generated when absent and db.key is unset)
		Key     secret.Bytes // db.key: inline 64-hex-character key; wins over key_file; never printed
		// MemorySecurity is SQLCipher's cipher_memory_security: "off"
		// (default) or "on" (zero and mlock freed buffers; about half the
		// write throughput). Process-wide.
		MemorySecurity string
	}
	// Postgres is read only when Store.Backend is "postgres".
	Postgres struct {
		DSN              secret.Bytes  // postgres.dsn: ""; URL or key=value connection string; wins over dsn_file; printed by RedactDSN
		DSNFile          string        // postgres.dsn_file: ""; file holding the DSN, mode 0600 or stricter
		MaxConns         int           // postgres.max_conns: 10 (pool size per qpcd node; 2 to 10000)
		MinConns         int           // postgres.min_conns: 2 (idle connections kept open; 0 to max_conns)
		StatementTimeout time.Duration // postgres.statement_timeout: 30s (server-side, whole milliseconds)
		ConnectTimeout   time.Duration // postgres.connect_timeout: 10s (whole seconds)
		SSLMode          string        // postgres.sslmode: "" = the DSN's sslmode, else prefer
		CAFile           string        // postgres.ca_file: ""; PEM CA bundle, sets sslrootcert
	}
	TLS struct {
		CertFile string // tls.cert_file: "" = <data_dir>/tls/cert.pem (self-signed for localhost, generated when absent)
		KeyFile  string // tls.key_file: "" = <data_dir>/tls/key.pem
	}
	Log struct {
		Level  string // log.level: debug|info|warn|error; default info
		Format string // log.format: text|json; default text
	}
	Limits struct {
		MaxConnections           int           // limits.max_connections: 1000
		MaxConnectionsPerAddress int           // limits.max_connections_per_address: 32 (per IPv4 address or IPv6 /64)
		FirstRequestTimeout      time.Duration // limits.first_request_timeout: 10s (a connection silent this long after its handshake is closed)
		IdleTimeout              time.Duration // limits.idle_timeout: 60s (QUIC idle timeout; also closes connections with no request for this long)
		KeepAlive                time.Duration // limits.keep_alive: 0 (server keep-alive period; 0 disables, clients keep alive)
		MaxPayloadBytes          int           // limits.max_payload_bytes: 5242880 (5 MiB)
		RateLimit                float64       // limits.rate_limit: 50 (requests/s per IP, account and device)
		RateBurst                int           // limits.rate_burst: 100
		LongPollMax              time.Duration // limits.long_poll_max: 5m (clients keep the connection alive meanwhile; each renewal is an authenticated read)
		DrainTimeout             time.Duration // limits.drain_timeout: 15s (0 closes at once)
		MaxStreamsPerConn        int           // limits.max_streams_per_conn: 100 (concurrent RPCs per connection)
		// ByteRate and ByteBurst are a token bucket per account on the
		// payload bytes it asks the server to store (Enqueue, SendToInbox
		// counted per recipient), beside the request rate limit.
		ByteRate          int // limits.byte_rate: 1048576 (1 MiB/s per account)
		ByteBurst         int // limits.byte_burst: 33554432 (32 MiB); at least max_payload_bytes and max_inbox_call_bytes
		MaxInboxCallBytes int // limits.max_inbox_call_bytes: 8388608 (8 MiB; one SendToInbox's payload x recipients)
	}
	// Quota bounds what each account keeps stored (see docs/operations.md,
	// "Per-account quotas"); 0 disables a limit.
	Quota struct {
		MessageBytes int // quota.message_bytes: 1073741824 (1 GiB of stored channel messages it sent)
		Messages     int // quota.messages: 100000 (stored channel messages it sent)
		InboxBytes   int // quota.inbox_bytes: 67108864 (64 MiB of unacknowledged inbox items it sent)
		InboxItems   int // quota.inbox_items: 10000
		Channels     int // quota.channels: 500 (channels it created, groups and DMs)
	}
	Retention struct {
		Messages     time.Duration // retention.messages: 168h (7 days)
		EpochsBehind int           // retention.epochs_behind: 2 (application messages accepted for this many earlier epochs)
	}
	KeyPackages struct {
		TTL           time.Duration // keypackages.ttl: 24h
		MaxPerAccount int           // keypackages.max_per_account: 100
		// Fetch limits against draining another account's pool (per qpcd
		// node; token buckets refilled evenly over FetchWindow).
		FetchPerPair   int           // keypackages.fetch_per_pair: 5 fetches of one account's KeyPackages by one other account per window
		FetchPerTarget int           // keypackages.fetch_per_target: 30 fetches of one account's KeyPackages by all accounts together per window
		FetchWindow    time.Duration // keypackages.fetch_window: 1h
	}
	Invitations struct {
		TTL             time.Duration // invitations.ttl: 168h (an unanswered invitation lapses)
		MaxPerHour      int           // invitations.max_per_hour: 30 (invitations one account sends per hour)
		MaxPending      int           // invitations.max_pending: 50 (unanswered invitations one account holds)
		MaxWelcomeBytes int           // invitations.max_welcome_bytes: 262144 (largest Welcome held for an invitee)
	}
	Auth struct {
		AccessTokenTTL  time.Duration // auth.access_token_ttl: 15m
		RefreshTokenTTL time.Duration // auth.refresh_token_ttl: 720h (30 days)
		Registration    string        // auth.registration: open|invite|closed; default open
		ChallengeRate   float64       // auth.challenge_rate: 0.5 (login challenges/s per target device and source address)
		ChallengeBurst  int           // auth.challenge_burst: 10
	}
	Admin struct {
		Socket string // admin.socket: "" = <data_dir>/admin.sock
	}
	Cluster struct {
		Heartbeat time.Duration // cluster.heartbeat: 10s (node registry; stale after three missed)
	}
	// Tracing sends OpenTelemetry spans to an OTLP collector
	// (internal/tracing); off while Endpoint is empty.
	Tracing struct {
		Endpoint    string  // tracing.endpoint: "" (off); host:4317 for gRPC, http(s)://host:4318 for OTLP/HTTP
		Protocol    string  // tracing.protocol: ""|grpc|http; "" = http for an http(s):// endpoint, else grpc
		SampleRatio float64 // tracing.sample_ratio: 1 (share of new traces recorded, 0..1; a sampled client trace is always continued)
		CAFile      string  // tracing.ca_file: ""; PEM CA bundle for the collector; set (or an https endpoint) turns TLS on
		ServiceName string  // tracing.service_name: "qpcd"
	}
	MLS struct {
		// mls.allowed_suites: comma-separated MLS cipher suites, most
		// preferred first (names or numbers, see mls.go); default
		// DefaultMLSSuites (suite 1 only).
		AllowedSuites string
	}
}

// Registration policies for Auth.Registration.
const (
	RegistrationOpen   = "open"
	RegistrationInvite = "invite"
	RegistrationClosed = "closed"
)

// Storage backends for Store.Backend.
const (
	BackendSQLCipher = "sqlcipher"
	BackendPostgres  = "postgres"
)

// Default returns the built-in defaults: a development setup bound to
// 127.0.0.1 whose key and certificate files live in ./data.
func Default() Config {
	var c Config
	c.Listen = "127.0.0.1:7443"
	c.OpsListen = "127.0.0.1:7444"
	c.OpsPprof = "off"
	c.DataDir = "./data"
	c.Store.Backend = BackendSQLCipher
	c.DB.MemorySecurity = "off"
	c.Postgres.MaxConns = 10
	c.Postgres.MinConns = 2
	c.Postgres.StatementTimeout = 30 * time.Second
	c.Postgres.ConnectTimeout = 10 * time.Second
	c.Log.Level = "info"
	c.Log.Format = "text"
	c.Limits.MaxConnections = 1000
	c.Limits.MaxConnectionsPerAddress = 32
	c.Limits.FirstRequestTimeout = 10 * time.Second
	c.Limits.IdleTimeout = 60 * time.Second
	c.Limits.MaxPayloadBytes = 5 << 20
	c.Limits.RateLimit = 50
	c.Limits.RateBurst = 100
	c.Limits.LongPollMax = 5 * time.Minute
	c.Limits.DrainTimeout = 15 * time.Second
	c.Limits.MaxStreamsPerConn = 100
	c.Limits.ByteRate = 1 << 20
	c.Limits.ByteBurst = 32 << 20
	c.Limits.MaxInboxCallBytes = 8 << 20
	c.Quota.MessageBytes = 1 << 30
	c.Quota.Messages = 100_000
	c.Quota.InboxBytes = 64 << 20
	c.Quota.InboxItems = 10_000
	c.Quota.Channels = 500
	c.Retention.Messages = 7 * 24 * time.Hour
	c.Retention.EpochsBehind = 2
	c.KeyPackages.TTL = 24 * time.Hour
	c.KeyPackages.MaxPerAccount = 100
	c.KeyPackages.FetchPerPair = 5
	c.KeyPackages.FetchPerTarget = 30
	c.KeyPackages.FetchWindow = time.Hour
	c.Invitations.TTL = 7 * 24 * time.Hour
	c.Invitations.MaxPerHour = 30
	c.Invitations.MaxPending = 50
	c.Invitations.MaxWelcomeBytes = 256 << 10
	c.MLS.AllowedSuites = DefaultMLSSuites
	c.Auth.AccessTokenTTL = 15 * time.Minute
	c.Auth.RefreshTokenTTL = 30 * 24 * time.Hour
	c.Auth.Registration = RegistrationOpen
	c.Auth.ChallengeRate = 0.5
	c.Auth.ChallengeBurst = 10
	c.Cluster.Heartbeat = 10 * time.Second
	c.Tracing.SampleRatio = 1
	c.Tracing.ServiceName = "qpcd"
	return c
}

// Default locations of files inside the data directory, used by Resolved.
const (
	DefaultDBKeyFile   = "db.key"
	DefaultTLSCertFile = "tls/cert.pem"
	DefaultTLSKeyFile  = "tls/key.pem"
	DefaultAdminSocket = "admin.sock"
)

// Resolved returns a copy with the empty path options filled in relative to
// DataDir: db.key_file (only when no inline db.key is set), tls.cert_file,
// tls.key_file and admin.socket. Whether qpcd should generate a development
// key or certificate is decided on the unresolved Config (the option is "").
func (c Config) Resolved() Config {
	r := c
	r.DB.Key = c.DB.Key.Clone()
	r.Postgres.DSN = c.Postgres.DSN.Clone()
	if r.DB.KeyFile == "" && r.DB.Key.IsZero() {
		r.DB.KeyFile = filepath.Join(c.DataDir, DefaultDBKeyFile)
	}
	if r.TLS.CertFile == "" && r.TLS.KeyFile == "" {
		r.TLS.CertFile = filepath.Join(c.DataDir, DefaultTLSCertFile)
		r.TLS.KeyFile = filepath.Join(c.DataDir, DefaultTLSKeyFile)
	}
	if r.Admin.Socket == "" {
		r.Admin.Socket = filepath.Join(c.DataDir, DefaultAdminSocket)
	}
	return r
}

// FieldError is an invalid configuration value. Its message is one line that
// names the option (YAML key, environment variable and flag), the value given
// (never a secret's) and what is expected.
type FieldError struct {
	Key      string // YAML dotted key, e.g. "limits.idle_timeout"; "--config" for the file itself
	Value    string // the value given; secret.Redacted for secrets
	Expected string // what would have been accepted
	Err      error  // underlying cause, if any (e.g. *fs.PathError); may be nil
}

func (e *FieldError) Error() string {
	name := e.Key
	if o, ok := optionByKey(e.Key); ok {
		name += " (" + o.env()
		if o.flag != "" {
			name += ", --" + o.flag
		}
		name += ")"
	}
	return oneLine(fmt.Sprintf("config: %s = %q: expected %s", name, e.Value, e.Expected))
}

// Unwrap returns the underlying cause, if any.
func (e *FieldError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// Validate checks every value and returns the first problem as a *FieldError.
// Files that are named must be readable and well-formed; a key or certificate
// file at its default location in DataDir may be absent (qpcd generates it in
// development), so Validate gives the same answer before and after Resolved.
func (c Config) Validate() error {
	checks := []func(Config) *FieldError{
		validateAddresses,
		validateDataDir,
		validateDBKey,
		validatePostgres,
		validateTLS,
		validateLog,
		validateLimits,
		validateQuota,
		validateRetention,
		validateInvitations,
		validateAuth,
		validateAdmin,
		validateCluster,
		validateMLS,
		validateTracing,
	}
	for _, check := range checks {
		if fe := check(c); fe != nil {
			return fe
		}
	}
	return nil
}

func validateAddresses(c Config) *FieldError {
	if fe := checkHostPort("listen", c.Listen, "127.0.0.1:7443"); fe != nil {
		return fe
	}
	if fe := checkEnum("ops_pprof", c.OpsPprof, "off", "on"); fe != nil {
		return fe
	}
	if c.OpsListen != "" {
		return checkHostPort("ops_listen", c.OpsListen, "127.0.0.1:7444")
	}
	return nil
}

func checkHostPort(key, addr, example string) *FieldError {
	expected := "host:port with a port from 0 to 65535 (0: the system picks one), such as " + example
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &FieldError{Key: key, Value: addr, Expected: expected, Err: err}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return &FieldError{Key: key, Value: addr, Expected: expected, Err: err}
	}
	return nil
}

func validateDataDir(c Config) *FieldError {
	if c.DataDir == "" {
		return &FieldError{Key: "data_dir", Value: "", Expected: "a directory path such as ./data or /var/lib/qpcd"}
	}
	if fi, err := os.Stat(c.DataDir); err == nil && !fi.IsDir() {
		return &FieldError{Key: "data_dir", Value: c.DataDir, Expected: "a directory (this path is a file)"}
	}
	return nil
}

func validateDBKey(c Config) *FieldError {
	if fe := checkEnum("db.memory_security", c.DB.MemorySecurity, "off", "on"); fe != nil {
		return fe
	}
	if !c.DB.Key.IsZero() {
		if c.DB.Key.Len() != DBKeySize {
			return &FieldError{Key: "db.key", Value: secret.Redacted, Expected: "64 hex characters (32 bytes)"}
		}
		return nil
	}
	path := c.DB.KeyFile
	if path == "" {
		return checkDefaultKeyMode("db.key_file", filepath.Join(c.DataDir, DefaultDBKeyFile), "the database key")
	}
	if isAbsentDefault(path, c.DataDir, DefaultDBKeyFile) {
		return nil
	}
	k, err := ReadKeyFile(path)
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			return fe
		}
		return &FieldError{Key: "db.key_file", Value: path, Expected: "a readable file holding 64 hex characters", Err: err}
	}
	k.Wipe()
	return nil
}

// Bounds on postgres.max_conns. The upper one catches typos; it also keeps
// the value inside pgxpool's int32.
const (
	minPostgresConns = 2
	maxPostgresConns = 10000
)

// maxStatementTimeout is the largest statement_timeout PostgreSQL accepts
// (an int32 number of milliseconds, about 596h).
const maxStatementTimeout = math.MaxInt32 * time.Millisecond

// postgresSSLModes are libpq's sslmode values, weakest first.
var postgresSSLModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// validatePostgres checks store.backend and, when it is postgres, the
// postgres.* options, the CA file and the connection string (see
// Config.PostgresConn). With the sqlcipher backend the postgres.* options
// are ignored.
func validatePostgres(c Config) *FieldError {
	if fe := checkEnum("store.backend", c.Store.Backend, BackendSQLCipher, BackendPostgres); fe != nil {
		return fe
	}
	if c.Store.Backend != BackendPostgres {
		return nil
	}
	p := c.Postgres
	if p.MaxConns < minPostgresConns || p.MaxConns > maxPostgresConns {
		return &FieldError{Key: "postgres.max_conns", Value: strconv.Itoa(p.MaxConns),
			Expected: fmt.Sprintf("an integer from %d to %d (connections per qpcd node), such as 10", minPostgresConns, maxPostgresConns)}
	}
	if p.MinConns < 0 || p.MinConns > p.MaxConns {
		return &FieldError{Key: "postgres.min_conns", Value: strconv.Itoa(p.MinConns),
			Expected: fmt.Sprintf("an integer from 0 to postgres.max_conns (%d)", p.MaxConns)}
	}
	if fe := checkPositive("postgres.statement_timeout", p.StatementTimeout, "30s"); fe != nil {
		return fe
	}
	if p.StatementTimeout%time.Millisecond != 0 || p.StatementTimeout > maxStatementTimeout {
		return &FieldError{Key: "postgres.statement_timeout", Value: FormatDuration(p.StatementTimeout),
			Expected: "a whole number of milliseconds up to 596h (PostgreSQL's range), such as 30s or 1500ms"}
	}
	if fe := checkPositive("postgres.connect_timeout", p.ConnectTimeout, "10s"); fe != nil {
		return fe
	}
	if p.ConnectTimeout%time.Second != 0 {
		return &FieldError{Key: "postgres.connect_timeout", Value: FormatDuration(p.ConnectTimeout),
			Expected: "a whole number of seconds (libpq's connect_timeout counts seconds), such as 10s"}
	}
	if p.SSLMode != "" {
		if fe := checkEnum("postgres.sslmode", p.SSLMode, postgresSSLModes...); fe != nil {
			fe.Expected += ", or empty for the DSN's own sslmode (else prefer)"
			return fe
		}
	}
	pc, fe := c.postgresConn()
	pc.DSN.Wipe()
	return fe
}

// isAbsentDefault reports whether path is the default location name inside
// dataDir and does not exist yet (qpcd generates such files in development).
func isAbsentDefault(path, dataDir, name string) bool {
	if filepath.Clean(path) != filepath.Join(dataDir, name) {
		return false
	}
	_, err := os.Stat(path)
	return errors.Is(err, fs.ErrNotExist)
}

// ReadKeyFile reads a database key file: 64 hex characters (32 bytes),
// surrounding whitespace allowed, in a regular file that neither group nor
// others may access (anyone who can read it can decrypt the database and its
// backups). Errors are *FieldError for db.key_file and never contain the
// file's content.
func ReadKeyFile(path string) (secret.Bytes, error) {
	b, err := secret.ReadPrivateFile(path, maxKeyFileSize)
	if err != nil {
		return secret.Bytes{}, privateFileError("db.key_file", path, "64 hex characters", "the database key", err)
	}
	defer b.Wipe()
	text := strings.TrimSpace(string(b.Reveal()))
	k, err := secret.FromHex(text, DBKeySize)
	if err != nil {
		return secret.Bytes{}, &FieldError{Key: "db.key_file", Value: path,
			Expected: "a file holding 64 hex characters (32 bytes), as qpcd writes it; this file holds " + keyFileShape(text) +
				" (the wrong file, or one changed since; use the key file from where the key was made or backed up)", Err: secret.ErrBadHex}
	}
	return k, nil
}

// keyFileShape says what a malformed key file holds without showing any
// of it: its length, and whether it is hex at all.
func keyFileShape(text string) string {
	n := len(text)
	switch {
	case n == 0:
		return "nothing but white space"
	case strings.Trim(text, "0123456789abcdefABCDEF") != "":
		return fmt.Sprintf("%d characters, not all of them hex digits", n)
	default:
		return fmt.Sprintf("%d hex characters, not %d", n, 2*DBKeySize)
	}
}

// maxKeyFileSize bounds what ReadKeyFile reads: 64 hex characters and
// whitespace, with room for comments no one should write.
const maxKeyFileSize = 4 << 10

// causeText describes a file error without repeating the path.
func causeText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func validateTLS(c Config) *FieldError {
	cert, key := c.TLS.CertFile, c.TLS.KeyFile
	switch {
	case cert == "" && key == "":
		return checkDefaultKeyMode("tls.key_file", filepath.Join(c.DataDir, DefaultTLSKeyFile), "the server's TLS private key")
	case cert == "":
		return &FieldError{Key: "tls.cert_file", Value: "", Expected: "a certificate file, because tls.key_file is set (set both or neither)"}
	case key == "":
		return &FieldError{Key: "tls.key_file", Value: "", Expected: "a private key file, because tls.cert_file is set (set both or neither)"}
	}
	if isAbsentDefault(cert, c.DataDir, DefaultTLSCertFile) && isAbsentDefault(key, c.DataDir, DefaultTLSKeyFile) {
		return nil
	}
	certPEM, err := os.ReadFile(cert)
	if err != nil {
		return &FieldError{Key: "tls.cert_file", Value: cert, Expected: "a readable PEM file (" + causeText(err) + ")", Err: err}
	}
	keyPEM, err := secret.ReadPrivateFile(key, maxTLSKeyFileSize)
	if err != nil {
		return privateFileError("tls.key_file", key, "a PEM private key", "the server's TLS private key", err)
	}
	defer keyPEM.Wipe()
	if _, err := tls.X509KeyPair(certPEM, keyPEM.Reveal()); err != nil {
		return &FieldError{Key: "tls.cert_file", Value: cert,
			Expected: "a PEM certificate matching the private key in tls.key_file (" + err.Error() + ")", Err: err}
	}
	return nil
}

// checkDefaultKeyMode holds a key file at its default place in data_dir
// (which qpcd generates, 0600) to the mode rule of a named one. Only the
// mode: its content is checked where it is read, and an absent or
// unreadable file is left to that place too.
func checkDefaultKeyMode(key, path, guards string) *FieldError {
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	if err := secret.CheckFileMode(path, fi.Mode()); err != nil {
		return privateFileError(key, path, "", guards, err)
	}
	return nil
}

// maxTLSKeyFileSize bounds what validateTLS reads of tls.key_file.
const maxTLSKeyFileSize = 1 << 20

func validateLog(c Config) *FieldError {
	if fe := checkEnum("log.level", c.Log.Level, "debug", "info", "warn", "error"); fe != nil {
		return fe
	}
	return checkEnum("log.format", c.Log.Format, "text", "json")
}

func checkEnum(key, v string, allowed ...string) *FieldError {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return &FieldError{Key: key, Value: v, Expected: "one of " + strings.Join(allowed, ", ")}
}

func checkMinInt(key string, v, lo int) *FieldError {
	if v < lo {
		return &FieldError{Key: key, Value: strconv.Itoa(v), Expected: "an integer >= " + strconv.Itoa(lo)}
	}
	return nil
}

func checkPositive(key string, d time.Duration, example string) *FieldError {
	if d <= 0 {
		return &FieldError{Key: key, Value: FormatDuration(d), Expected: "a positive duration such as " + example}
	}
	return nil
}

func checkNonNegative(key string, d time.Duration, example, zero string) *FieldError {
	if d < 0 {
		return &FieldError{Key: key, Value: FormatDuration(d), Expected: "a duration >= 0 such as " + example + " (0 " + zero + ")"}
	}
	return nil
}

// Bounds on limits.max_payload_bytes.
const (
	minPayloadBytes = 1 << 10
	maxPayloadBytes = 1 << 30
)

func validateLimits(c Config) *FieldError {
	l := c.Limits
	if fe := checkMinInt("limits.max_connections", l.MaxConnections, 1); fe != nil {
		return fe
	}
	if fe := checkMinInt("limits.max_connections_per_address", l.MaxConnectionsPerAddress, 1); fe != nil {
		return fe
	}
	if fe := checkPositive("limits.first_request_timeout", l.FirstRequestTimeout, "10s"); fe != nil {
		return fe
	}
	if fe := checkPositive("limits.idle_timeout", l.IdleTimeout, "60s"); fe != nil {
		return fe
	}
	if fe := checkNonNegative("limits.keep_alive", l.KeepAlive, "15s", "disables keep-alives"); fe != nil {
		return fe
	}
	if l.KeepAlive >= l.IdleTimeout {
		return &FieldError{Key: "limits.keep_alive", Value: FormatDuration(l.KeepAlive),
			Expected: "a duration shorter than limits.idle_timeout (" + FormatDuration(l.IdleTimeout) + "), or 0 to disable"}
	}
	if l.MaxPayloadBytes < minPayloadBytes || l.MaxPayloadBytes > maxPayloadBytes {
		return &FieldError{Key: "limits.max_payload_bytes", Value: strconv.Itoa(l.MaxPayloadBytes),
			Expected: "an integer number of bytes from 1024 to 1073741824, such as 5242880 (5 MiB)"}
	}
	if !(l.RateLimit > 0) || math.IsInf(l.RateLimit, 0) {
		return &FieldError{Key: "limits.rate_limit", Value: strconv.FormatFloat(l.RateLimit, 'g', -1, 64),
			Expected: "a number of requests per second > 0, such as 50"}
	}
	if fe := checkMinInt("limits.rate_burst", l.RateBurst, 1); fe != nil {
		return fe
	}
	if fe := checkPositive("limits.long_poll_max", l.LongPollMax, "5m"); fe != nil {
		return fe
	}
	if fe := checkNonNegative("limits.drain_timeout", l.DrainTimeout, "15s", "closes connections at once"); fe != nil {
		return fe
	}
	return checkMinInt("limits.max_streams_per_conn", l.MaxStreamsPerConn, 1)
}

func validateQuota(c Config) *FieldError {
	l := c.Limits
	if l.ByteRate < 1 {
		return &FieldError{Key: "limits.byte_rate", Value: strconv.Itoa(l.ByteRate),
			Expected: "a number of bytes per second > 0, such as 1048576 (1 MiB/s)"}
	}
	if l.MaxInboxCallBytes < l.MaxPayloadBytes {
		return &FieldError{Key: "limits.max_inbox_call_bytes", Value: strconv.Itoa(l.MaxInboxCallBytes),
			Expected: "a number of bytes at least limits.max_payload_bytes (" + strconv.Itoa(l.MaxPayloadBytes) + "), such as 8388608 (8 MiB)"}
	}
	if need := max(l.MaxPayloadBytes, l.MaxInboxCallBytes); l.ByteBurst < need {
		return &FieldError{Key: "limits.byte_burst", Value: strconv.Itoa(l.ByteBurst),
			Expected: "a number of bytes at least limits.max_payload_bytes and limits.max_inbox_call_bytes (" + strconv.Itoa(need) + "), so that the largest request fits, such as 33554432 (32 MiB)"}
	}
	q := c.Quota
	for _, f := range []struct {
		key string
		v   int
	}{{"quota.message_bytes", q.MessageBytes}, {"quota.messages", q.Messages}, {"quota.inbox_bytes", q.InboxBytes},
		{"quota.inbox_items", q.InboxItems}, {"quota.channels", q.Channels}} {
		if fe := checkMinInt(f.key, f.v, 0); fe != nil {
			return fe
		}
	}
	return nil
}

func validateTracing(c Config) *FieldError {
	t := c.Tracing
	if fe := checkEnum("tracing.protocol", t.Protocol, "", "grpc", "http"); fe != nil {
		return fe
	}
	if t.SampleRatio < 0 || t.SampleRatio > 1 || t.SampleRatio != t.SampleRatio {
		return &FieldError{Key: "tracing.sample_ratio", Value: strconv.FormatFloat(t.SampleRatio, 'g', -1, 64), Expected: "a number from 0 to 1 such as 0.1"}
	}
	if strings.TrimSpace(t.ServiceName) == "" {
		return &FieldError{Key: "tracing.service_name", Value: t.ServiceName, Expected: "a non-empty name such as qpcd"}
	}
	if t.Endpoint != "" {
		if err := c.TracingConfig("", "").Validate(); err != nil {
			return &FieldError{Key: "tracing.endpoint", Value: t.Endpoint, Expected: "host:port (OTLP/gRPC, e.g. collector:4317) or an http(s):// URL (OTLP/HTTP, e.g. http://collector:4318)", Err: err}
		}
	}
	if t.CAFile != "" {
		if _, err := os.Stat(t.CAFile); err != nil {
			return &FieldError{Key: "tracing.ca_file", Value: t.CAFile, Expected: "a readable PEM file", Err: err}
		}
	}
	return nil
}

// minHeartbeat keeps the node registry's writes negligible.
const minHeartbeat = 100 * time.Millisecond

func validateCluster(c Config) *FieldError {
	if c.Cluster.Heartbeat < minHeartbeat {
		return &FieldError{Key: "cluster.heartbeat", Value: FormatDuration(c.Cluster.Heartbeat), Expected: "a duration of at least 100ms such as 10s"}
	}
	return nil
}

func validateRetention(c Config) *FieldError {
	if fe := checkPositive("retention.messages", c.Retention.Messages, "168h"); fe != nil {
		return fe
	}
	if fe := checkMinInt("retention.epochs_behind", c.Retention.EpochsBehind, 0); fe != nil {
		return fe
	}
	if fe := checkPositive("keypackages.ttl", c.KeyPackages.TTL, "24h"); fe != nil {
		return fe
	}
	if fe := checkMinInt("keypackages.max_per_account", c.KeyPackages.MaxPerAccount, 1); fe != nil {
		return fe
	}
	if fe := checkMinInt("keypackages.fetch_per_pair", c.KeyPackages.FetchPerPair, 1); fe != nil {
		return fe
	}
	if c.KeyPackages.FetchPerTarget < c.KeyPackages.FetchPerPair {
		return &FieldError{Key: "keypackages.fetch_per_target", Value: strconv.Itoa(c.KeyPackages.FetchPerTarget),
			Expected: fmt.Sprintf("an integer >= keypackages.fetch_per_pair (%d), such as 30", c.KeyPackages.FetchPerPair)}
	}
	return checkPositive("keypackages.fetch_window", c.KeyPackages.FetchWindow, "1h")
}

func validateInvitations(c Config) *FieldError {
	i := c.Invitations
	if fe := checkPositive("invitations.ttl", i.TTL, "168h"); fe != nil {
		return fe
	}
	if fe := checkMinInt("invitations.max_per_hour", i.MaxPerHour, 1); fe != nil {
		return fe
	}
	if fe := checkMinInt("invitations.max_pending", i.MaxPending, 1); fe != nil {
		return fe
	}
	return checkMinInt("invitations.max_welcome_bytes", i.MaxWelcomeBytes, 1024)
}

func validateAuth(c Config) *FieldError {
	a := c.Auth
	if fe := checkPositive("auth.access_token_ttl", a.AccessTokenTTL, "15m"); fe != nil {
		return fe
	}
	if fe := checkPositive("auth.refresh_token_ttl", a.RefreshTokenTTL, "720h"); fe != nil {
		return fe
	}
	if a.RefreshTokenTTL <= a.AccessTokenTTL {
		return &FieldError{Key: "auth.refresh_token_ttl", Value: FormatDuration(a.RefreshTokenTTL),
			Expected: "a duration longer than auth.access_token_ttl (" + FormatDuration(a.AccessTokenTTL) + ")"}
	}
	if !(a.ChallengeRate > 0) || math.IsInf(a.ChallengeRate, 0) {
		return &FieldError{Key: "auth.challenge_rate", Value: strconv.FormatFloat(a.ChallengeRate, 'g', -1, 64),
			Expected: "a number of login challenges per second > 0, such as 0.5"}
	}
	if fe := checkMinInt("auth.challenge_burst", a.ChallengeBurst, 1); fe != nil {
		return fe
	}
	return checkEnum("auth.registration", a.Registration, RegistrationOpen, RegistrationInvite, RegistrationClosed)
}

// maxSocketPath is the longest Unix socket path the platform accepts
// (sun_path is 108 bytes on Linux and 104 on the BSDs and macOS, NUL included).
func maxSocketPath() int {
	if runtime.GOOS == "linux" {
		return 107
	}
	return 103
}

func validateAdmin(c Config) *FieldError {
	p := c.Admin.Socket
	if p == "" {
		p = filepath.Join(c.DataDir, DefaultAdminSocket)
	}
	if n := maxSocketPath(); len(p) > n {
		return &FieldError{Key: "admin.socket", Value: p,
			Expected: fmt.Sprintf("a Unix socket path of at most %d bytes (set admin.socket or use a shorter data_dir)", n)}
	}
	return nil
}

// FormatDuration prints d in the shortest exact form of the largest unit
// (168h, 15m, 30s, 500ms; one minute prints as 60s), the form used in
// .env.example, the docs and `config print`.
func FormatDuration(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	abs := d
	if abs < 0 {
		abs = -abs
	}
	units := []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}}
	for _, u := range units {
		if d%u.d == 0 && (u.d != time.Minute || abs > time.Minute) {
			return strconv.FormatInt(int64(d/u.d), 10) + u.name
		}
	}
	return d.String()
}
