package sbom

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// fakeModule writes a go-sqlcipher-shaped directory with made-up versions, so
// the test proves the versions come from the sources.
func fakeModule(t *testing.T, sqlite, cipher, tom string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"sqlite3.c": "/* amalgamation */\n#define SQLITE_VERSION_NUMBER 3099001\n" +
			"#define SQLITE_VERSION        \"" + sqlite + "\"\n" +
			"#define SQLITE_SOURCE_ID      \"2031-01-02 03:04:05 abcdef\"\n" +
			"#ifndef CIPHER_VERSION_NUMBER\n#define CIPHER_VERSION_NUMBER " + cipher + "\n#endif\n" +
			"#define CIPHER_VERSION_BUILD community\n" +
			"#define SQLITE_VERSION \"0.0.0-later-copy\"\n",
		"tomcrypt.h": "#define CRYPT   0x0199\n#define SCRYPT  \"" + tom + "\"\n",
		"MAINTENANCE": "Update code from https://github.com/libtom/libtomcrypt\n---------\n\nCurrent HEAD: " +
			strings.Repeat("ab", 20) + "\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestReadBundledReadsSources(t *testing.T) {
	dir := fakeModule(t, "3.99.1", "9.8.7", "1.42.0-develop")
	libs, err := ReadBundled(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Library{}
	for _, l := range libs {
		got[l.Name] = l
	}
	for name, want := range map[string]string{"sqlite": "3.99.1", "sqlcipher": "9.8.7", "libtomcrypt": "1.42.0-develop"} {
		if got[name].Version != want {
			t.Errorf("%s version = %q, want %q (read from the fake sources)", name, got[name].Version, want)
		}
	}
	if c := got["libtomcrypt"].CPE; !strings.Contains(c, ":1.42.0:") {
		t.Errorf("libtomcrypt CPE %q should carry the release version without -develop", c)
	}
	if got["libtomcrypt"].Properties["qpc:libtomcrypt:commit"] != strings.Repeat("ab", 20) {
		t.Errorf("libtomcrypt commit not read from MAINTENANCE: %v", got["libtomcrypt"].Properties)
	}
	if got["sqlite"].Properties["qpc:sqlite:source_id"] != "2031-01-02 03:04:05 abcdef" {
		t.Errorf("sqlite source id = %q", got["sqlite"].Properties["qpc:sqlite:source_id"])
	}
}

func TestReadBundledMissingMacro(t *testing.T) {
	dir := fakeModule(t, "3.1.0", "4.0.0", "1.0.0")
	if err := os.WriteFile(filepath.Join(dir, "tomcrypt.h"), []byte("/* no version */\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadBundled(dir)
	if !errors.Is(err, ErrVersionNotFound) || !strings.Contains(err.Error(), "SCRYPT") {
		t.Fatalf("err = %v, want ErrVersionNotFound naming SCRYPT", err)
	}
	if _, err := ReadBundled(t.TempDir()); !errors.Is(err, ErrRead) {
		t.Fatalf("empty dir: err = %v, want ErrRead", err)
	}
}

// The real module in the module cache: whatever versions it bundles are found.
func TestReadBundledRealModule(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", SQLCipherModule).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Skipf("go-sqlcipher module directory not available: %v", err)
	}
	libs, err := ReadBundled(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range libs {
		if l.Version == "" || strings.ContainsAny(l.Version, "\" ") {
			t.Errorf("%s: odd version %q", l.Name, l.Version)
		}
		t.Logf("%s %s (%s)", l.Name, l.Version, l.Source)
	}
}

func gomodBOM(withSQLCipher bool) *cdx.BOM {
	bom := cdx.NewBOM()
	bom.Metadata = &cdx.Metadata{Timestamp: "2026-01-01T00:00:00Z",
		Component: &cdx.Component{BOMRef: "main", Type: cdx.ComponentTypeApplication, Name: "qpcd"}}
	comps := []cdx.Component{
		{BOMRef: "pkg:golang/golang.org/x/sys@v0.50.0?type=module", Type: cdx.ComponentTypeLibrary, Name: "golang.org/x/sys", Version: "v0.50.0"},
		{BOMRef: "pkg:golang/std@go1.26.8?type=module", Type: cdx.ComponentTypeLibrary, Name: "std", Version: "go1.26.8", PackageURL: "pkg:golang/std@go1.26.8?type=module"},
	}
	deps := []cdx.Dependency{{Ref: "main", Dependencies: &[]string{comps[0].BOMRef}}}
	if withSQLCipher {
		ref := "pkg:golang/github.com/mutecomm/go-sqlcipher/v4@v4.4.2?type=module"
		comps = append(comps, cdx.Component{BOMRef: ref, Type: cdx.ComponentTypeLibrary, Name: SQLCipherModule, Version: "v4.4.2"})
		*deps[0].Dependencies = append(*deps[0].Dependencies, ref)
	}
	bom.Components = &comps
	bom.Dependencies = &deps
	return bom
}

func TestAugment(t *testing.T) {
	libs, err := ReadBundled(fakeModule(t, "3.99.1", "9.8.7", "1.42.0"))
	if err != nil {
		t.Fatal(err)
	}
	bom := gomodBOM(true)
	ts := time.Unix(1700000000, 0)
	if n := Augment(bom, libs, Options{Timestamp: ts}); n != 3 {
		t.Fatalf("added %d components, want 3", n)
	}
	if n := Augment(bom, libs, Options{}); n != 0 {
		t.Fatalf("second Augment added %d, want 0 (idempotent)", n)
	}
	if bom.Metadata.Timestamp != "2023-11-14T22:13:20Z" {
		t.Errorf("timestamp = %s", bom.Metadata.Timestamp)
	}
	var buf bytes.Buffer
	if err := Encode(&buf, bom); err != nil {
		t.Fatal(err)
	}
	back, err := Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cdx.Component{}
	for _, c := range *back.Components {
		byName[c.Name] = c
	}
	for name, v := range map[string]string{"sqlite": "3.99.1", "sqlcipher": "9.8.7", "libtomcrypt": "1.42.0"} {
		c, ok := byName[name]
		if !ok || c.Version != v || c.Licenses == nil || len(*c.Licenses) == 0 || c.PackageURL == "" {
			t.Errorf("%s component = %+v", name, c)
		}
	}
	if l := byName["std"].Licenses; l == nil || (*l)[0].License.ID != "BSD-3-Clause" {
		t.Errorf("std licence = %+v, want BSD-3-Clause", l)
	}
	parentDeps := map[string]bool{}
	for _, d := range *back.Dependencies {
		if d.Ref == byName[SQLCipherModule].BOMRef && d.Dependencies != nil {
			for _, r := range *d.Dependencies {
				parentDeps[r] = true
			}
		}
	}
	for _, name := range []string{"sqlite", "sqlcipher", "libtomcrypt"} {
		if !parentDeps[byName[name].BOMRef] {
			t.Errorf("go-sqlcipher does not depend on %s in %+v", name, *back.Dependencies)
		}
	}
}

func TestAugmentWithoutSQLCipher(t *testing.T) {
	libs, err := ReadBundled(fakeModule(t, "3.1.0", "4.0.0", "1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	bom := gomodBOM(false)
	if n := Augment(bom, libs, Options{}); n != 0 || len(*bom.Components) != 2 {
		t.Fatalf("a binary without go-sqlcipher got %d C components", n)
	}
}

// A reviewed licence fills in only the exact module version it was read
// for, and never overrides a detected one.
func TestAugmentReviewedLicenses(t *testing.T) {
	bom := cdx.NewBOM()
	bom.Components = &[]cdx.Component{
		{Name: "github.com/cenkalti/backoff/v5", Version: "v5.0.3"},
		{Name: "github.com/cenkalti/backoff/v5", Version: "v5.0.4"},
		{Name: "github.com/cenkalti/backoff/v5", Version: "v5.0.3", Licenses: &cdx.Licenses{{License: &cdx.License{ID: "Apache-2.0"}}}},
	}
	Augment(bom, nil, Options{})
	cs := *bom.Components
	if l := cs[0].Licenses; l == nil || (*l)[0].License.ID != "MIT" || (*l)[0].License.Acknowledgement != cdx.LicenseAcknowledgementConcluded {
		t.Errorf("reviewed version: %+v", l)
	}
	if cs[1].Licenses != nil {
		t.Errorf("unreviewed version got a licence: %+v", cs[1].Licenses)
	}
	if (*cs[2].Licenses)[0].License.ID != "Apache-2.0" {
		t.Errorf("a detected licence was replaced: %+v", cs[2].Licenses)
	}
	if err := CheckLicenses(bom); err == nil || !strings.Contains(err.Error(), "v5.0.4 (none detected)") {
		t.Errorf("CheckLicenses: %v", err)
	}
}
