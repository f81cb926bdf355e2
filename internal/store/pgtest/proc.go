package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// bins are the PostgreSQL programs pgtest runs.
type bins struct {
	initdb, pgctl string
}

// findBins picks the newest /usr/lib/postgresql/VERSION/bin (Debian's
// layout) that has initdb, pg_ctl and postgres, else initdb and pg_ctl on PATH.
func findBins() (bins, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVersion := "", -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil || v <= bestVersion {
			continue
		}
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "pg_ctl")) && isExecutable(filepath.Join(d, "postgres")) {
			best, bestVersion = d, v
		}
	}
	if best != "" {
		return bins{initdb: filepath.Join(best, "initdb"), pgctl: filepath.Join(best, "pg_ctl")}, nil
	}
	initdb, err1 := exec.LookPath("initdb")
	pgctl, err2 := exec.LookPath("pg_ctl")
	if err1 != nil || err2 != nil {
		return bins{}, ErrNotInstalled
	}
	return bins{initdb: initdb, pgctl: pgctl}, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// lookupCredential returns nil when the process may run PostgreSQL itself,
// and the postgres system user when it runs as root.
func lookupCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("%w (%w)", ErrNoPostgresUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: the postgres user's ids %q/%q: %w", u.Uid, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("%w (it has uid 0)", ErrNoPostgresUser)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// A Unix socket path (DIR/.s.PGSQL.PORT.lock, DIR = PARENT/pgtest-NNNNNNNNNN)
// must fit sun_path's 107 bytes.
const maxParentLen = 107 - len("/pgtest-1234567890/.s.PGSQL.65535.lock")

// clusterParent picks the directory to make cluster dirs in: for a
// cluster without fsync a memory file system (see memoryDir; initdb and
// CREATE DATABASE run ten times faster there than on a disk, even with fsync
// off), else or failing that the first of os.TempDir(), /tmp and /var/tmp;
// one that the server's user can traverse, with a path short enough for the
// Unix socket.
func clusterParent(cred *syscall.Credential, fsync bool) (string, error) {
	tried := candidateParents(fsync)
	for _, p := range tried {
		p, err := filepath.EvalSymlinks(p)
		if err != nil || len(p) > maxParentLen || strings.ContainsAny(p, ",'\\\n") {
			continue
		}
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			continue
		}
		if cred == nil || traversable(p, cred) {
			return p, nil
		}
	}
	who := "current user"
	if cred != nil {
		who = "postgres user"
	}
	return "", fmt.Errorf("pgtest: none of %s is a directory that the %s can traverse with a path under %d bytes (for the Unix socket); set TMPDIR to one",
		strings.Join(tried, ", "), who, maxParentLen)
}

func candidateParents(fsync bool) []string {
	dirs := []string{os.TempDir(), "/tmp", "/var/tmp"}
	if m := memoryDir(); m != "" && !fsync {
		dirs = append([]string{m}, dirs...)
	}
	return dirs
}

// traversable reports whether cred's user may search dir and every parent.
func traversable(dir string, cred *syscall.Credential) bool {
	for p := dir; ; p = filepath.Dir(p) {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return false
		}
		var bit uint32 = 0o001
		switch {
		case st.Uid == cred.Uid:
			bit = 0o100
		case st.Gid == cred.Gid:
			bit = 0o010
		}
		if uint32(st.Mode)&bit == 0 {
			return false
		}
		if p == filepath.Dir(p) {
			return true
		}
	}
}

// sweepStale removes clusters left behind by test processes that died
// without stopping them (a go test timeout, a SIGKILL), so they do not pile
// up. A cluster is stale when the process named in its owner file is gone.
// Best effort: errors are ignored.
func sweepStale(ctx context.Context, b bins, cred *syscall.Credential) {
	var dirs []string
	for _, p := range candidateParents(false) {
		d, _ := filepath.Glob(filepath.Join(p, "pgtest-*"))
		dirs = append(dirs, d...)
	}
	for _, d := range dirs {
		owner, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue // not ours, or still being made
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(owner)))
		if err != nil || pid <= 0 || processExists(pid) {
			continue
		}
		stale := &Cluster{Dir: d, bins: b, cred: cred}
		if stale.forceStop(ctx) == nil {
			_ = os.RemoveAll(d)
		}
	}
}

// postmaster reports whether the postmaster named in the data dir's
// postmaster.pid runs, and its pid.
func (c *Cluster) postmaster() (running bool, pid int) {
	b, err := os.ReadFile(filepath.Join(c.dataDir(), "postmaster.pid"))
	if err != nil {
		return false, 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err = strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 || !isPostmasterOf(pid, c.dataDir()) {
		return false, 0
	}
	return true, pid
}

// killServer SIGKILLs the postmaster and its process group (pg_ctl starts
// it with setsid, so the group is it and its backends), and waits until
// they are dead.
func (c *Cluster) killServer() error {
	running, pid := c.postmaster()
	if !running {
		return nil
	}
	pgrp := pid
	if _, g, ok := procStat(pid); ok && g != pid {
		pgrp = 0 // not a group leader: kill the postmaster alone
	}
	var err error
	if pgrp != 0 {
		err = syscall.Kill(-pgrp, syscall.SIGKILL)
	} else {
		err = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgtest: killing the postmaster (pid %d): %w", pid, err)
	}
	// Wait until the processes are dead. They may stay zombies for a while:
	// the postmaster's parent is init, which reaps when it gets round to it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		alive := processExists(pid)
		if pgrp != 0 {
			alive = groupExists(pgrp)
		}
		if !alive {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: the postmaster (pid %d) or its backends still run 30s after SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond) // polling for the exit of processes that are not our children
	}
}

// removeStaleLocks removes the lock files (data/postmaster.pid and
// Dir/.s.PGSQL.PORT.lock) of a server that was killed. Its postmaster may
// still be an unreaped zombie, which the next postmaster would take for a
// live one and refuse to start; a dead postmaster's locks guard nothing.
func (c *Cluster) removeStaleLocks() error {
	locks, _ := filepath.Glob(filepath.Join(c.Dir, ".s.PGSQL.*.lock"))
	for _, path := range append([]string{filepath.Join(c.dataDir(), "postmaster.pid")}, locks...) {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		first, _, _ := strings.Cut(string(b), "\n")
		pid, err := strconv.Atoi(strings.TrimSpace(first))
		if err == nil && pid > 0 && processExists(pid) {
			continue // alive: the server will refuse to start and say why
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pgtest: removing a dead server's lock file: %w", err)
		}
	}
	return nil
}

// isPostmasterOf reports whether pid is a live postgres process serving
// dataDir (pg_ctl passes -D dataDir), guarding against reused pids.
func isPostmasterOf(pid int, dataDir string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		if _, statErr := os.Stat("/proc/self/cmdline"); statErr == nil {
			return false // /proc works: pid is gone
		}
		return processExists(pid) // no /proc: trust the pid file
	}
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		if string(arg) == dataDir {
			return true
		}
	}
	return false
}

// processExists reports whether pid is a process that has not exited (a
// zombie has).
func processExists(pid int) bool {
	if state, _, ok := procStat(pid); ok {
		return state != 'Z' && state != 'X'
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// groupExists reports whether any process of group pgrp has not exited.
func groupExists(pgrp int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		err := syscall.Kill(-pgrp, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, g, ok := procStat(pid); ok && g == pgrp && state != 'Z' && state != 'X' {
			return true
		}
	}
	return false
}

// procStat reads a process's state and process group from /proc (Linux).
func procStat(pid int) (state byte, pgrp int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) state ppid pgrp ...", where comm may hold spaces and parens.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return 0, 0, false
	}
	g, err := strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], g, true
}

// tool is the path of another PostgreSQL program (pg_basebackup, ...):
// next to pg_ctl, else on PATH.
func (b bins) tool(name string) string {
	p := filepath.Join(filepath.Dir(b.pgctl), name)
	if isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return p
}
