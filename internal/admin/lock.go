package admin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFileName is the lock file qpcd holds (flock) in its data directory
// for as long as it runs; offline qpcctl commands take it too.
const LockFileName = "qpcd.lock"

// ErrLocked: another process (qpcd, or a running restore) holds the data
// directory's lock.
var ErrLocked = errors.New("admin: the data directory is in use")

// DirLock is a held data-directory lock.
type DirLock struct {
	f    *os.File
	path string
}

// LockDataDir takes the exclusive lock on dir/qpcd.lock without waiting and
// writes who holds it (for example "qpcd 1234") into the file. The lock is
// the kernel's (flock): it goes away with the process, so a crash leaves no
// stale lock behind.
func LockDataDir(dir, holder string) (*DirLock, error) {
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("admin: open lock file %s: %w (check the data directory and its permissions)", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b := make([]byte, 128)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		who := strings.TrimSpace(string(b[:n]))
		if who == "" {
			who = "another process"
		}
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s holds %s", ErrLocked, who, path)
		}
		return nil, fmt.Errorf("admin: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(holder+" "+strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &DirLock{f: f, path: path}, nil
}

// Unlock releases the lock (the file stays; its content is stale once unlocked).
func (l *DirLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}
