package main

import (
	"bytes"
	"testing"

	"github.com/quicprochat/quicprochat/internal/clidoc/clidoctest"
)

// The man pages and completion scripts the packages ship match the command
// tree; `go test ./cmd/qpcd -run GeneratedDocs -update-docs` rewrites them.
func TestGeneratedDocsAreCurrent(t *testing.T) {
	clidoctest.Check(t, "qpcd", "../../packaging", func(args []string) error {
		var out, errb bytes.Buffer
		root := newRootCommand(&out, &errb)
		root.SetArgs(args)
		return root.Execute()
	})
}
