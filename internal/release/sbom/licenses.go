package sbom

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// ErrLicense: a component of a release is under a licence the project's
// dependency policy does not allow, or under none that could be detected.
var ErrLicense = errors.New("sbom: licence not allowed by the dependency policy")

// AllowedLicenses is the dependency policy (CONTRIBUTING.md, "Dependencies"):
// permissive licences compatible with shipping Apache-2.0 binaries. Adding
// one is a reviewed change to this list.
var AllowedLicenses = []string{
	"0BSD", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "MIT",
	"MPL-2.0", // file-level copyleft: fine for unmodified modules
	"Unlicense", "CC0-1.0", "Zlib",
	"blessing", // SQLite's public-domain dedication
}

// ReviewedLicenses are licences read by a person where cyclonedx-gomod's
// detector found none, keyed by module@version so that an upgrade is
// reviewed again. Augment records them as "concluded" (not declared by
// the SBOM tool). Each entry names what was read.
var ReviewedLicenses = map[string]string{
	// LICENSE is the MIT text under "The MIT License (MIT)" and a
	// copyright line; the detector's confidence falls short on it.
	"github.com/cenkalti/backoff/v5@v5.0.3": "MIT",
}

// CheckLicenses returns ErrLicense naming every component (and the main
// component) whose licence is missing or outside AllowedLicenses. A
// component with several licences passes when any of them is allowed (the
// SBOM lists the choices a dual licence offers).
func CheckLicenses(bom *cdx.BOM) error {
	var bad []string
	check := func(c cdx.Component) {
		var ids []string
		if c.Licenses != nil {
			for _, l := range *c.Licenses {
				switch {
				case l.License != nil && l.License.ID != "":
					ids = append(ids, l.License.ID)
				case l.License != nil && l.License.Name != "":
					ids = append(ids, l.License.Name)
				case l.Expression != "":
					ids = append(ids, l.Expression)
				}
			}
		}
		for _, id := range ids {
			if slices.Contains(AllowedLicenses, id) {
				return
			}
		}
		got := "none detected"
		if len(ids) > 0 {
			got = strings.Join(ids, ", ")
		}
		bad = append(bad, fmt.Sprintf("%s %s (%s)", c.Name, c.Version, got))
	}
	if bom.Metadata != nil && bom.Metadata.Component != nil {
		check(*bom.Metadata.Component)
	}
	if bom.Components != nil {
		for _, c := range *bom.Components {
			check(c)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrLicense, strings.Join(bad, "; "))
	}
	return nil
}
