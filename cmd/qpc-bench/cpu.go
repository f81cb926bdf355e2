package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat
// (100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// processCPU returns the user+system CPU time a process has used, read from
// /proc/<pid>/stat (Linux). On a machine shared with other work the CPU
// spent per request is steadier than requests per second.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name (field 2) is in parentheses and may contain spaces.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return time.Duration(u+st) * clockTick, nil
}

// cpuMeter measures the CPU the bench process and, if known, a separate
// qpcd process use while a mode runs.
type cpuMeter struct {
	pids  []int
	start time.Duration
	ok    bool
}

func startCPU(serverPID int) *cpuMeter {
	m := &cpuMeter{pids: []int{os.Getpid()}}
	if serverPID > 0 {
		m.pids = append(m.pids, serverPID)
	}
	m.start, m.ok = m.total()
	return m
}

func (m *cpuMeter) total() (time.Duration, bool) {
	var sum time.Duration
	for _, p := range m.pids {
		d, err := processCPU(p)
		if err != nil {
			return 0, false
		}
		sum += d
	}
	return sum, true
}

// perRequest returns the CPU microseconds spent per request since start.
func (m *cpuMeter) perRequest(requests int64) float64 {
	end, ok := m.total()
	if !ok || !m.ok || requests <= 0 {
		return 0
	}
	return float64((end - m.start).Microseconds()) / float64(requests)
}

// commCPU sums the CPU time of every process whose command name is comm
// (Linux); a process that starts later counts from zero, one that exits
// drops out.
func commCPU(comm string) map[int]time.Duration {
	out := map[int]time.Duration{}
	if comm == "" {
		return out
	}
	paths, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		if d, err := processCPU(pid); err == nil {
			out[pid] = d
		}
	}
	return out
}

// sideMeter meters qpcd alone and the -cpu-comm processes alone.
type sideMeter struct {
	serverPID   int
	comm        string
	serverStart time.Duration
	commStart   map[int]time.Duration
}

func startSide(serverPID int, comm string) *sideMeter {
	m := &sideMeter{serverPID: serverPID, comm: comm, commStart: commCPU(comm)}
	if serverPID > 0 {
		m.serverStart, _ = processCPU(serverPID)
	}
	return m
}

// used returns the CPU microseconds qpcd and the comm processes used since
// start (0 when not metered).
func (m *sideMeter) used() (server, comm float64) {
	if m.serverPID > 0 {
		if d, err := processCPU(m.serverPID); err == nil {
			server = float64((d - m.serverStart).Microseconds())
		}
	}
	for pid, d := range commCPU(m.comm) {
		comm += float64((d - m.commStart[pid]).Microseconds())
	}
	return server, comm
}
