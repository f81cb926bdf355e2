package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestUsageErrorsExit2: unknown or missing subcommands and stray
// arguments exit 2 (config bogus printed help and exited 0; qpcd bogus
// exited 1); --version prints the version.
func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{{"bogus"}, {"config"}, {"config", "bogus"}, {"version", "x"}, {"completion", "bogus"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "qpcd") {
			t.Errorf("qpcd %v: exit %d, stderr %q; want %d", args, code, errb.String(), exitUsage)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb); code != exitOK || !strings.HasPrefix(out.String(), "qpcd ") {
		t.Errorf("--version: exit %d, %q %q", code, out.String(), errb.String())
	}
}
