// Command qpc-supervise is a minimal process supervisor for hosts (and
// tests) without systemd or procd: `run` keeps one program running and
// restarts, stops or starts it on request; `ctl` sends the request and waits
// until it is done, so it serves as the command of qpcctl's "exec" service
// manager:
//
//	qpc-supervise run --state /var/lib/qpcd/supervise.json -- /var/lib/qpcd/releases/current/qpcd --config /etc/qpcd/qpcd.yaml
//	qpcctl release canary --service exec --service-cmd "qpc-supervise ctl --state /var/lib/qpcd/supervise.json" ARTIFACT
//
// The program path is resolved at every start, so a restart runs whatever
// a `current` link points at by then. Requests are signals to the
// supervisor: SIGHUP restart, SIGUSR1 stop, SIGUSR2 start; SIGTERM or
// SIGINT stop the program and end the supervisor. A program that exits on
// its own is started again after a second. The state file (JSON, written
// atomically) says what runs and counts the transitions.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// state is the state file.
type state struct {
	SupervisorPID int    `json:"supervisor_pid"`
	Gen           int64  `json:"gen"`   // bumped after every handled request and every start or stop
	State         string `json:"state"` // running, stopped
	ChildPID      int    `json:"child_pid,omitempty"`
	Error         string `json:"error,omitempty"`
}

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

const usage = "usage: qpc-supervise run --state FILE -- PROGRAM [ARGS...]\n       qpc-supervise ctl --state FILE restart|stop|start|status"

func run(args []string, stderr io.Writer) int {
	if len(args) < 3 || args[1] != "--state" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	file := args[2]
	switch args[0] {
	case "run":
		if len(args) < 5 || args[3] != "--" {
			fmt.Fprintln(stderr, usage)
			return 2
		}
		if err := supervise(file, args[4], args[5:], stderr); err != nil {
			fmt.Fprintln(stderr, "qpc-supervise:", err)
			return 1
		}
		return 0
	case "ctl":
		if len(args) != 4 {
			fmt.Fprintln(stderr, usage)
			return 2
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if err := control(ctx, file, args[3], os.Stdout); err != nil {
			fmt.Fprintln(stderr, "qpc-supervise:", err)
			var ue usageErr
			if errors.As(err, &ue) {
				return 2
			}
			return 1
		}
		return 0
	}
	fmt.Fprintln(stderr, usage)
	return 2
}

type usageErr struct{ error }

// stopTimeout is how long a stopping program gets before SIGKILL (qpcd
// drains for limits.drain_timeout, 15 s by default).
const stopTimeout = 30 * time.Second

func supervise(file, prog string, args []string, stderr io.Writer) error {
	st := state{SupervisorPID: os.Getpid(), State: "stopped"}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	var child *exec.Cmd
	var exited chan error
	var respawn <-chan time.Time
	save := func() error {
		st.Gen++
		return writeState(file, st)
	}
	start := func() {
		respawn = nil
		cmd := exec.Command(prog, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			st.State, st.ChildPID, st.Error = "stopped", 0, err.Error()
			fmt.Fprintln(stderr, "qpc-supervise: start:", err)
			respawn = time.After(time.Second)
			return
		}
		child, exited = cmd, make(chan error, 1)
		ch := exited
		go func() { ch <- cmd.Wait() }()
		st.State, st.ChildPID, st.Error = "running", cmd.Process.Pid, ""
	}
	stop := func() {
		respawn = nil
		if child == nil {
			return
		}
		_ = child.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = child.Process.Kill()
			<-exited
		}
		child, exited = nil, nil
		st.State, st.ChildPID = "stopped", 0
	}

	start()
	if err := save(); err != nil {
		stop()
		return err
	}
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				stop()
				start()
			case syscall.SIGUSR1:
				stop()
			case syscall.SIGUSR2:
				if child == nil {
					start()
				}
			default:
				stop()
				_ = save()
				return nil
			}
			if err := save(); err != nil {
				fmt.Fprintln(stderr, "qpc-supervise:", err)
			}
		case err := <-exited:
			child, exited = nil, nil
			st.State, st.ChildPID = "stopped", 0
			if err != nil {
				st.Error = err.Error()
			} else {
				st.Error = "exited"
			}
			fmt.Fprintf(stderr, "qpc-supervise: %s ended (%s); starting it again in 1s\n", prog, st.Error)
			respawn = time.After(time.Second)
			_ = save()
		case <-respawn:
			start()
			_ = save()
		}
	}
}

func writeState(file string, st state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return fmt.Errorf("state file: %w (check that %s is writable)", err, filepath.Dir(file))
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("state file: %w", err)
	}
	return os.Rename(tmp.Name(), file)
}

func readState(file string) (state, error) {
	var st state
	b, err := os.ReadFile(file)
	if err != nil {
		return st, fmt.Errorf("state file: %w (is `qpc-supervise run --state %s` running?)", err, file)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file %s: %w", file, err)
	}
	return st, nil
}

// control sends a request and waits until the supervisor handled it.
func control(ctx context.Context, file, action string, stdout io.Writer) error {
	st, err := readState(file)
	if err != nil {
		return err
	}
	var sig syscall.Signal
	want := "running"
	switch action {
	case "restart":
		sig = syscall.SIGHUP
	case "stop":
		sig, want = syscall.SIGUSR1, "stopped"
	case "start":
		sig = syscall.SIGUSR2
	case "status":
		fmt.Fprintf(stdout, "%s (pid %d, supervisor %d)\n", st.State, st.ChildPID, st.SupervisorPID)
		return nil
	default:
		return usageErr{fmt.Errorf("unknown action %q (restart, stop, start, status)", action)}
	}
	if err := syscall.Kill(st.SupervisorPID, sig); err != nil {
		return fmt.Errorf("signal supervisor %d: %w (is `qpc-supervise run --state %s` running?)", st.SupervisorPID, err, file)
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		now, err := readState(file)
		if err == nil && now.Gen > st.Gen && now.State == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: the supervisor did not finish within the time limit (state %q, error %q)", action, now.State, now.Error)
		case <-t.C:
		}
	}
}
