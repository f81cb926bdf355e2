package clidoc

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// binaries are the command trees whose man pages packaging/man holds.
var binaries = []string{"qpcd", "qpcctl", "qpc"}

// A message that tells the reader to pass a flag must name one that exists:
// "pass --db-key-file" where the command's flag is --key-file sends an
// operator nowhere. This reads every flag of the three binaries from the
// generated man pages (kept current by each binary's GeneratedDocs test) and
// every string literal in the code the binaries link, and checks each
// "--flag" named in a literal:
//   - after "qpcctl backup verify" (a binary and its subcommands) in the same
//     literal, the flag must be one of that command's (its own or inherited);
//   - otherwise it must be a flag of one of the three binaries.
//
// Literals that define flags name them too; they pass trivially.
func TestEveryFlagNamedInMessagesExists(t *testing.T) {
	pages := readManFlags(t, "../../packaging/man")
	any := map[string]bool{}
	for _, fl := range pages {
		for f := range fl {
			any[f] = true
		}
	}
	// Flags of the hidden gen-docs command (no man page) and flags every
	// cobra command has.
	for _, f := range []string{"man", "completions", "help", "version"} {
		any[f] = true
	}
	var problems []string
	for _, file := range linkedSources(t) {
		for _, lit := range stringLiterals(t, file.path) {
			for _, m := range flagMention.FindAllStringSubmatchIndex(lit.text, -1) {
				flag := lit.text[m[2]:m[3]]
				if foreignTool(lit.text[:m[0]]) {
					continue
				}
				page, path := commandBefore(lit.text[:m[0]], pages)
				switch {
				case page != "" && !pages[page][flag] && !any[flag]:
					problems = append(problems, file.rel+":"+strconv.Itoa(lit.line)+": `"+path+"` has no --"+flag+" (in "+strconv.Quote(short(lit.text))+")")
				case page != "" && !pages[page][flag]:
					problems = append(problems, file.rel+":"+strconv.Itoa(lit.line)+": `"+path+"` has no --"+flag+"; another command has (in "+strconv.Quote(short(lit.text))+")")
				case page == "" && !any[flag]:
					problems = append(problems, file.rel+":"+strconv.Itoa(lit.line)+": no qpc, qpcctl or qpcd command has --"+flag+" (in "+strconv.Quote(short(lit.text))+")")
				}
			}
		}
	}
	// The docs show command lines too: there only a mention after a
	// binary's command is checked (prose names other tools' flags).
	docs, _ := filepath.Glob("../../docs/*.md")
	docs = append(docs, "../../README.md")
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range flagMention.FindAllStringSubmatchIndex(line, -1) {
				flag := line[m[2]:m[3]]
				if foreignTool(line[:m[0]]) {
					continue
				}
				if page, path := commandBefore(line[:m[0]], pages); page != "" && !pages[page][flag] {
					problems = append(problems, strings.TrimPrefix(doc, "../../")+":"+strconv.Itoa(i+1)+": `"+path+"` has no --"+flag+" (in "+strconv.Quote(short(strings.TrimSpace(line)))+")")
				}
			}
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
	if len(pages) < 30 {
		t.Fatalf("read only %d man pages from packaging/man; the check would prove nothing", len(pages))
	}
}

// flagMention is "--name" not inside a longer word ("a--b") nor a format
// verb ("--%s").
var flagMention = regexp.MustCompile(`(?:^|[^A-Za-z0-9_-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)`)

// foreignTools are programs whose flags messages quote; a flag after one of
// them (closer than any qpc binary) is not checked.
var foreignTools = []string{"go test", "go run", "go build", "psql", "pg_dump", "journalctl", "systemctl", "openssl", "minisign", "promtool", "curl", "sqlite3", "make ", "docker", "nfpm", "apt", "dpkg", "rpm ", "opkg", "qpc-release", "qpc-bench", "qpc-supervise", "qpc-mls-interop", "ts-mls", "git "}

func foreignTool(before string) bool {
	bin := lastBinary(before)
	for _, tool := range foreignTools {
		if i := strings.LastIndex(before, tool); i >= 0 && i >= bin {
			return true
		}
	}
	return false
}

// lastBinary is the offset of the last "qpc", "qpcctl" or "qpcd" word in s, or -1.
func lastBinary(s string) int {
	last := -1
	for _, loc := range binaryWord.FindAllStringIndex(s, -1) {
		last = loc[0]
	}
	return last
}

var binaryWord = regexp.MustCompile(`\bqpc(?:ctl|d)?\b`)

// commandBefore finds the command a mention belongs to: the last binary
// name before it followed by as many subcommand words as name a man page
// ("qpcctl backup verify FILE --key-file" is qpcctl-backup-verify). It
// returns "" when no binary is named, or the words between it and the flag
// are not only its subcommands, arguments and other flags.
func commandBefore(before string, pages map[string]map[string]bool) (page, path string) {
	i := lastBinary(before)
	if i < 0 {
		return "", ""
	}
	words := strings.Fields(strings.Map(func(r rune) rune {
		if r == '`' || r == '(' || r == ')' || r == '"' || r == '\'' {
			return ' '
		}
		return r
	}, before[i:]))
	if len(words) == 0 {
		return "", ""
	}
	page, path = words[0], words[0]
	if _, ok := pages[page]; !ok {
		return "", ""
	}
	for _, w := range words[1:] {
		if p := page + "-" + w; pages[p] != nil {
			page, path = p, path+" "+w
			continue
		}
		// An argument (upper-case placeholder, a name, a path) or a flag
		// with its value: still the same command. Anything that reads
		// like prose ends the command line.
		if strings.HasPrefix(w, "-") || strings.ToUpper(w) == w || strings.ContainsAny(w, "/.=:@<>[]") {
			continue
		}
		// A lower-case word that is no subcommand: a name argument
		// ("qpc register alice --invite") or prose ("qpcd without
		// --pin"); the mention is not taken as this command's.
		return "", ""
	}
	return page, path
}

// readManFlags maps each man page (qpcctl-backup-verify) to its flags,
// its own and inherited ones.
func readManFlags(t *testing.T, dir string) map[string]map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	optLine := regexp.MustCompile(`\\fB--([a-z0-9-]+)\\fP`)
	out := map[string]map[string]bool{}
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".1")
		if name == e.Name() || !isBinaryPage(name) {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		flags := map[string]bool{"help": true, "version": name == strings.SplitN(name, "-", 2)[0]}
		inOptions := false
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, ".SH ") {
				inOptions = strings.Contains(line, "OPTIONS")
				continue
			}
			if inOptions {
				for _, m := range optLine.FindAllStringSubmatch(line, -1) {
					flags[m[1]] = true
				}
			}
		}
		f.Close()
		out[name] = flags
	}
	return out
}

func isBinaryPage(name string) bool {
	for _, b := range binaries {
		if name == b || strings.HasPrefix(name, b+"-") {
			return true
		}
	}
	return false
}

type sourceFile struct{ path, rel string }

// linkedSources lists the non-test Go files of this module that the three
// binaries are built from (generated Protobuf code left out).
func linkedSources(t *testing.T) []sourceFile {
	t.Helper()
	args := []string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}\t{{.Dir}}\t{{join .GoFiles \" \"}}{{end}}"}
	for _, b := range binaries {
		args = append(args, "../../cmd/"+b)
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const module = "github.com/quicprochat/quicprochat/"
	var files []sourceFile
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.SplitN(line, "\t", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[0], module) || strings.Contains(parts[0], "qpcv1") {
			continue
		}
		for _, name := range strings.Fields(parts[2]) {
			files = append(files, sourceFile{path: filepath.Join(parts[1], name), rel: strings.TrimPrefix(parts[0], module) + "/" + name})
		}
	}
	if len(files) < 50 {
		t.Fatalf("found only %d source files of the binaries", len(files))
	}
	return files
}

type literal struct {
	text string
	line int
}

func stringLiterals(t *testing.T, path string) []literal {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []literal
	ast.Inspect(f, func(n ast.Node) bool {
		// "a" + "b" + ...: one message written over several lines.
		if be, ok := n.(*ast.BinaryExpr); ok && be.Op == token.ADD {
			if s, ok := joined(be); ok {
				if strings.Contains(s, "--") {
					out = append(out, literal{text: s, line: fset.Position(be.Pos()).Line})
				}
				return false
			}
		}
		bl, ok := n.(*ast.BasicLit)
		if !ok || bl.Kind != token.STRING {
			return true
		}
		s, err := strconv.Unquote(bl.Value)
		if err == nil && strings.Contains(s, "--") {
			out = append(out, literal{text: s, line: fset.Position(bl.Pos()).Line})
		}
		return true
	})
	return out
}

// joined is the value of a sum of string literals; ok is false if any
// operand is not one.
func joined(e ast.Expr) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.ParenExpr:
		return joined(e.X)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		l, ok := joined(e.X)
		if !ok {
			return "", false
		}
		r, ok := joined(e.Y)
		return l + r, ok
	}
	return "", false
}

func short(s string) string {
	if len(s) > 140 {
		return s[:140] + "..."
	}
	return s
}
