package config

import (
	"strconv"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// option describes one configuration key. The table below is the single
// source for loading, flags, printing, .env.example and docs/configuration.md.
type option struct {
	key  string // YAML dotted key
	flag string // flag name without dashes; "" = no flag
	help string // one-line meaning
	// ptr returns a pointer to the field: *string, *int, *float64,
	// *time.Duration or *secret.Bytes.
	ptr func(c *Config) any
	// dsn marks a *secret.Bytes option holding a PostgreSQL connection
	// string: it is stored as written (not hex) and printed by RedactDSN.
	dsn bool
}

var options = []option{
	{key: "listen", flag: "listen", help: "QUIC (UDP) address qpcd serves clients on, host:port",
		ptr: func(c *Config) any { return &c.Listen }},
	{key: "ops_listen", flag: "ops-listen", help: "HTTP address for /metrics, /healthz and /readyz; empty disables",
		ptr: func(c *Config) any { return &c.OpsListen }},
	{key: "ops_pprof", flag: "ops-pprof", help: "on serves Go's pprof profiles under /debug/pprof/ on ops_listen (no authentication: keep ops_listen private); off (default) does not",
		ptr: func(c *Config) any { return &c.OpsPprof }},
	{key: "data_dir", flag: "data-dir", help: "directory for the database, generated keys and the admin socket",
		ptr: func(c *Config) any { return &c.DataDir }},
	{key: "store.backend", flag: "store-backend", help: "storage engine: sqlcipher (embedded database in data_dir) or postgres (several qpcd nodes share one PostgreSQL database, see postgres.*)",
		ptr: func(c *Config) any { return &c.Store.Backend }},
	{key: "db.key_file", flag: "db-key-file", help: "file holding the 64-hex-character database key; empty = <data_dir>/db.key (generated when absent)",
		ptr: func(c *Config) any { return &c.DB.KeyFile }},
	{key: "db.key", help: "inline database key, 64 hex characters; wins over db.key_file; never printed",
		ptr: func(c *Config) any { return &c.DB.Key }},
	{key: "db.memory_security", help: "SQLCipher cipher_memory_security: on zeroes and mlocks freed database buffers and uses SQLCipher's bundled crypto (no Go-heap key schedules), at about half the write throughput; off (default): Go's AES-NI page crypto",
		ptr: func(c *Config) any { return &c.DB.MemorySecurity }},
	{key: "postgres.dsn", help: "PostgreSQL connection string, URL (postgres://user:password@host:5432/db?...) or key=value form; several hosts (h1:5432,h2:5432) for failover get target_session_attrs=read-write; wins over dsn_file; printed with its password redacted",
		ptr: func(c *Config) any { return &c.Postgres.DSN }, dsn: true},
	{key: "postgres.dsn_file", help: "file holding the connection string (mode 0600 or stricter; surrounding whitespace ignored); read when postgres.dsn is empty",
		ptr: func(c *Config) any { return &c.Postgres.DSNFile }},
	{key: "postgres.max_conns", help: "connection pool size of each qpcd node, 2 to 10000; nodes x max_conns must stay below the server's max_connections",
		ptr: func(c *Config) any { return &c.Postgres.MaxConns }},
	{key: "postgres.min_conns", help: "connections each node opens at start (idle ones stay open, up to max_conns), 0 to max_conns",
		ptr: func(c *Config) any { return &c.Postgres.MinConns }},
	{key: "postgres.statement_timeout", help: "server-side statement_timeout of every connection: a statement running longer is cancelled",
		ptr: func(c *Config) any { return &c.Postgres.StatementTimeout }},
	{key: "postgres.connect_timeout", help: "time allowed to open one connection, whole seconds (libpq connect_timeout)",
		ptr: func(c *Config) any { return &c.Postgres.ConnectTimeout }},
	{key: "postgres.sslmode", help: "disable, allow, prefer, require, verify-ca or verify-full; overrides the DSN's sslmode; empty = the DSN's sslmode, else prefer",
		ptr: func(c *Config) any { return &c.Postgres.SSLMode }},
	{key: "postgres.ca_file", help: "PEM CA certificates that verify the database server's certificate (sets sslrootcert); verify-ca and verify-full need it or the DSN's sslrootcert",
		ptr: func(c *Config) any { return &c.Postgres.CAFile }},
	{key: "tls.cert_file", flag: "tls-cert-file", help: "PEM certificate chain; empty = <data_dir>/tls/cert.pem (self-signed for localhost, generated when absent)",
		ptr: func(c *Config) any { return &c.TLS.CertFile }},
	{key: "tls.key_file", flag: "tls-key-file", help: "PEM private key for tls.cert_file; empty = <data_dir>/tls/key.pem",
		ptr: func(c *Config) any { return &c.TLS.KeyFile }},
	{key: "log.level", flag: "log-level", help: "log level: debug, info, warn or error",
		ptr: func(c *Config) any { return &c.Log.Level }},
	{key: "log.format", flag: "log-format", help: "log format: text or json",
		ptr: func(c *Config) any { return &c.Log.Format }},
	{key: "limits.max_connections", flag: "max-connections", help: "maximum open QUIC connections; further handshakes are refused",
		ptr: func(c *Config) any { return &c.Limits.MaxConnections }},
	{key: "limits.max_connections_per_address", flag: "max-connections-per-address", help: "maximum open QUIC connections from one source address (IPv4 address or IPv6 /64, loopback included), so one host cannot take every slot of max_connections",
		ptr: func(c *Config) any { return &c.Limits.MaxConnectionsPerAddress }},
	{key: "limits.first_request_timeout", help: "a connection that sends no request this long after its handshake is closed",
		ptr: func(c *Config) any { return &c.Limits.FirstRequestTimeout }},
	{key: "limits.idle_timeout", help: "QUIC idle timeout: a connection with no traffic, or with no request, for this long is closed (keep-alives do not count as requests)",
		ptr: func(c *Config) any { return &c.Limits.IdleTimeout }},
	{key: "limits.keep_alive", help: "QUIC keep-alive period of the server, shorter than idle_timeout; 0 (default) disables: clients keep their connections alive",
		ptr: func(c *Config) any { return &c.Limits.KeepAlive }},
	{key: "limits.max_payload_bytes", flag: "max-payload-bytes", help: "largest frame accepted, in bytes (5 MiB); longer frames are refused before allocation",
		ptr: func(c *Config) any { return &c.Limits.MaxPayloadBytes }},
	{key: "limits.rate_limit", flag: "rate-limit", help: "sustained requests per second allowed per IP, per account and per device",
		ptr: func(c *Config) any { return &c.Limits.RateLimit }},
	{key: "limits.rate_burst", help: "requests allowed in a burst above rate_limit",
		ptr: func(c *Config) any { return &c.Limits.RateBurst }},
	{key: "limits.long_poll_max", help: "longest time a FetchWait long-poll is held open; a device renews its poll this often while idle (each renewal is an authenticated read), and clients keep the connection alive meanwhile",
		ptr: func(c *Config) any { return &c.Limits.LongPollMax }},
	{key: "limits.drain_timeout", help: "on shutdown, how long in-flight RPCs may finish; 0 closes at once",
		ptr: func(c *Config) any { return &c.Limits.DrainTimeout }},
	{key: "limits.max_streams_per_conn", help: "concurrent RPCs (streams) per connection",
		ptr: func(c *Config) any { return &c.Limits.MaxStreamsPerConn }},
	{key: "limits.byte_rate", help: "sustained payload bytes per second one account may ask the server to store (Enqueue, and SendToInbox counted once per recipient); 1048576 = 1 MiB/s",
		ptr: func(c *Config) any { return &c.Limits.ByteRate }},
	{key: "limits.byte_burst", help: "payload bytes an account may send in a burst above byte_rate; at least max_payload_bytes and max_inbox_call_bytes",
		ptr: func(c *Config) any { return &c.Limits.ByteBurst }},
	{key: "limits.max_inbox_call_bytes", help: "most bytes one SendToInbox may store: its payload times its recipient devices (8 MiB); at least max_payload_bytes",
		ptr: func(c *Config) any { return &c.Limits.MaxInboxCallBytes }},
	{key: "quota.message_bytes", help: "per account: bytes of channel messages it sent that are still stored (until retention deletes them); 1 GiB; 0 = no limit",
		ptr: func(c *Config) any { return &c.Quota.MessageBytes }},
	{key: "quota.messages", help: "per account: channel messages it sent that are still stored; 0 = no limit",
		ptr: func(c *Config) any { return &c.Quota.Messages }},
	{key: "quota.inbox_bytes", help: "per account: bytes of inbox items (Welcomes) it sent that are not yet acknowledged or expired; 64 MiB; 0 = no limit",
		ptr: func(c *Config) any { return &c.Quota.InboxBytes }},
	{key: "quota.inbox_items", help: "per account: inbox items it sent that are not yet acknowledged or expired; 0 = no limit",
		ptr: func(c *Config) any { return &c.Quota.InboxItems }},
	{key: "quota.channels", help: "per account: channels (groups and DMs) it created; channels are kept, so this bounds them for good; 0 = no limit",
		ptr: func(c *Config) any { return &c.Quota.Channels }},
	{key: "retention.messages", help: "how long stored messages are kept (168h = 7 days)",
		ptr: func(c *Config) any { return &c.Retention.Messages }},
	{key: "retention.epochs_behind", help: "application messages are accepted for this many epochs before a group's current one",
		ptr: func(c *Config) any { return &c.Retention.EpochsBehind }},
	{key: "keypackages.ttl", help: "lifetime of an uploaded KeyPackage",
		ptr: func(c *Config) any { return &c.KeyPackages.TTL }},
	{key: "keypackages.max_per_account", help: "most unused KeyPackages stored per account; uploads beyond are refused",
		ptr: func(c *Config) any { return &c.KeyPackages.MaxPerAccount }},
	{key: "keypackages.fetch_per_pair", flag: "keypackage-fetch-per-pair", help: "fetches of one account's KeyPackages that one other account may make per fetch_window (each uses one KeyPackage per device); beyond: RESOURCE_EXHAUSTED",
		ptr: func(c *Config) any { return &c.KeyPackages.FetchPerPair }},
	{key: "keypackages.fetch_per_target", flag: "keypackage-fetch-per-target", help: "fetches of one account's KeyPackages by all accounts together per fetch_window, so many accounts cannot drain it either; >= fetch_per_pair",
		ptr: func(c *Config) any { return &c.KeyPackages.FetchPerTarget }},
	{key: "keypackages.fetch_window", flag: "keypackage-fetch-window", help: "window of the KeyPackage fetch limits (each refills evenly over it); limits count per qpcd node",
		ptr: func(c *Config) any { return &c.KeyPackages.FetchWindow }},
	{key: "invitations.ttl", help: "how long an invitation to a channel or DM waits for its invitee's answer (168h = 7 days)",
		ptr: func(c *Config) any { return &c.Invitations.TTL }},
	{key: "invitations.max_per_hour", flag: "invitations-max-per-hour", help: "invitations (group adds and new DMs) one account may send per hour; more are refused with resource_exhausted",
		ptr: func(c *Config) any { return &c.Invitations.MaxPerHour }},
	{key: "invitations.max_pending", help: "unanswered invitations one account may hold; further invitations to it are refused",
		ptr: func(c *Config) any { return &c.Invitations.MaxPending }},
	{key: "invitations.max_welcome_bytes", help: "largest MLS Welcome held for an invitee until it accepts, in bytes (256 KiB)",
		ptr: func(c *Config) any { return &c.Invitations.MaxWelcomeBytes }},
	{key: "auth.access_token_ttl", help: "lifetime of an access token",
		ptr: func(c *Config) any { return &c.Auth.AccessTokenTTL }},
	{key: "auth.refresh_token_ttl", help: "lifetime of a refresh token (720h = 30 days); longer than access_token_ttl",
		ptr: func(c *Config) any { return &c.Auth.RefreshTokenTTL }},
	{key: "auth.registration", flag: "registration", help: "who may create accounts: open, invite (invite code needed) or closed",
		ptr: func(c *Config) any { return &c.Auth.Registration }},
	{key: "auth.challenge_rate", flag: "challenge-rate", help: "sustained login challenges per second one source address may ask for one device (challenges are stateless, so this only bounds the work; limits.rate_limit applies too)",
		ptr: func(c *Config) any { return &c.Auth.ChallengeRate }},
	{key: "auth.challenge_burst", flag: "challenge-burst", help: "login challenges allowed in a burst above challenge_rate, per device and source address",
		ptr: func(c *Config) any { return &c.Auth.ChallengeBurst }},
	{key: "mls.allowed_suites", flag: "mls-allowed-suites", help: "MLS cipher suites the server accepts KeyPackages, Welcomes and GroupInfos of, most preferred first, comma-separated names or numbers (1 = MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, 0xF00D = MLS_256_XWING_AES256GCM_SHA512_Ed25519, ...); clients create groups on the first one every invited device has; the weakest listed is the minimum",
		ptr: func(c *Config) any { return &c.MLS.AllowedSuites }},
	{key: "admin.socket", flag: "admin-socket", help: "admin API Unix socket (mode 0600); empty = <data_dir>/admin.sock",
		ptr: func(c *Config) any { return &c.Admin.Socket }},
	{key: "cluster.heartbeat", help: "how often a node records itself in the node registry (qpcctl status lists the nodes); a node three heartbeats late is shown as stale",
		ptr: func(c *Config) any { return &c.Cluster.Heartbeat }},
	{key: "tracing.endpoint", flag: "tracing-endpoint", help: "OpenTelemetry collector that receives trace spans (OTLP): host:4317 for gRPC or http(s)://host:4318 for HTTP; empty (default) turns tracing off",
		ptr: func(c *Config) any { return &c.Tracing.Endpoint }},
	{key: "tracing.protocol", help: "OTLP protocol: grpc or http; empty = http for an http(s):// endpoint, grpc otherwise",
		ptr: func(c *Config) any { return &c.Tracing.Protocol }},
	{key: "tracing.sample_ratio", flag: "tracing-sample-ratio", help: "share of new traces recorded, 0 to 1; a trace a client sends sampled is always continued",
		ptr: func(c *Config) any { return &c.Tracing.SampleRatio }},
	{key: "tracing.ca_file", help: "PEM CA certificates verifying the collector; set (or an https:// endpoint) turns TLS to the collector on",
		ptr: func(c *Config) any { return &c.Tracing.CAFile }},
	{key: "tracing.service_name", help: "service.name of this node's spans",
		ptr: func(c *Config) any { return &c.Tracing.ServiceName }},
}

// sections are the YAML mappings that group keys.
var sections = map[string]bool{"store": true, "db": true, "postgres": true, "tls": true, "log": true, "limits": true,
	"quota": true, "retention": true, "keypackages": true, "invitations": true, "auth": true, "admin": true, "cluster": true, "mls": true, "tracing": true}

func optionByKey(key string) (option, bool) {
	for _, o := range options {
		if o.key == key {
			return o, true
		}
	}
	return option{}, false
}

// secret reports whether the option holds key material.
func (o option) secret() bool {
	var c Config
	_, ok := o.ptr(&c).(*secret.Bytes)
	return ok
}

// env is the option's environment variable, QPC_<SECTION>_<KEY> or QPC_<KEY>.
func (o option) env() string {
	return "QPC_" + strings.ToUpper(strings.ReplaceAll(o.key, ".", "_"))
}

// value returns the option's value in c in its configuration-file form:
// string, int, float64, a duration string, or the redaction marker for a set
// secret ("" when unset); a connection string is shown by RedactDSN.
func (o option) value(c Config) any {
	switch p := o.ptr(&c).(type) {
	case *string:
		return *p
	case *int:
		return *p
	case *float64:
		return *p
	case *time.Duration:
		return FormatDuration(*p)
	case *secret.Bytes:
		if p.IsZero() {
			return ""
		}
		if o.dsn {
			return RedactDSN(string(p.Reveal()))
		}
		return secret.Redacted
	}
	return nil
}

// text is value formatted as it would be written in the environment.
func (o option) text(c Config) string {
	switch v := o.value(c).(type) {
	case string:
		return v
	case int:
		return strconv.Itoa(v)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	return ""
}

// set parses s into the option's field in c. Type errors name the option and
// the value (except for secrets) and say what is expected.
func (o option) set(c *Config, s string) *FieldError {
	s = strings.TrimSpace(s)
	switch p := o.ptr(c).(type) {
	case *string:
		switch o.key {
		case "log.level", "log.format", "auth.registration", "store.backend", "postgres.sslmode", "ops_pprof":
			s = strings.ToLower(s)
		}
		*p = s
	case *int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return &FieldError{Key: o.key, Value: s, Expected: "an integer such as " + o.text(Default()), Err: err}
		}
		*p = n
	case *float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return &FieldError{Key: o.key, Value: s, Expected: "a number such as " + o.text(Default()), Err: err}
		}
		*p = f
	case *time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return &FieldError{Key: o.key, Value: s,
				Expected: "a duration such as " + o.text(Default()) + " (units ms, s, m, h)", Err: err}
		}
		*p = d
	case *secret.Bytes:
		p.Wipe()
		if s == "" {
			return nil
		}
		if o.dsn {
			*p = secret.New([]byte(s))
			return nil
		}
		k, err := secret.FromHex(s, DBKeySize)
		if err != nil {
			return &FieldError{Key: o.key, Value: secret.Redacted, Expected: "64 hex characters (32 bytes)", Err: secret.ErrBadHex}
		}
		*p = k
	}
	return nil
}
