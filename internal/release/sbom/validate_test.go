package sbom

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

func goListDir(t *testing.T, module string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("go list -m %s: %v (run go mod download)", module, err)
	}
	return dir
}

// The published SBOM, made the way packaging/release/build.sh makes it (the
// real cyclonedx-gomod on cmd/qpcd, then Augment with the real go-sqlcipher
// sources), validates against the official CycloneDX schema it declares.
func TestPublishedSBOMValidatesAgainstCycloneDXSchema(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cyclonedx-gomod")
	}
	schemas := filepath.Join(goListDir(t, SchemaModule), "schema")
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	// cyclonedx-gomod reads the main module's version with go-git, which
	// cannot open a linked git worktree (.git is a file there): build.sh
	// always runs it in a clone. Say so rather than fail for the wrong reason.
	if fi, err := os.Stat(filepath.Join(root, ".git")); err == nil && !fi.IsDir() {
		t.Skip("a linked git worktree: cyclonedx-gomod cannot read its version (run in a clone, as build.sh does)")
	}
	tool := filepath.Join(t.TempDir(), "cyclonedx-gomod")
	if out, err := exec.Command("go", "build", "-o", tool, "github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod").CombinedOutput(); err != nil {
		t.Fatalf("build cyclonedx-gomod: %v\n%s", err, out)
	}
	raw := filepath.Join(t.TempDir(), "qpcd.gomod.cdx.json")
	cmd := exec.Command(tool, "app", "-json", "-licenses", "-assert-licenses", "-std", "-noserial", "-main", "cmd/qpcd", "-output", raw, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cyclonedx-gomod: %v\n%s", err, out)
	}
	rawDoc, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(rawDoc, schemas); err != nil {
		t.Fatalf("cyclonedx-gomod's own output does not validate: %v", err)
	}

	libs, err := ReadBundled(goListDir(t, SQLCipherModule))
	if err != nil {
		t.Fatal(err)
	}
	bom, err := Decode(bytes.NewReader(rawDoc))
	if err != nil {
		t.Fatal(err)
	}
	if n := Augment(bom, libs, Options{}); n == 0 {
		t.Fatal("Augment added no bundled library")
	}
	var buf bytes.Buffer
	if err := Encode(&buf, bom); err != nil {
		t.Fatal(err)
	}
	if err := Validate(buf.Bytes(), schemas); err != nil {
		t.Fatalf("the augmented SBOM does not validate: %v", err)
	}
	if bytes.Contains(buf.Bytes(), []byte(`"dependsOn": null`)) {
		t.Error("the augmented SBOM has a null dependsOn")
	}
	// Every module and C library compiled into qpcd is under an allowed
	// licence, the project itself included (LICENSE is detected).
	if err := CheckLicenses(bom); err != nil {
		t.Errorf("dependency policy: %v", err)
	}
}

func TestCheckLicensesRefusesOthers(t *testing.T) {
	lic := func(id string) *cdx.Licenses { return &cdx.Licenses{{License: &cdx.License{ID: id}}} }
	bom := cdx.NewBOM()
	bom.Metadata = &cdx.Metadata{Component: &cdx.Component{Name: "main", Licenses: lic("Apache-2.0")}}
	bom.Components = &[]cdx.Component{
		{Name: "ok", Version: "v1", Licenses: lic("MIT")},
		{Name: "dual", Version: "v1", Licenses: &cdx.Licenses{{License: &cdx.License{ID: "GPL-2.0-only"}}, {License: &cdx.License{ID: "BSD-3-Clause"}}}},
	}
	if err := CheckLicenses(bom); err != nil {
		t.Fatalf("allowed licences refused: %v", err)
	}
	*bom.Components = append(*bom.Components,
		cdx.Component{Name: "copyleft", Version: "v2", Licenses: lic("GPL-3.0-only")},
		cdx.Component{Name: "unknown", Version: "v3"})
	err := CheckLicenses(bom)
	if !errors.Is(err, ErrLicense) || !strings.Contains(err.Error(), "copyleft v2 (GPL-3.0-only)") ||
		!strings.Contains(err.Error(), "unknown v3 (none detected)") || strings.Contains(err.Error(), "dual") {
		t.Fatalf("CheckLicenses = %v", err)
	}
}

// The validator is strict where consumers are: an empty list written as
// null, an unknown property and a malformed document are each refused.
func TestValidateRefusesInvalidSBOMs(t *testing.T) {
	schemas := filepath.Join(goListDir(t, SchemaModule), "schema")
	good := `{"bomFormat":"CycloneDX","specVersion":"1.6","version":1,` +
		`"components":[{"type":"library","name":"x","bom-ref":"x"}],` +
		`"dependencies":[{"ref":"x"%s}]%s}`
	if err := Validate([]byte(strings.ReplaceAll(strings.Replace(good, "%s", "", 1), "%s", "")), schemas); err != nil {
		t.Fatalf("a minimal valid SBOM was refused: %v", err)
	}
	for name, doc := range map[string]string{
		"null dependsOn":     strings.Replace(strings.Replace(good, "%s", `,"dependsOn":null`, 1), "%s", "", 1),
		"unknown property":   strings.Replace(strings.Replace(good, "%s", "", 1), "%s", `,"extra":1`, 1),
		"not JSON":           `{"bomFormat":`,
		"not CycloneDX":      `{"bomFormat":"SPDX","specVersion":"1.6"}`,
		"unknown version":    `{"bomFormat":"CycloneDX","specVersion":"9.9"}`,
		"bad component type": `{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"type":"spaceship","name":"x"}]}`,
	} {
		err := Validate([]byte(doc), schemas)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrRead) {
			t.Errorf("%s: untyped error %v", name, err)
		}
	}
}
