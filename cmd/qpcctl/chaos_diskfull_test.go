package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

// dirNames lists a directory's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestChaosDiskFullBackupAndRotateDBKey: `qpcctl backup create` and
// `qpcctl rotate db-key` against the real qpcd whose data directory's
// filesystem is full, and a backup into a full --out directory: each exits
// 1 with an error naming the full directory and what to do, removes its
// partial files, and leaves the live database, its key and qpcd as they
// were; once space is back both work.
func TestChaosDiskFullBackupAndRotateDBKey(t *testing.T) {
	mnt := testutil.SmallFS(t, 16<<20)
	dataDir := filepath.Join(mnt, "data")
	d := startQPCD(t, dataDir)
	w := startWriters(t, d, 2, "df")
	w.waitMore(t, 100)
	names := w.finish(t)
	keyBefore, err := os.ReadFile(filepath.Join(dataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	dataBefore := dirNames(t, dataDir)

	outDir := t.TempDir()
	out := filepath.Join(outDir, "b.qpcbak")
	filler := testutil.Fill(t, mnt, "filler")

	r := ctl(t, dataDir, "backup", "create", "--out", out)
	if r.code != 1 || !strings.Contains(r.stderr, "no space") || !strings.Contains(r.stderr, dataDir) || !strings.Contains(r.stderr, "free space there") {
		t.Fatalf("backup create with a full data directory: exit %d, stderr %q; want exit 1 naming %s", r.code, r.stderr, dataDir)
	}
	if left := dirNames(t, outDir); len(left) != 0 {
		t.Fatalf("backup create left %v in the --out directory", left)
	}
	t.Logf("backup create, data directory full: %s", r.stderr)
	r = ctl(t, dataDir, "rotate", "db-key")
	t.Logf("rotate db-key, data directory full: %s", r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "no space") || !strings.Contains(r.stderr, dataDir) || !strings.Contains(r.stderr, "unchanged") {
		t.Fatalf("rotate db-key with a full data directory: exit %d, stderr %q; want exit 1 naming %s", r.code, r.stderr, dataDir)
	}
	if now := dirNames(t, dataDir); !slices.Equal(now, dataBefore) {
		t.Fatalf("data directory was %v, now %v: partial files left", dataBefore, now)
	}
	if key, _ := os.ReadFile(filepath.Join(dataDir, "db.key")); string(key) != string(keyBefore) {
		t.Fatal("the database key file changed")
	}
	if r := ctl(t, dataDir, "status"); r.code != 0 {
		t.Fatalf("qpcd not serving after the refused operations: %s", r.stderr)
	}
	if got := accountNames(t, dataDir); len(got) < len(names) {
		t.Fatalf("%d accounts listed, %d were registered", len(got), len(names))
	}
	filler.Remove(t)

	// The data directory has room, the --out filesystem has none.
	outFS := testutil.SmallFS(t, 4<<20)
	outFiller := testutil.Fill(t, outFS, "filler")
	r = ctl(t, dataDir, "backup", "create", "--out", filepath.Join(outFS, "b.qpcbak"))
	if r.code != 1 || !strings.Contains(r.stderr, "no space left in "+outFS) || !strings.Contains(r.stderr, "partial file was removed") {
		t.Fatalf("backup create into a full --out filesystem: exit %d, stderr %q; want exit 1 naming %s", r.code, r.stderr, outFS)
	}
	t.Logf("backup create, --out full: %s", r.stderr)
	if left := dirNames(t, outFS); !slices.Equal(left, []string{"filler"}) {
		t.Fatalf("backup create left %v on the full --out filesystem", left)
	}
	outFiller.Remove(t)

	// Space is back: both work, and the backup holds every account.
	ctlOK(t, dataDir, nil, "backup", "create", "--out", out)
	ctlOK(t, dataDir, nil, "backup", "verify", out)
	ctlOK(t, dataDir, nil, "rotate", "db-key")
	got := accountNames(t, dataDir)
	for _, n := range names {
		if !got[n] {
			t.Fatalf("account %s lost", n)
		}
	}
	d.drain(t)
}
