//go:build unix

package mls

import "syscall"

// processCPU returns the CPU time (user + system) the process has used,
// in nanoseconds, so benchmarks can report CPU time per operation, which
// other load on a shared machine inflates far less than wall time.
func processCPU() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
