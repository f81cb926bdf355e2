package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The supervisor restarts, stops and starts its program, and `ctl` returns
// only when that is done.
func TestSuperviseControl(t *testing.T) {
	dir := t.TempDir()
	stateFile := filepath.Join(dir, "s.json")
	sup := exec.Command(os.Args[0], "-test.run=TestHelperSupervisor")
	sup.Env = append(os.Environ(), "QPC_SUPERVISE_HELPER="+stateFile)
	var log bytes.Buffer
	sup.Stderr = &log
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = sup.Wait(); close(done) }()
	defer func() {
		_ = sup.Process.Signal(syscall.SIGTERM)
		<-done
	}()
	deadline := time.Now().Add(20 * time.Second)
	var st state
	for {
		var err error
		if st, err = readState(stateFile); err == nil && st.State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("supervisor not running: %v\n%s", err, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	first := st.ChildPID
	ctl := func(action, want string) state {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := control(ctx, stateFile, action, &bytes.Buffer{}); err != nil {
			t.Fatalf("%s: %v\n%s", action, err, log.String())
		}
		st, err := readState(stateFile)
		if err != nil || st.State != want {
			t.Fatalf("after %s: %+v %v", action, st, err)
		}
		return st
	}
	if st := ctl("restart", "running"); st.ChildPID == first || st.ChildPID == 0 {
		t.Fatalf("restart kept pid %d", first)
	}
	ctl("stop", "stopped")
	ctl("start", "running")
	if err := control(context.Background(), stateFile, "reload", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "unknown action") {
		t.Fatalf("unknown action: %v", err)
	}
}

// TestHelperSupervisor is the supervisor process of TestSuperviseControl,
// supervising `sleep`.
func TestHelperSupervisor(t *testing.T) {
	file := os.Getenv("QPC_SUPERVISE_HELPER")
	if file == "" {
		t.Skip("helper process")
	}
	os.Exit(run([]string{"run", "--state", file, "--", "sleep", "600"}, os.Stderr))
}
