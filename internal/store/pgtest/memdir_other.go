//go:build !linux

package pgtest

// memoryDir returns "": clusters live under TMPDIR.
func memoryDir() string { return "" }
