package canary

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/quicprochat/quicprochat/internal/release"
)

// Names inside the releases directory.
const (
	CurrentLink  = "current"
	PreviousLink = "previous"
	StateFile    = "canary.json"
	BackupsDir   = "backups"
	BinaryName   = "qpcd"
)

// versionName is what a release directory may be called.
var versionName = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$`)

func validVersion(v string) bool {
	return versionName.MatchString(v) && v != CurrentLink && v != PreviousLink && v != BackupsDir
}

// Phases of the canary state.
const (
	PhaseBaking     = "baking"      // installed and restarted, the gate is watching
	PhasePassed     = "passed"      // the gate passed; promote or roll back
	PhaseRolledBack = "rolled_back" // the gate failed (or rollback ran); the previous release serves
	PhasePromoted   = "promoted"    // the canary is the stable release
)

// State is <releases>/canary.json: the last canary and what rollback needs.
type State struct {
	Phase        string    `json:"phase"`
	Version      string    `json:"version"`       // the canary release
	From         string    `json:"from"`          // the release it replaced
	PrevPrevious string    `json:"prev_previous"` // `previous` before the canary (restored by rollback)
	StartedAt    time.Time `json:"started_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	Backup       string    `json:"backup"` // pre-upgrade backup
	SchemaBefore int       `json:"schema_before"`
	SchemaAfter  int       `json:"schema_after,omitempty"`
	Stable       string    `json:"stable,omitempty"` // last promoted release
	Gate         *Gate     `json:"gate,omitempty"`
	Restored     bool      `json:"restored,omitempty"` // rollback restored the pre-upgrade backup
	Error        string    `json:"error,omitempty"`
	// Shared: the database is PostgreSQL, shared with the deployment's
	// other nodes; the canary took no file backup and a rollback never
	// restores the database (docs/release.md, "Canary on a cluster").
	Shared bool `json:"shared_database,omitempty"`
	// Peers are the deployment's other nodes when the canary started.
	Peers []Peer `json:"peers,omitempty"`
}

// Peer is another node of the deployment, from the node registry.
type Peer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Version string `json:"version"`
	State   string `json:"state"` // running or stale
}

// layout is the releases directory.
type layout struct{ dir string }

func (l layout) path(name string) string { return filepath.Join(l.dir, name) }

// link returns the version a link points to ("" when it does not exist).
func (l layout) link(name string) (string, error) {
	t, err := os.Readlink(l.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v (it must be a symbolic link to a release directory)", ErrLayout, l.path(name), err)
	}
	return filepath.Base(t), nil
}

// setLink points name at version atomically: a link under a temporary name,
// renamed over the old one. version "" removes the link.
func (l layout) setLink(name, version string) error {
	p := l.path(name)
	if version == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: remove %s: %v", ErrLayout, p, err)
		}
		return syncDir(l.dir)
	}
	tmp := p + ".tmp-link"
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return fmt.Errorf("%w: create link %s: %v (check that %s is writable)", ErrLayout, tmp, err, l.dir)
	}
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%w: rename %s over %s: %v", ErrLayout, tmp, p, err)
	}
	return syncDir(l.dir)
}

func (l layout) binary(version string) string { return filepath.Join(l.dir, version, BinaryName) }

// versions lists release directories that hold a qpcd binary.
func (l layout) versions() ([]string, error) {
	ents, err := os.ReadDir(l.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLayout, err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || !validVersion(e.Name()) {
			continue
		}
		if _, err := os.Stat(l.binary(e.Name())); err == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// lock takes <releases>/.lock (flock, released with the process) so two
// qpcctl commands never switch releases at the same time.
func (l layout) lock() (unlock func(), err error) {
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: %v (check that the data directory is writable)", ErrLayout, err)
	}
	f, err := os.OpenFile(l.path(".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLayout, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: another qpcctl release command is running on %s; wait for it (see `qpcctl release status`)", ErrConflict, l.dir)
	}
	return func() { f.Close() }, nil
}

func (l layout) readState() (State, bool, error) {
	b, err := os.ReadFile(l.path(StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, fmt.Errorf("%w: %v", ErrLayout, err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, false, fmt.Errorf("%w: %s: %v (move the damaged file aside; `qpcctl release status` works without it)", ErrLayout, l.path(StateFile), err)
	}
	return s, true, nil
}

// writeState writes canary.json atomically (temporary file, fsync, rename).
func (l layout) writeState(s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	return writeFileAtomic(l.path(StateFile), append(b, '\n'), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%w: %v (check that %s is writable)", ErrLayout, err, filepath.Dir(path))
	}
	name := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(name)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("%w: write %s: %v", ErrLayout, name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%w: fsync %s: %v", ErrLayout, name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	ok = true
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%w: fsync %s: %v", ErrLayout, dir, err)
	}
	return nil
}

// Installed describes an artifact installed by install.
type Installed struct {
	Version   string `json:"version"`
	Path      string `json:"path"`
	SHA256    string `json:"sha256"`
	KeyID     string `json:"key_id"`
	Reused    bool   `json:"reused"` // the same bytes were already installed
	Signature string `json:"signature"`
}

// install copies the artifact (a qpcd binary) into a staging directory,
// verifies the copy against its minisign signature (so the bytes checked are
// the bytes installed), asks the verified copy for its version
// (`qpcd version`), and renames the directory to <releases>/<version>.
func (l layout) install(ctx context.Context, artifact, sig, pubKey string) (Installed, error) {
	if sig == "" {
		sig = artifact + release.SignatureSuffix
	}
	// 0755: qpcd runs as its own user and must reach current/qpcd even when
	// qpcctl (as root) created the directory.
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return Installed{}, fmt.Errorf("%w: %v (check that the data directory is writable)", ErrLayout, err)
	}
	stage, err := os.MkdirTemp(l.dir, ".staging-")
	if err != nil {
		return Installed{}, fmt.Errorf("%w: %v", ErrLayout, err)
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(stage)
		}
	}()
	bin := filepath.Join(stage, BinaryName)
	if err := copyFile(artifact, bin, 0o755); err != nil {
		return Installed{}, err
	}
	res, err := release.VerifyFile(bin, sig, pubKey)
	if err != nil {
		return Installed{}, fmt.Errorf("%w: %s: %w", ErrVerify, artifact, err)
	}
	v, err := binaryVersion(ctx, bin)
	if err != nil {
		return Installed{}, err
	}
	inst := Installed{Version: v, Path: l.binary(v), SHA256: res.SHA256, KeyID: res.KeyID, Signature: sig}
	if _, err := os.Stat(l.binary(v)); err == nil {
		have, err := fileSHA256(l.binary(v))
		if err != nil {
			return Installed{}, err
		}
		if have != res.SHA256 {
			return Installed{}, fmt.Errorf("%w: %s already holds a different qpcd %s; remove that directory if it is not in use (not current or previous) and run the canary again", ErrConflict, filepath.Dir(l.binary(v)), v)
		}
		inst.Reused = true
		return inst, nil
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return Installed{}, fmt.Errorf("%w: %v", ErrLayout, err)
	}
	if err := os.Rename(stage, filepath.Join(l.dir, v)); err != nil {
		return Installed{}, fmt.Errorf("%w: install %s: %v", ErrLayout, v, err)
	}
	keep = true
	return inst, syncDir(l.dir)
}

// binaryVersion runs `BIN version`, which prints "qpcd VERSION (commit ...)".
func binaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%w: `%s version`: %v (is the artifact a qpcd binary for this machine?)", ErrArtifact, bin, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || f[0] != "qpcd" {
		return "", fmt.Errorf("%w: `qpcd version` printed %q, not \"qpcd VERSION ...\" (is the artifact a qpcd binary?)", ErrArtifact, oneLine(string(out)))
	}
	if !validVersion(f[1]) {
		return "", fmt.Errorf("%w: version %q cannot name a release directory (letters, digits, . _ + -)", ErrArtifact, f[1])
	}
	return f[1], nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("%w: copy %s: %v (check free space)", ErrLayout, src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("%w: fsync %s: %v", ErrLayout, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrLayout, err)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrLayout, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%w: %v", ErrLayout, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
