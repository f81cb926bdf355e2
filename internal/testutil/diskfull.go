package testutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// SmallFS mounts a tmpfs of size bytes on a fresh temporary directory and
// unmounts it when the test ends: a real filesystem that fills up quickly,
// for disk-full tests. Mounting needs root (CAP_SYS_ADMIN); without it the
// test is skipped with the reason.
func SmallFS(t testing.TB, size int64) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qpc-smallfs-")
	if err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("size=%d,mode=0700", size)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		_ = os.Remove(dir)
		t.Skipf("disk-full test needs a small filesystem: mount tmpfs (%s) on %s: %v (run as root or with CAP_SYS_ADMIN)", opts, dir, err)
	}
	t.Cleanup(func() {
		// MNT_DETACH: a process the test started may still hold files open
		// for a moment after it was told to stop.
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		_ = os.Remove(dir)
	})
	return dir
}

// Filler is a file that takes up the free space of a filesystem.
type Filler struct {
	Path  string
	Bytes int64
}

// Fill writes a file named name into dir until the filesystem answers
// ENOSPC, leaving it full: every later allocation on it fails.
func Fill(t testing.TB, dir, name string) *Filler {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("filler: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var n int64
	for chunk := len(buf); chunk > 0; {
		w, err := f.Write(buf[:chunk])
		n += int64(w)
		switch {
		case err == nil:
		case errors.Is(err, syscall.ENOSPC):
			chunk /= 2 // take the last partial blocks too
		default:
			t.Fatalf("filler: %v", err)
		}
	}
	return &Filler{Path: p, Bytes: n}
}

// Remove deletes the filler, freeing its space.
func (f *Filler) Remove(t testing.TB) {
	t.Helper()
	if err := os.Remove(f.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("remove filler: %v", err)
	}
}
