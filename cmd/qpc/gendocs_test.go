package main

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/quicprochat/quicprochat/internal/clidoc/clidoctest"
	"github.com/quicprochat/quicprochat/internal/client/cli"
)

// The man pages and completion scripts the packages ship match the command
// tree; `go test ./cmd/qpc -run GeneratedDocs -update-docs` rewrites them.
func TestGeneratedDocsAreCurrent(t *testing.T) {
	clidoctest.Check(t, "qpc", "../../packaging", func(args []string) error {
		var out, errb bytes.Buffer
		if code := cli.Run(context.Background(), args, cli.IO{Stdout: &out, Stderr: &errb}); code != 0 {
			return fmt.Errorf("exit %d: %s", code, errb.String())
		}
		return nil
	})
}
