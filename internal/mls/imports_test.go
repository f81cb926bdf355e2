package mls

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports enforces DESIGN.md: internal/mls imports only the standard
// library, golang.org/x/crypto, cloudflare/circl and its own subpackages.
func TestImports(t *testing.T) {
	const self = "github.com/quicprochat/quicprochat/internal/mls"
	allowed := func(p string) bool {
		switch {
		case p == self || strings.HasPrefix(p, self+"/"):
			return true
		case strings.HasPrefix(p, "golang.org/x/crypto/"), strings.HasPrefix(p, "github.com/cloudflare/circl/"):
			return true
		}
		first, _, _ := strings.Cut(p, "/")
		return !strings.Contains(first, ".") // standard library
	}
	n := 0
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		n++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !allowed(p) {
				t.Errorf("%s imports %q: internal/mls may import only the standard library, x/crypto, circl and itself", path, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no Go files found")
	}
}
