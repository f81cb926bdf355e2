package pgtest

import "syscall"

// memoryDir returns /dev/shm when it is a tmpfs with at least a GiB free
// (a container's default 64 MiB one is not), else "".
func memoryDir() string {
	const dir, tmpfsMagic, minFree = "/dev/shm", 0x01021994, 1 << 30
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil || st.Type != tmpfsMagic {
		return ""
	}
	if st.Bavail*uint64(st.Bsize) < minFree {
		return ""
	}
	return dir
}
