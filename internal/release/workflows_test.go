package release

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every action a workflow uses is pinned to a full commit SHA with the
// release it is beside it as a comment: a tag can be moved to other code,
// a SHA cannot (docs/release.md, "Supply chain in CI").
func TestWorkflowActionsPinnedBySHA(t *testing.T) {
	files, err := filepath.Glob("../../.github/workflows/*.yml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no workflows found: %v", err)
	}
	uses := regexp.MustCompile(`^\s*(?:-\s*)?uses:\s*(\S+)(.*)$`)
	pinned := regexp.MustCompile(`^[\w.-]+/[\w./-]+@[0-9a-f]{40}$`)
	release := regexp.MustCompile(`^\s*#\s*v\d+(\.\d+)*\s*$`)
	n := 0
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(body), "\n") {
			m := uses.FindStringSubmatch(line)
			if m == nil || strings.HasPrefix(m[1], "./") {
				continue
			}
			n++
			if !pinned.MatchString(m[1]) || !release.MatchString(m[2]) {
				t.Errorf("%s:%d: %q is not pinned as owner/repo@<40-hex SHA> # vX.Y.Z", filepath.Base(f), i+1, strings.TrimSpace(line))
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d uses: lines found; is the pattern still right?", n)
	}
}
