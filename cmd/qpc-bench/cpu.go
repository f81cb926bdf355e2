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
	st, err := readStat(pid)
	return st.self, err
}

// procStat is what the meters read from /proc/<pid>/stat.
type procStat struct {
	ppid     int
	self     time.Duration // utime + stime
	children time.Duration // cutime + cstime: children it has waited for
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	// The command name (field 2) is in parentheses and may contain spaces.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), f[1] the ppid; utime, stime, cutime and
	// cstime are fields 14 to 17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	var v [5]int64
	for k, j := range []int{1, 11, 12, 13, 14} {
		n, err := strconv.ParseInt(f[j], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("unexpected /proc/%d/stat", pid)
		}
		v[k] = n
	}
	return procStat{ppid: int(v[0]), self: time.Duration(v[1]+v[2]) * clockTick, children: time.Duration(v[3]+v[4]) * clockTick}, nil
}

// treeCPU returns the CPU time of root and every process descended from it,
// including descendants that have exited and been waited for (their time is
// in their parent's cutime and cstime). It is what a server that forks a
// process per connection, like PostgreSQL's postmaster, has spent; unlike
// -cpu-comm it leaves out other servers with the same command name.
func treeCPU(root int) (time.Duration, error) {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	stats := make(map[int]procStat, len(paths))
	kids := map[int][]int{}
	for _, p := range paths {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		stats[pid] = st
		kids[st.ppid] = append(kids[st.ppid], pid)
	}
	if _, ok := stats[root]; !ok {
		return 0, fmt.Errorf("process %d not found", root)
	}
	var sum time.Duration
	for todo := []int{root}; len(todo) > 0; {
		pid := todo[len(todo)-1]
		todo = append(todo[:len(todo)-1], kids[pid]...)
		sum += stats[pid].self + stats[pid].children
	}
	return sum, nil
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

// sideMeter meters qpcd alone, the -cpu-comm processes alone and the
// -cpu-tree process tree alone.
type sideMeter struct {
	serverPID   int
	comm        string
	treePID     int
	serverStart time.Duration
	commStart   map[int]time.Duration
	treeStart   time.Duration
}

func startSide(serverPID int, comm string, treePID int) *sideMeter {
	m := &sideMeter{serverPID: serverPID, comm: comm, treePID: treePID, commStart: commCPU(comm)}
	if serverPID > 0 {
		m.serverStart, _ = processCPU(serverPID)
	}
	if treePID > 0 {
		m.treeStart, _ = treeCPU(treePID)
	}
	return m
}

// used returns the CPU microseconds qpcd, the comm processes and the
// process tree used since start (0 when not metered).
func (m *sideMeter) used() (server, comm, tree float64) {
	if m.serverPID > 0 {
		if d, err := processCPU(m.serverPID); err == nil {
			server = float64((d - m.serverStart).Microseconds())
		}
	}
	for pid, d := range commCPU(m.comm) {
		comm += float64((d - m.commStart[pid]).Microseconds())
	}
	if m.treePID > 0 {
		if d, err := treeCPU(m.treePID); err == nil {
			tree = float64((d - m.treeStart).Microseconds())
		}
	}
	return server, comm, tree
}
