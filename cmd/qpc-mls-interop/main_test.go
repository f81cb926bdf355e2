package main

import "testing"

func TestRunUsage(t *testing.T) {
	if code, _ := run([]string{"-no-such-flag"}); code != 2 {
		t.Fatalf("bad flag: exit code %d, want 2", code)
	}
	if code, err := run([]string{"-host", "256.0.0.1", "-port", "1"}); code != 1 || err == nil {
		t.Fatalf("bad address: exit code %d, err %v", code, err)
	}
}
