// Package sbom completes cyclonedx-gomod's SBOMs with the C libraries that
// go-sqlcipher compiles into qpcd (SQLCipher, SQLite, libtomcrypt), whose
// versions it reads from the sources bundled in the go-sqlcipher module.
package sbom

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// SQLCipherModule is the Go module that bundles the C sources.
const SQLCipherModule = "github.com/mutecomm/go-sqlcipher/v4"

// Errors.
var (
	// ErrVersionNotFound: a bundled source file lacks the version macro.
	ErrVersionNotFound = errors.New("sbom: version not found in bundled source")
	// ErrRead: a source or SBOM file could not be read or parsed.
	ErrRead = errors.New("sbom: cannot read input")
	// ErrWrite: the SBOM could not be encoded.
	ErrWrite = errors.New("sbom: cannot write output")
)

// Library is one bundled C library.
type Library struct {
	Name        string
	Version     string
	License     string // SPDX license id
	Description string
	PURL        string
	CPE         string
	Source      string // where the version was read, e.g. "sqlite3.c: SQLITE_VERSION"
	Properties  map[string]string
	DependsOn   []string // bom-refs (PURLs) of other bundled libraries
}

// macro finds `#define NAME value` (value optionally quoted) in one file.
type macro struct {
	file, name string
	re         *regexp.Regexp
}

func define(file, name string) macro {
	return macro{file: file, name: name,
		re: regexp.MustCompile(`^\s*#\s*define\s+` + regexp.QuoteMeta(name) + `\s+"?([^"\s]+(?: [^"\s]+)*)"?\s*$`)}
}

// readMacros scans file once for every macro and returns the first value of each.
func readMacros(dir, file string, names ...string) (map[string]string, error) {
	path := filepath.Join(dir, file)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRead, err)
	}
	defer f.Close()
	ms := make([]macro, len(names))
	for i, n := range names {
		ms[i] = define(file, n)
	}
	found := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() && len(found) < len(ms) {
		line := sc.Text()
		if !strings.Contains(line, "define") {
			continue
		}
		for _, m := range ms {
			if _, ok := found[m.name]; ok {
				continue
			}
			if sub := m.re.FindStringSubmatch(line); sub != nil {
				found[m.name] = sub[1]
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrRead, path, err)
	}
	for _, n := range names {
		if found[n] == "" {
			return nil, fmt.Errorf("%w: %s has no #define %s", ErrVersionNotFound, path, n)
		}
	}
	return found, nil
}

var headRE = regexp.MustCompile(`Current HEAD: ([0-9a-f]{40})`)

// libtomcryptCommit reads the tracked libtomcrypt commit from the module's
// MAINTENANCE notes ("" when absent: it is informational only).
func libtomcryptCommit(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "MAINTENANCE"))
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(b), "libtom/libtomcrypt\n---")
	if !ok {
		return ""
	}
	if m := headRE.FindStringSubmatch(rest); m != nil {
		return m[1]
	}
	return ""
}

// cpeVersion drops a pre-release suffix ("1.18.2-develop" -> "1.18.2").
func cpeVersion(v string) string {
	v, _, _ = strings.Cut(v, "-")
	return v
}

// ReadBundled reads the bundled C libraries' versions from a go-sqlcipher
// module directory.
func ReadBundled(moduleDir string) ([]Library, error) {
	sq, err := readMacros(moduleDir, "sqlite3.c", "SQLITE_VERSION", "SQLITE_SOURCE_ID", "CIPHER_VERSION_NUMBER", "CIPHER_VERSION_BUILD")
	if err != nil {
		return nil, err
	}
	tc, err := readMacros(moduleDir, "tomcrypt.h", "SCRYPT")
	if err != nil {
		return nil, err
	}
	sqliteV, cipherV, tomV := sq["SQLITE_VERSION"], sq["CIPHER_VERSION_NUMBER"], tc["SCRYPT"]
	sqlite := Library{
		Name: "sqlite", Version: sqliteV, License: "blessing",
		Description: "SQLite amalgamation inside SQLCipher's sqlite3.c",
		PURL:        "pkg:generic/sqlite@" + sqliteV,
		CPE:         "cpe:2.3:a:sqlite:sqlite:" + sqliteV + ":*:*:*:*:*:*:*",
		Source:      "sqlite3.c: SQLITE_VERSION",
		Properties:  map[string]string{"qpc:sqlite:source_id": sq["SQLITE_SOURCE_ID"]},
	}
	cipher := Library{
		Name: "sqlcipher", Version: cipherV, License: "BSD-3-Clause",
		Description: "SQLCipher " + sq["CIPHER_VERSION_BUILD"] + " edition (sqlite3.c, sqlite3.h)",
		PURL:        "pkg:github/sqlcipher/sqlcipher@v" + cipherV,
		CPE:         "cpe:2.3:a:zetetic:sqlcipher:" + cipherV + ":*:*:*:*:*:*:*",
		Source:      "sqlite3.c: CIPHER_VERSION_NUMBER",
		Properties:  map[string]string{"qpc:sqlcipher:build": sq["CIPHER_VERSION_BUILD"]},
		DependsOn:   []string{sqlite.PURL},
	}
	tom := Library{
		Name: "libtomcrypt", Version: tomV, License: "Unlicense",
		Description: "LibTomCrypt sources compiled for SQLCipher's crypto provider",
		PURL:        "pkg:github/libtom/libtomcrypt@" + tomV,
		CPE:         "cpe:2.3:a:libtom:libtomcrypt:" + cpeVersion(tomV) + ":*:*:*:*:*:*:*",
		Source:      "tomcrypt.h: SCRYPT",
		Properties:  map[string]string{},
	}
	if c := libtomcryptCommit(moduleDir); c != "" {
		tom.Properties["qpc:libtomcrypt:commit"] = c
	}
	return []Library{cipher, sqlite, tom}, nil
}

// Options for Augment.
type Options struct {
	// Timestamp replaces metadata.timestamp (reproducible builds pass
	// SOURCE_DATE_EPOCH); zero keeps cyclonedx-gomod's.
	Timestamp time.Time
	// Version replaces the main component's version (cyclonedx-gomod derives
	// a pseudo-version from git, absent in a source export); "" keeps it.
	Version string
}

// Augment adds libs to bom as components that the go-sqlcipher module
// depends on. A BOM without go-sqlcipher (a binary that does not link it) is
// left as is. It returns the number of components added.
func Augment(bom *cdx.BOM, libs []Library, opts Options) int {
	if !opts.Timestamp.IsZero() {
		if bom.Metadata == nil {
			bom.Metadata = &cdx.Metadata{}
		}
		bom.Metadata.Timestamp = opts.Timestamp.UTC().Format(time.RFC3339)
	}
	if opts.Version != "" && bom.Metadata != nil && bom.Metadata.Component != nil {
		bom.Metadata.Component.Version = opts.Version
	}
	if bom.Components == nil {
		return 0
	}
	// cyclonedx-gomod -std lists the standard library without a licence;
	// it is under the Go project's BSD-3-Clause licence.
	for i, c := range *bom.Components {
		if c.Licenses != nil && len(*c.Licenses) > 0 {
			continue
		}
		if c.Name == "std" && strings.HasPrefix(c.PackageURL, "pkg:golang/std@") {
			(*bom.Components)[i].Licenses = &cdx.Licenses{{License: &cdx.License{ID: "BSD-3-Clause"}}}
		} else if id, ok := ReviewedLicenses[c.Name+"@"+c.Version]; ok {
			(*bom.Components)[i].Licenses = &cdx.Licenses{{License: &cdx.License{ID: id, Acknowledgement: cdx.LicenseAcknowledgementConcluded}}}
		}
	}
	var parent string
	for _, c := range *bom.Components {
		if c.Name == SQLCipherModule {
			parent = c.BOMRef
		}
	}
	if parent == "" {
		return 0
	}
	existing := map[string]bool{}
	for _, c := range *bom.Components {
		existing[c.BOMRef] = true
	}
	added := 0
	var refs []string
	for _, l := range libs {
		refs = append(refs, l.PURL)
		if existing[l.PURL] {
			continue
		}
		props := []cdx.Property{{Name: "qpc:version_source", Value: l.Source}, {Name: "qpc:bundled_in", Value: parent}}
		for _, k := range slices.Sorted(maps.Keys(l.Properties)) {
			props = append(props, cdx.Property{Name: k, Value: l.Properties[k]})
		}
		*bom.Components = append(*bom.Components, cdx.Component{
			BOMRef:      l.PURL,
			Type:        cdx.ComponentTypeLibrary,
			Name:        l.Name,
			Version:     l.Version,
			Description: l.Description,
			Scope:       cdx.ScopeRequired,
			Licenses:    &cdx.Licenses{{License: &cdx.License{ID: l.License}}},
			PackageURL:  l.PURL,
			CPE:         l.CPE,
			Properties:  &props,
		})
		// A library with no dependencies gets an entry without dependsOn:
		// a pointer to an empty slice would be written as null, which the
		// CycloneDX schema refuses ("dependsOn must be array").
		d := cdx.Dependency{Ref: l.PURL}
		if len(l.DependsOn) > 0 {
			deps := slices.Clone(l.DependsOn)
			d.Dependencies = &deps
		}
		addDependency(bom, d)
		added++
	}
	addDependsOn(bom, parent, refs)
	return added
}

func addDependency(bom *cdx.BOM, d cdx.Dependency) {
	if bom.Dependencies == nil {
		bom.Dependencies = &[]cdx.Dependency{}
	}
	*bom.Dependencies = append(*bom.Dependencies, d)
}

// addDependsOn makes parent depend on refs (creating its entry if needed).
func addDependsOn(bom *cdx.BOM, parent string, refs []string) {
	if bom.Dependencies == nil {
		bom.Dependencies = &[]cdx.Dependency{}
	}
	deps := *bom.Dependencies
	for i := range deps {
		if deps[i].Ref != parent {
			continue
		}
		if deps[i].Dependencies == nil {
			deps[i].Dependencies = &[]string{}
		}
		have := map[string]bool{}
		for _, r := range *deps[i].Dependencies {
			have[r] = true
		}
		for _, r := range refs {
			if !have[r] {
				*deps[i].Dependencies = append(*deps[i].Dependencies, r)
			}
		}
		return
	}
	d := cdx.Dependency{Ref: parent}
	if len(refs) > 0 {
		r := slices.Clone(refs)
		d.Dependencies = &r
	}
	*bom.Dependencies = append(deps, d)
}

// Decode reads a CycloneDX JSON SBOM.
func Decode(r io.Reader) (*cdx.BOM, error) {
	bom := new(cdx.BOM)
	if err := cdx.NewBOMDecoder(r, cdx.BOMFileFormatJSON).Decode(bom); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRead, err)
	}
	return bom, nil
}

// Encode writes bom as indented CycloneDX JSON.
func Encode(w io.Writer, bom *cdx.BOM) error {
	if err := cdx.NewBOMEncoder(w, cdx.BOMFileFormatJSON).SetPretty(true).Encode(bom); err != nil {
		return fmt.Errorf("%w: %v", ErrWrite, err)
	}
	return nil
}
