// Package docs_test keeps docs/production-readiness.md true: every test,
// fuzz target and make target it names exists, and every task of the plan
// keeps its row.
package docs_test

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// planTasks are the tasks of the production-readiness plan; each must keep
// a row (its first cell) in the page.
var planTasks = []string{
	"CODEOWNERS", "CI", "SBOM", "Threat model", "Dependency audit",
	"Wire versioning", "ALPN", "Ciphersuite allowlist", "Downgrade guards",
	"Draining", "KeyPackage rotation", "Accounts and tokens", "Rate limits", "Audit logging",
	"Idempotent ids", "Ordering", "Offline queue", "1:1 channels", "TTL eviction", "Client retry",
	"Testnet", "Positive and negative E2E", "Compat matrix", "Fuzzing", "Golden wire",
	"Persistence", "Soak", "Load", "Chaos",
	"Backup and restore", "Canary and rollback", "Metrics and dashboards", "Distributed tracing",
}

var (
	testName   = regexp.MustCompile("`((?:Test|Fuzz|Benchmark)[A-Z0-9][A-Za-z0-9_]*)`")
	makeTarget = regexp.MustCompile("`make ([a-z][a-z0-9-]*)")
	funcDecl   = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)
	targetDecl = regexp.MustCompile(`(?m)^([a-z][a-z0-9-]*)\s*:`)
	row        = regexp.MustCompile(`^\| ([^|]+?) \|`)
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// declaredTests finds every Test, Fuzz and Benchmark function in the
// repository's _test.go files.
func declaredTests(t *testing.T) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin" || d.Name() == "dist" || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, "_test.go") {
			for _, m := range funcDecl.FindAllStringSubmatch(read(t, path), -1) {
				found[m[1]] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestProductionReadinessIsTrue(t *testing.T) {
	page := read(t, "production-readiness.md")
	tests := declaredTests(t)
	named := testName.FindAllStringSubmatch(page, -1)
	if len(named) < 50 {
		t.Fatalf("the page names only %d tests", len(named))
	}
	for _, m := range named {
		if !tests[m[1]] {
			t.Errorf("production-readiness.md names %s, which no _test.go declares", m[1])
		}
	}
	targets := map[string]bool{}
	for _, m := range targetDecl.FindAllStringSubmatch(read(t, "../Makefile"), -1) {
		targets[m[1]] = true
	}
	for _, m := range makeTarget.FindAllStringSubmatch(page, -1) {
		if !targets[m[1]] {
			t.Errorf("production-readiness.md names make %s, which the Makefile lacks", m[1])
		}
	}
	rows := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(page))
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			rows[m[1]] = sc.Text()
		}
	}
	for _, task := range planTasks {
		r, ok := rows[task]
		if !ok {
			t.Errorf("the plan's task %q has no row", task)
			continue
		}
		if !strings.Contains(r, "done") && !strings.Contains(r, "partial") && !strings.Contains(r, "open") {
			t.Errorf("row %q has no status", task)
		}
	}
}
