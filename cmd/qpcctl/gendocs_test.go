package main

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/quicprochat/quicprochat/internal/clidoc/clidoctest"
)

// The man pages and completion scripts the packages ship match the command
// tree; `go test ./cmd/qpcctl -run GeneratedDocs -update-docs` rewrites them.
func TestGeneratedDocsAreCurrent(t *testing.T) {
	clidoctest.Check(t, "qpcctl", "../../packaging", func(args []string) error {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 {
			return fmt.Errorf("exit %d: %s", code, errb.String())
		}
		return nil
	})
}
