package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite .env.example and the option tables in docs/configuration.md")

const (
	envExamplePath = "../../.env.example"
	docsPath       = "../../docs/configuration.md"
	docsBegin      = "<!-- BEGIN GENERATED OPTIONS: go test ./internal/config -update -->"
	docsEnd        = "<!-- END GENERATED OPTIONS -->"
)

// sectionTitles orders and names the groups of options in generated text.
var sectionTitles = []struct{ section, title string }{
	{"", "Addresses and data directory"},
	{"store", "Storage backend (store)"},
	{"db", "SQLCipher database key (db)"},
	{"postgres", "PostgreSQL backend (postgres)"},
	{"tls", "TLS (tls)"},
	{"log", "Logging (log)"},
	{"limits", "Limits (limits)"},
	{"quota", "Per-account quotas (quota)"},
	{"retention", "Retention (retention)"},
	{"keypackages", "KeyPackages (keypackages)"},
	{"invitations", "Invitations to channels and DMs (invitations)"},
	{"mls", "MLS cipher suites (mls)"},
	{"auth", "Authentication (auth)"},
	{"admin", "Admin API (admin)"},
	{"cluster", "Several nodes (cluster)"},
	{"tracing", "Distributed tracing (tracing)"},
}

func optionsIn(section string) []option {
	var out []option
	for _, o := range options {
		s, _, nested := strings.Cut(o.key, ".")
		if !nested {
			s = ""
		}
		if s == section {
			out = append(out, o)
		}
	}
	return out
}

func renderEnvExample() string {
	var b strings.Builder
	b.WriteString(`# qpcd configuration: every option, its default and what it means.
# Precedence: built-in defaults < YAML file (--config) < QPC_* environment < flags.
# YAML key a.b is QPC_A_B here. Lines are commented where the default is empty.
# Generated from internal/config/options.go: go test ./internal/config -update
`)
	d := Default()
	for _, st := range sectionTitles {
		fmt.Fprintf(&b, "\n# --- %s ---\n", st.title)
		for _, o := range optionsIn(st.section) {
			fmt.Fprintf(&b, "# %s\n", o.help)
			val := o.text(d)
			if val == "" {
				fmt.Fprintf(&b, "# %s=\n", o.env())
			} else {
				fmt.Fprintf(&b, "%s=%s\n", o.env(), val)
			}
		}
	}
	return b.String()
}

func renderDocsTables() string {
	var b strings.Builder
	d := Default()
	for _, st := range sectionTitles {
		fmt.Fprintf(&b, "\n### %s\n\n", st.title)
		b.WriteString("| YAML key | Environment | Flag | Default | Meaning |\n|---|---|---|---|---|\n")
		for _, o := range optionsIn(st.section) {
			flagName := "–"
			if o.flag != "" {
				flagName = "`--" + o.flag + "`"
			}
			def := "`" + o.text(d) + "`"
			if o.text(d) == "" {
				def = "(empty)"
			}
			fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s | %s |\n", o.key, o.env(), flagName, def,
				mdEscape(o.help))
		}
	}
	return b.String()
}

func TestEnvExampleUpToDate(t *testing.T) {
	want := renderEnvExample()
	if *update {
		if err := os.WriteFile(envExamplePath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(envExamplePath)
	if err != nil {
		t.Fatal(err)
	}
	// Every option of Default() has its own line with its default.
	d := Default()
	for _, o := range options {
		line := o.env() + "=" + o.text(d)
		re := regexp.MustCompile(`(?m)^(# )?` + regexp.QuoteMeta(line) + `$`)
		if !re.Match(got) {
			t.Errorf(".env.example has no line %q", line)
		}
	}
	if string(got) != want {
		t.Fatalf(".env.example is stale; run: go test ./internal/config -update")
	}
}

func TestDocsUpToDate(t *testing.T) {
	raw, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i, j := strings.Index(doc, docsBegin), strings.Index(doc, docsEnd)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the generated-options markers", filepath.Base(docsPath))
	}
	fresh := doc[:i+len(docsBegin)] + "\n" + renderDocsTables() + "\n" + doc[j:]
	if *update && fresh != doc {
		if err := os.WriteFile(docsPath, []byte(fresh), 0o644); err != nil {
			t.Fatal(err)
		}
		doc = fresh
	}
	if fresh != doc {
		t.Fatalf("docs/configuration.md option tables are stale; run: go test ./internal/config -update")
	}
	for _, o := range options {
		if !strings.Contains(doc, "`"+o.key+"`") || !strings.Contains(doc, o.env()) {
			t.Errorf("docs/configuration.md does not document %s", o.key)
		}
	}
}

// mdEscape keeps table cells intact and <placeholders> visible in Markdown.
func mdEscape(s string) string {
	return strings.NewReplacer("|", "\\|", "<", "&lt;", ">", "&gt;").Replace(s)
}
