package config

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// PostgresConn is what the PostgreSQL store needs to open its pool.
// Config.PostgresConn builds it.
type PostgresConn struct {
	// DSN is the connection string to give pgxpool.ParseConfig (or
	// pgconn.ParseConfig, for a dedicated LISTEN connection): postgres.dsn,
	// else the content of postgres.dsn_file, with sslmode, sslrootcert
	// (postgres.ca_file), connect_timeout and the statement_timeout run-time
	// parameter appended, so they replace the DSN's own. It holds the
	// password: log RedactDSN(string(DSN.Reveal())), never the DSN itself.
	DSN secret.Bytes
	// MaxConns and MinConns are postgres.max_conns and postgres.min_conns,
	// for pgxpool.Config (int32 there; both are at most 10000).
	MaxConns, MinConns int
	// StatementTimeout is postgres.statement_timeout, already in DSN;
	// given for client-side deadlines.
	StatementTimeout time.Duration
	// ConnectTimeout is postgres.connect_timeout, already in DSN.
	ConnectTimeout time.Duration
	// SSLMode is the sslmode the DSN ends up with, for a start-up log line.
	SSLMode string
}

// PostgresConn returns the connection settings for the PostgreSQL backend.
// It reads postgres.dsn_file now (when postgres.dsn is empty), so calling it
// again after the file changed picks up the new content. Errors are
// *FieldError, as from Validate, and never contain the DSN's password.
// It does not look at store.backend.
func (c Config) PostgresConn() (PostgresConn, error) {
	pc, fe := c.postgresConn()
	if fe != nil {
		return PostgresConn{}, fe
	}
	return pc, nil
}

func (c Config) postgresConn() (PostgresConn, *FieldError) {
	p := c.Postgres
	if p.CAFile != "" {
		if fe := checkCAFile(p.CAFile); fe != nil {
			return PostgresConn{}, fe
		}
	}
	src, key, fe := c.dsnSource()
	if fe != nil {
		return PostgresConn{}, fe
	}
	defer src.Wipe()
	raw := string(src.Reveal())
	// badDSN reports a connection string that is not accepted: by its
	// redacted form for postgres.dsn, by the file's name for dsn_file.
	badDSN := func(redacted, why string) *FieldError {
		if key == "postgres.dsn" {
			return &FieldError{Key: key, Value: redacted, Expected: "a PostgreSQL connection string, URL (postgres://user:password@host:5432/db) or key=value form (" + why + ")"}
		}
		return &FieldError{Key: key, Value: p.DSNFile, Expected: "a file holding a PostgreSQL connection string, URL or key=value form; it holds " + redacted + " (" + why + ")"}
	}
	d, err := parseDSN(raw)
	if err != nil {
		return PostgresConn{}, badDSN(unparseableDSN, err.Error())
	}

	mode := p.SSLMode
	var params [][2]string
	switch {
	case mode != "":
		params = append(params, [2]string{"sslmode", mode})
	case d.settings["sslmode"] != "":
		mode = d.settings["sslmode"]
	default:
		mode = "prefer"
		params = append(params, [2]string{"sslmode", mode})
	}
	rootCert := d.settings["sslrootcert"]
	if p.CAFile != "" {
		rootCert = p.CAFile
		params = append(params, [2]string{"sslrootcert", p.CAFile})
	}
	if (mode == "verify-ca" || mode == "verify-full") && rootCert == "" {
		return PostgresConn{}, &FieldError{Key: "postgres.ca_file", Value: "",
			Expected: "a PEM file of CA certificates, because sslmode is " + mode +
				": set postgres.ca_file, or sslrootcert in the DSN (sslrootcert=system trusts the system's roots)"}
	}
	if rootCert == "system" {
		mode = "verify-full" // what pgx and libpq do with sslrootcert=system
	}
	// qpcd writes: a connection to a standby is of no use to it. With
	// several hosts (failover), connect to the one that takes writes.
	switch attrs := d.settings["target_session_attrs"]; attrs {
	case "", "any":
		if d.hostCount() > 1 {
			params = append(params, [2]string{"target_session_attrs", "read-write"})
		}
	case "read-only", "standby", "prefer-standby":
		return PostgresConn{}, badDSN(d.redacted, "target_session_attrs="+attrs+" would connect qpcd, which writes, to a read-only server; "+
			"use read-write (the default when the DSN names several hosts) or primary")
	}
	params = append(params,
		[2]string{"connect_timeout", strconv.FormatInt(int64(p.ConnectTimeout/time.Second), 10)},
		[2]string{"statement_timeout", strconv.FormatInt(p.StatementTimeout.Milliseconds(), 10)})
	full := d.with(raw, params)
	if _, err := pgconn.ParseConfig(full); err != nil {
		return PostgresConn{}, badDSN(d.redacted, pgconnCause(err, d.secrets))
	}
	return PostgresConn{
		DSN:              secret.New([]byte(full)),
		MaxConns:         p.MaxConns,
		MinConns:         p.MinConns,
		StatementTimeout: p.StatementTimeout,
		ConnectTimeout:   p.ConnectTimeout,
		SSLMode:          mode,
	}, nil
}

// dsnSource returns a copy of the connection string to use and the option
// it came from: postgres.dsn, else the content of postgres.dsn_file.
func (c Config) dsnSource() (secret.Bytes, string, *FieldError) {
	if !c.Postgres.DSN.IsZero() {
		return c.Postgres.DSN.Clone(), "postgres.dsn", nil
	}
	if c.Postgres.DSNFile == "" {
		return secret.Bytes{}, "", &FieldError{Key: "postgres.dsn", Value: "",
			Expected: "a connection string for store.backend=postgres: set postgres.dsn (QPC_POSTGRES_DSN) or postgres.dsn_file (QPC_POSTGRES_DSN_FILE)"}
	}
	b, fe := readDSNFile(c.Postgres.DSNFile)
	return b, "postgres.dsn_file", fe
}

// maxDSNFileSize bounds what readDSNFile reads; a connection string is short.
const maxDSNFileSize = 64 << 10

// readDSNFile reads a connection string from path: a regular file that
// neither group nor others may access, surrounding whitespace ignored.
func readDSNFile(path string) (secret.Bytes, *FieldError) {
	b, err := secret.ReadPrivateFile(path, maxDSNFileSize)
	if err != nil {
		return secret.Bytes{}, privateFileError("postgres.dsn_file", path, "the connection string", "the database password", err)
	}
	defer b.Wipe()
	s := bytes.TrimSpace(b.Reveal())
	if len(s) == 0 {
		return secret.Bytes{}, &FieldError{Key: "postgres.dsn_file", Value: path, Expected: "a file holding the connection string (this file is empty)"}
	}
	return secret.New(bytes.Clone(s)), nil
}

// privateFileError turns a secret.ReadPrivateFile error for the file named by
// option key into a *FieldError: holds says what the file should hold, guards
// what its content gives away.
func privateFileError(key, path, holds, guards string, err error) *FieldError {
	var me *secret.ModeError
	switch {
	case errors.As(err, &me):
		return &FieldError{Key: key, Value: path, Err: err,
			Expected: "a file that only its owner may access, because it holds " + guards + " (" + me.Error() + ")"}
	case errors.Is(err, secret.ErrNotRegular):
		return &FieldError{Key: key, Value: path, Err: err, Expected: "a regular file holding " + holds + " (this is not one)"}
	case errors.Is(err, secret.ErrFileTooLarge):
		return &FieldError{Key: key, Value: path, Err: err, Expected: "a small file holding " + holds + " (" + err.Error() + ")"}
	default:
		return &FieldError{Key: key, Value: path, Err: err, Expected: "a readable file holding " + holds + " (" + causeText(err) + ")"}
	}
}

// checkCAFile checks that path is a PEM file of X.509 certificates only.
func checkCAFile(path string) *FieldError {
	fail := func(expected string, err error) *FieldError {
		return &FieldError{Key: "postgres.ca_file", Value: path, Expected: expected, Err: err}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fail("a readable PEM file of CA certificates ("+causeText(err)+")", err)
	}
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		n++
		if block.Type != "CERTIFICATE" {
			return fail(fmt.Sprintf("a PEM file of CA certificates only (block %d is %s)", n, block.Type), nil)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fail(fmt.Sprintf("a PEM file of CA certificates (certificate %d does not parse: %v)", n, err), err)
		}
	}
	if n == 0 {
		return fail("a PEM file of CA certificates (no CERTIFICATE block found)", nil)
	}
	return nil
}

// pgconnCause is the reason pgconn gives for refusing a connection string,
// without the (best-effort redacted) string it quotes, and with every known
// password replaced.
func pgconnCause(err error, secrets []string) string {
	s := err.Error()
	if rest, ok := strings.CutPrefix(s, "cannot parse `"); ok {
		if i := strings.Index(rest, "`: "); i >= 0 {
			s = rest[i+len("`: "):]
		}
	}
	for _, v := range secrets {
		if v != "" {
			s = strings.ReplaceAll(s, v, dsnPasswordMask)
		}
	}
	return s
}

// dsnPasswordMask replaces passwords in RedactDSN's output. It has no
// brackets, so a redacted URL still parses (and fails to log in).
const dsnPasswordMask = "REDACTED"

// unparseableDSN is RedactDSN's answer when it cannot find the password.
const unparseableDSN = "[redacted: unparseable DSN]"

// RedactDSN returns dsn, a PostgreSQL connection string in URL or key=value
// form, with every password (the URL's user:password and any password or
// sslpassword parameter) replaced by REDACTED, safe to log and print. A
// string it cannot parse comes back as "[redacted: unparseable DSN]".
func RedactDSN(dsn string) string {
	d, err := parseDSN(dsn)
	if err != nil {
		return unparseableDSN
	}
	return d.redacted
}

// dsn is a connection string taken apart the way pgconn (and libpq) take it
// apart, enough to redact it and to append parameters.
type dsn struct {
	url      bool
	hasQuery bool              // URL form: a '?' starts a query
	openEnd  bool              // URL form: the query is empty or ends in '&
	settings map[string]string // decoded values by libpq key (dbname is "database"); the last of a repeated key wins
	secrets  []string          // passwords as written and decoded, for scrubbing error text
	redacted string
	// trailingEscape: key=value form ending in an unquoted backslash,
	// which escapes the end of the string.
	trailingEscape bool
	// trailingEmpty: key=value form ending in "key=", whose value would be
	// the next word appended.
	trailingEmpty bool
	// urlHosts is how many hosts the URL form names before its path.
	urlHosts int
}

// hostCount is how many servers the connection string names: a host (or
// hostaddr) parameter's comma-separated list wins over the URL's hosts,
// as in pgconn.
func (d dsn) hostCount() int {
	for _, k := range []string{"host", "hostaddr"} {
		if v, ok := d.settings[k]; ok && v != "" {
			return strings.Count(v, ",") + 1
		}
	}
	return max(d.urlHosts, 1)
}

// parseDSN parses a connection string. Its errors never quote the input.
func parseDSN(s string) (dsn, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return dsn{}, errors.New("a NUL byte in the connection string")
	}
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return parseDSNURL(s)
	}
	return parseDSNKeywords(s)
}

// isPasswordKey reports whether a connection string key may name a secret:
// password and sslpassword, but also misspellings such as PASSWORD or
// passwd, which only ever redacts more.
func isPasswordKey(k string) bool {
	return strings.Contains(strings.ToLower(k), "pass")
}

func canonicalDSNKey(k string) string {
	if k == "dbname" {
		return "database"
	}
	return k
}

// parseDSNURL mirrors pgconn's parseURLSettings (libpq's URI parser): an '@'
// before the first '/' ends the user information, whose password is what
// follows its first ':'; hosts are comma-separated; the query is
// '&'-separated key=value pairs, percent-encoded.
func parseDSNURL(s string) (dsn, error) {
	d := dsn{url: true, settings: map[string]string{}}
	var out strings.Builder
	p := s
	for _, prefix := range []string{"postgresql://", "postgres://"} {
		if rest, ok := strings.CutPrefix(s, prefix); ok {
			out.WriteString(prefix)
			p = rest
			break
		}
	}
	if i := strings.IndexAny(p, "@/"); i >= 0 && p[i] == '@' {
		user, password, hasPassword := strings.Cut(p[:i], ":")
		out.WriteString(user)
		if hasPassword {
			out.WriteByte(':')
			if password != "" {
				out.WriteString(dsnPasswordMask)
				d.addSecret(password, uriDecodeLenient(password))
			}
		}
		out.WriteByte('@')
		p = p[i+1:]
	}
	// A second '@' (or one after a '/') is a password with '@' or '/'
	// left unencoded: libpq would read part of it as the host or the
	// database name, and a printout would show that part.
	if strings.Contains(p, "@") {
		return dsn{}, errors.New(`an "@" that does not end user:password; percent-encode "@", ":" and "/" in them as %40, %3A and %2F`)
	}
	// Hosts and ports, up to the path or the query.
	start := p
	for {
		if strings.HasPrefix(p, "[") {
			end := strings.IndexByte(p, ']')
			if end < 0 {
				return dsn{}, errors.New(`an IPv6 host without its closing "]"`)
			}
			p = p[end+1:]
			if p != "" && !strings.ContainsAny(p[:1], ":/?,") {
				return dsn{}, errors.New(`an unexpected character after an IPv6 host (expected ":" or "/")`)
			}
		} else {
			p = p[indexOrLen(p, ":/?,"):]
		}
		if strings.HasPrefix(p, ":") {
			p = p[1:]
			p = p[indexOrLen(p, "/?,"):]
		}
		d.urlHosts++
		if !strings.HasPrefix(p, ",") {
			break
		}
		p = p[1:]
	}
	if strings.HasPrefix(p, "/") {
		p = p[indexOrLen(p, "?"):]
	}
	out.WriteString(start[:len(start)-len(p)])
	if !strings.HasPrefix(p, "?") {
		d.redacted = out.String()
		return d, nil
	}
	d.hasQuery = true
	out.WriteByte('?')
	sslWasLast := false
	for i, pair := range strings.Split(p[1:], "&") {
		if i > 0 {
			out.WriteByte('&')
		}
		if pair == "" && i == strings.Count(p[1:], "&") {
			d.openEnd = true // "?" or a trailing "&" ends the query
			break
		}
		rawKey, rawValue, found := strings.Cut(pair, "=")
		if !found || strings.Contains(rawValue, "=") {
			return dsn{}, errors.New(`a URL query parameter that is not one key=value pair`)
		}
		key, err := uriDecode(rawKey)
		if err != nil {
			return dsn{}, err
		}
		key = canonicalDSNKey(key)
		out.WriteString(rawKey + "=")
		if isPasswordKey(key) {
			if rawValue != "" {
				out.WriteString(dsnPasswordMask)
				d.addSecret(rawValue, uriDecodeLenient(rawValue))
			}
			continue
		}
		out.WriteString(rawValue)
		val, err := uriDecode(rawValue)
		if err != nil {
			return dsn{}, err
		}
		switch key {
		case "ssl":
			sslWasLast = true
		case "sslmode":
			sslWasLast = false
		}
		d.settings[key] = val
	}
	// The JDBC alias ssl=true means sslmode=require when it came last.
	if d.settings["ssl"] == "true" {
		delete(d.settings, "ssl")
		if sslWasLast {
			d.settings["sslmode"] = "require"
		}
	}
	d.redacted = out.String()
	return d, nil
}

func (d *dsn) addSecret(vs ...string) { d.secrets = append(d.secrets, vs...) }

func indexOrLen(s, chars string) int {
	if i := strings.IndexAny(s, chars); i >= 0 {
		return i
	}
	return len(s)
}

// uriDecode percent-decodes like libpq: %XX only, surrounding spaces
// skipped, inner spaces refused. Its errors do not quote the input.
func uriDecode(raw string) (string, error) {
	t := strings.Trim(raw, " ")
	if strings.Contains(t, " ") {
		return "", errors.New("a space inside a URL component (write %20)")
	}
	var b strings.Builder
	for i := 0; i < len(t); i++ {
		if t[i] != '%' {
			b.WriteByte(t[i])
			continue
		}
		if i+2 >= len(t) {
			return "", errors.New("an invalid percent-encoding in the URL")
		}
		v, err := strconv.ParseUint(t[i+1:i+3], 16, 8)
		if err != nil || v == 0 {
			return "", errors.New("an invalid percent-encoding in the URL")
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// uriDecodeLenient decodes what uriDecode can and keeps the rest as written.
func uriDecodeLenient(raw string) string {
	if v, err := uriDecode(raw); err == nil {
		return v
	}
	return raw
}

const dsnSpace = " \t\n\r\v\f"

// parseDSNKeywords mirrors pgconn's parseKeywordValueSettings (libpq's
// conninfo): key=value pairs separated by whitespace; a value is a run of
// non-space characters or a single-quoted string; a backslash takes the
// next character literally.
func parseDSNKeywords(s string) (dsn, error) {
	d := dsn{settings: map[string]string{}}
	var out strings.Builder
	i, n := 0, len(s)
	skipSpace := func() {
		j := i
		for i < n && strings.IndexByte(dsnSpace, s[i]) >= 0 {
			i++
		}
		out.WriteString(s[j:i])
	}
	skipSpace()
	for i < n {
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return dsn{}, errors.New(`a word without "=" (expected key=value pairs)`)
		}
		key := strings.Trim(s[i:i+eq], dsnSpace)
		if key == "" || strings.ContainsAny(key, dsnSpace) {
			return dsn{}, errors.New(`a key=value pair with an empty or spaced key`)
		}
		out.WriteString(s[i : i+eq+1])
		i += eq + 1
		skipSpace()
		var raw string
		quoted := i < n && s[i] == '\''
		if quoted {
			i++
			j := i
			for i < n && s[i] != '\'' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			if i >= n {
				return dsn{}, errors.New("an unterminated quoted value")
			}
			raw = s[j:i]
			i++
		} else {
			j := i
			for i < n && strings.IndexByte(dsnSpace, s[i]) < 0 {
				if s[i] == '\\' {
					i++
					if i == n {
						d.trailingEscape = true
						break
					}
				}
				i++
			}
			raw = s[j:i]
		}
		val := unescapeKeywordValue(raw)
		// An unquoted empty value ("key=" or "key=\") can only be the last.
		d.trailingEmpty = !quoted && val == ""
		q := ""
		if quoted {
			q = "'"
		}
		if isPasswordKey(key) && val != "" {
			out.WriteString(q + dsnPasswordMask + q)
			d.addSecret(raw, val)
		} else {
			out.WriteString(q + raw + q)
			d.settings[canonicalDSNKey(key)] = val
		}
		skipSpace()
	}
	d.redacted = out.String()
	return d, nil
}

// unescapeKeywordValue drops each backslash and keeps the character after it.
func unescapeKeywordValue(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// with returns raw (the string d was parsed from) with params appended, so
// they replace earlier settings of the same keys: in a URL as query
// parameters, otherwise as quoted key='value' pairs.
func (d dsn) with(raw string, params [][2]string) string {
	var b strings.Builder
	if d.url {
		b.WriteString(raw)
		sep := "?"
		switch {
		case d.openEnd:
			sep = ""
		case d.hasQuery:
			sep = "&"
		}
		for _, kv := range params {
			b.WriteString(sep + kv[0] + "=" + uriEncode(kv[1]))
			sep = "&"
		}
		return b.String()
	}
	if d.trailingEscape {
		raw = raw[:len(raw)-1] // the backslash escapes nothing; it would escape our separator
	}
	if d.trailingEmpty {
		raw += "''" // "key=" would take our first pair as its value
	}
	b.WriteString(raw)
	for _, kv := range params {
		b.WriteString(" " + kv[0] + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[1]) + "'")
	}
	return b.String()
}

// uriEncode percent-encodes everything but unreserved characters and '/'.
func uriEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
