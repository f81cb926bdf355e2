package main

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
)

// busyLoop is a shell loop that burns CPU for a few hundred milliseconds.
const busyLoop = `i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done`

// A child that has exited and been waited for still counts: its time is in
// this process's cutime/cstime, as a postmaster's finished backends are.
func TestTreeCPUCountsExitedChildren(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	before, err := treeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", busyLoop)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if child < 50*time.Millisecond {
		t.Skipf("the child used only %v of CPU: too little to compare with 10 ms ticks", child)
	}
	after, err := treeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if got := after - before; got < child-2*clockTick {
		t.Fatalf("tree CPU grew by %v, the exited child alone used %v", got, child)
	}
}

// A live grandchild counts too (a process tree, not one process).
func TestTreeCPUCountsLiveDescendants(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	// sh runs the loop in a subshell (a grandchild), then waits on stdin.
	cmd := exec.Command("sh", "-c", "("+busyLoop+"; exec cat) ; :")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	// The subshell execs cat when the loop is done: wait for that, then
	// read the tree while the busy process still lives (as cat).
	deadline := time.Now().Add(30 * time.Second)
	var cat int
	for cat == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the busy loop did not finish in 30 s")
		}
		cat = findChildComm(t, cmd.Process.Pid, "cat")
		time.Sleep(20 * time.Millisecond) // polling a process we do not own the events of
	}
	own, err := processCPU(cat)
	if err != nil {
		t.Fatal(err)
	}
	if own < 50*time.Millisecond {
		t.Skipf("the grandchild used only %v of CPU", own)
	}
	tree, err := treeCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if tree < own {
		t.Fatalf("tree CPU %v is less than the live grandchild's own %v", tree, own)
	}
	if _, err := treeCPU(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// findChildComm returns the pid of parent's child named comm, or 0.
func findChildComm(t *testing.T, parent int, comm string) int {
	t.Helper()
	for pid := range commCPU(comm) {
		st, err := readStat(pid)
		if err == nil && st.ppid == parent {
			return pid
		}
	}
	return 0
}
