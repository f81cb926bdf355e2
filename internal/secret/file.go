package secret

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Errors of ReadPrivateFile besides *fs.PathError (open or read failed).
var (
	// ErrNotRegular: the path is a directory, device, socket or pipe.
	ErrNotRegular = errors.New("secret: not a regular file")
	// ErrFileTooLarge: the file is longer than the reader's limit.
	ErrFileTooLarge = errors.New("secret: file too large")
	// ErrOpenToOthers: group or others may read or write a file that holds
	// a secret. errors.As gives the *ModeError with the mode and the fix.
	ErrOpenToOthers = errors.New("secret: file is open to group or others")
)

// ModeError is a file holding a secret whose mode lets group or others
// read or write it. Its text names the mode and the chmod fix.
type ModeError struct {
	Path string
	Mode fs.FileMode // permission bits
}

func (e *ModeError) Error() string {
	return fmt.Sprintf("it has mode %04o; run: chmod 600 %s", uint32(e.Mode.Perm()), ShellQuote(e.Path))
}

// Is makes errors.Is(err, ErrOpenToOthers) true.
func (e *ModeError) Is(target error) bool { return target == ErrOpenToOthers }

// CheckFileMode returns a *ModeError when mode grants group or others any
// permission (read, write or execute): anyone on the host who can read a
// key file can decrypt what it protects, and anyone who can write it can
// swap the key.
func CheckFileMode(path string, mode fs.FileMode) error {
	if mode.Perm()&0o077 != 0 {
		return &ModeError{Path: path, Mode: mode.Perm()}
	}
	return nil
}

// ReadPrivateFile reads a file holding a secret: a regular file that only
// its owner may access (CheckFileMode), of at most limit bytes. The mode is
// checked on the open file, so the file read is the file checked. Errors
// are *fs.PathError (open, stat or read), or wrap ErrNotRegular,
// ErrOpenToOthers (a *ModeError) or ErrFileTooLarge; none holds the content.
func ReadPrivateFile(path string, limit int) (Bytes, error) {
	f, err := os.Open(path)
	if err != nil {
		return Bytes{}, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return Bytes{}, err
	}
	if !fi.Mode().IsRegular() {
		return Bytes{}, ErrNotRegular
	}
	if err := CheckFileMode(path, fi.Mode()); err != nil {
		return Bytes{}, err
	}
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		Wipe(b)
		return Bytes{}, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	if len(b) > limit {
		Wipe(b)
		return Bytes{}, fmt.Errorf("%w: more than %d bytes", ErrFileTooLarge, limit)
	}
	return New(b), nil
}

// ShellQuote quotes path for a shell command line when it needs it, so a
// printed fix ("run: chmod 600 PATH") can be pasted as it is.
func ShellQuote(path string) string {
	if path != "" && strings.Trim(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+,:@") == "" {
		return path
	}
	return "'" + strings.ReplaceAll(path, "'", `'\''`) + "'"
}
