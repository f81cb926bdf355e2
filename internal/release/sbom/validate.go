package sbom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// ErrInvalid: an SBOM does not validate against the CycloneDX JSON schema of
// the spec version it declares.
var ErrInvalid = errors.New("sbom: not valid CycloneDX")

// SchemaModule is the Go module whose schema/ directory holds the official
// CycloneDX JSON schemas (bom-1.x, spdx, jsf); it is in our build list as
// cyclonedx-gomod's library.
const SchemaModule = "github.com/CycloneDX/cyclonedx-go"

// schemaBase is the $id prefix the CycloneDX schemas use for each other.
const schemaBase = "http://cyclonedx.org/schema/"

// Validate checks doc against the official schema of the specVersion it
// declares, read from schemaDir (the schema/ directory of SchemaModule),
// with format assertions on: the check third-party consumers apply.
func Validate(doc []byte, schemaDir string) error {
	var head struct {
		BOMFormat   string `json:"bomFormat"`
		SpecVersion string `json:"specVersion"`
	}
	if err := json.Unmarshal(doc, &head); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if head.BOMFormat != "CycloneDX" || head.SpecVersion == "" {
		return fmt.Errorf("%w: bomFormat %q, specVersion %q", ErrInvalid, head.BOMFormat, head.SpecVersion)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	main := "bom-" + head.SpecVersion + ".schema.json"
	// The bom schema refers to these two by relative $ref; jsf ships as
	// ".schemax.json" in the module but is referenced as ".schema.json".
	files := map[string]string{main: main, "spdx.schema.json": "spdx.schema.json", "jsf-0.82.schema.json": "jsf-0.82.schemax.json"}
	for id, file := range files {
		b, err := os.ReadFile(filepath.Join(schemaDir, file))
		if err != nil {
			return fmt.Errorf("%w: no schema for spec version %s: %v", ErrRead, head.SpecVersion, err)
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("%w: schema %s: %v", ErrRead, file, err)
		}
		if err := c.AddResource(schemaBase+id, v); err != nil {
			return fmt.Errorf("%w: schema %s: %v", ErrRead, file, err)
		}
	}
	sch, err := c.Compile(schemaBase + main)
	if err != nil {
		return fmt.Errorf("%w: schema %s: %v", ErrRead, main, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := sch.Validate(inst); err != nil {
		return fmt.Errorf("%w (CycloneDX %s): %v", ErrInvalid, head.SpecVersion, err)
	}
	return nil
}
