package main

import (
	"fmt"
	"os"
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
