package release

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Maintainer is the packager named in package metadata and changelogs.
const Maintainer = "quicprochat maintainers <maintainers@quicprochat.org>"

// ChangelogEntry is one release in the packages' changelog: the deb's
// changelog.Debian.gz and the rpm's %changelog, both rendered by nfpm from
// the chglog YAML that WriteChangelog writes.
type ChangelogEntry struct {
	Version string    // package version, as nfpm gets it (PKG_VERSION)
	Date    time.Time // SOURCE_DATE_EPOCH, so the packages stay reproducible
	Changes []Change  // newest first; at least one
}

// Change is one line of a changelog entry.
type Change struct {
	Commit string // short hash; may be empty
	Note   string
}

// ErrChangelog: a changelog entry lacks what the package tools require.
var ErrChangelog = errors.New("release: invalid changelog entry")

// WriteChangelog writes e in chglog's YAML format (a list of entries).
func WriteChangelog(w io.Writer, e ChangelogEntry) error {
	if e.Version == "" || e.Date.IsZero() || len(e.Changes) == 0 {
		return fmt.Errorf("%w: version, date and at least one change are required", ErrChangelog)
	}
	type change struct {
		Commit string `yaml:"commit"`
		Note   string `yaml:"note"`
	}
	type debFields struct {
		Urgency       string   `yaml:"urgency"`
		Distributions []string `yaml:"distributions"`
	}
	type entry struct {
		Semver   string    `yaml:"semver"`
		Date     string    `yaml:"date"`
		Packager string    `yaml:"packager"`
		Deb      debFields `yaml:"deb"`
		Changes  []change  `yaml:"changes"`
	}
	out := entry{Semver: strings.TrimPrefix(e.Version, "v"), Date: e.Date.UTC().Format(time.RFC3339), Packager: Maintainer,
		Deb: debFields{Urgency: "medium", Distributions: []string{"stable"}}}
	for _, c := range e.Changes {
		note := strings.TrimSpace(strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return ' '
			}
			return r
		}, c.Note))
		if note == "" {
			continue
		}
		out.Changes = append(out.Changes, change{Commit: c.Commit, Note: wrap(note, 72)})
	}
	if len(out.Changes) == 0 {
		return fmt.Errorf("%w: every change is empty", ErrChangelog)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode([]entry{out}); err != nil {
		return fmt.Errorf("%w: %v", ErrChangelog, err)
	}
	return enc.Close()
}

// ParseGitLog turns `git log --format='%h %s'` output into changes.
func ParseGitLog(out string) []Change {
	var cs []Change
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		hash, subject, _ := strings.Cut(line, " ")
		cs = append(cs, Change{Commit: hash, Note: subject})
	}
	return cs
}

// wrap breaks text into lines of at most width bytes (longer words stay
// whole); nfpm renders the lines after the first as continuation lines.
func wrap(text string, width int) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = w
			continue
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}
