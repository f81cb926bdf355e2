// Package packaging_test checks the release packaging statically: the nfpm
// configuration, the systemd unit, the OpenWrt procd script and UCI mapping,
// the Dockerfile and the docker-compose testnet. `make release` builds the
// real packages; these tests run in `make test`.
package packaging_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/ipk" // registers the ipk packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/release"
)

// root is the repository root (tests start in packaging/), absolute so that
// tests may change directory.
var root = func() string {
	abs, err := filepath.Abs("..")
	if err != nil {
		return ".."
	}
	return abs
}()

func read(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var envLine = regexp.MustCompile(`^#?\s*(QPC_[A-Z0-9_]+)=`)

// qpcVars are the QPC_* variables of .env.example, which is generated from
// internal/config's option table, so this list cannot go stale.
func qpcVars(t *testing.T) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(read(t, ".env.example")))
	for sc.Scan() {
		if m := envLine.FindStringSubmatch(sc.Text()); m != nil {
			vars[m[1]] = true
		}
	}
	if len(vars) < 10 || !vars["QPC_LISTEN"] || !vars["QPC_DATA_DIR"] {
		t.Fatalf(".env.example lists only %d QPC_* variables: %v", len(vars), vars)
	}
	return vars
}

// nfpmConfig parses packaging/nfpm.yaml the way `make release` fills it in.
func nfpmConfig(t *testing.T, file, binDir, distDir, arch string) nfpm.Config {
	t.Helper()
	env := map[string]string{"PKG_VERSION": "1.2.3", "PKG_ARCH": arch, "BIN_DIR": binDir, "DIST_DIR": distDir, "MAN_DIR": gzipMan(t)}
	cfg, err := nfpm.ParseFileWithEnvMapping(filepath.Join(root, "packaging", file), func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return cfg
}

// fakeInputs makes stand-in binaries and a public key for packaging.
func fakeInputs(t *testing.T) (binDir, distDir string) {
	t.Helper()
	dir := t.TempDir()
	binDir, distDir = filepath.Join(dir, "bin"), filepath.Join(dir, "dist")
	for _, d := range []string{binDir, distDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{
		filepath.Join(binDir, "qpcd"): "qpcd", filepath.Join(binDir, "qpcctl"): "qpcctl", filepath.Join(binDir, "qpc"): "qpc",
		filepath.Join(distDir, "minisign.pub"): "untrusted comment: test\nkey\n",
	} {
		if err := os.WriteFile(name, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return binDir, distDir
}

// gzipMan compresses packaging/man/*.1 as build.sh does (gzip -9n: no
// name, no time, so the packages stay reproducible).
func gzipMan(t *testing.T) string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join(root, "packaging", "man", "*.1"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("no man pages in packaging/man (%v); run go test ./cmd/... -run GeneratedDocs -update-docs", err)
	}
	dir := t.TempDir()
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := zw.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)+".gz"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type packaged struct {
	dsts    map[string]string // destination -> content type
	scripts nfpm.Scripts
	sum     [32]byte
	name    string
}

// build runs nfpm's packager for format in-process; paths in nfpm.yaml are
// relative to the repository root, as `make release` runs it.
func build(t *testing.T, file, format, arch, binDir, distDir string) packaged {
	t.Helper()
	cfg := nfpmConfig(t, file, binDir, distDir, arch)
	info, err := cfg.Get(format)
	if err != nil {
		t.Fatalf("%s: %v", format, err)
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, format); err != nil {
		t.Fatalf("%s: %v", format, err)
	}
	p := packaged{dsts: map[string]string{}, scripts: info.Scripts}
	for _, c := range info.Contents {
		p.dsts[c.Destination] = c.Type
	}
	pkg, err := nfpm.Get(format)
	if err != nil {
		t.Fatal(err)
	}
	p.name = pkg.ConventionalFileName(info)
	var buf bytes.Buffer
	if err := pkg.Package(info, &buf); err != nil {
		t.Fatalf("%s package: %v", format, err)
	}
	p.sum = sha256.Sum256(buf.Bytes())
	return p
}

func inRoot(t *testing.T) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chdir(wd) })
}

func TestNFPMPackages(t *testing.T) {
	binDir, distDir := fakeInputs(t)
	inRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")

	common := []string{"/usr/bin/qpcd", "/usr/bin/qpcctl", release.DefaultPublicKeyPath}
	cases := []struct {
		format, arch string
		want         []string
		config       string
		absent       []string
		scripts      []string
	}{
		{"deb", "amd64", []string{"/usr/lib/systemd/system/qpcd.service", "/etc/qpcd/qpcd.yaml"}, "/etc/qpcd/qpcd.yaml",
			[]string{"/etc/init.d/qpcd"}, []string{"preinstall", "postinstall", "preremove", "postremove"}},
		{"rpm", "arm64", []string{"/usr/lib/systemd/system/qpcd.service", "/etc/qpcd/qpcd.yaml"}, "/etc/qpcd/qpcd.yaml",
			[]string{"/etc/config/qpcd"}, []string{"preinstall", "postinstall", "preremove", "postremove"}},
		{"ipk", "aarch64_cortex-a53", []string{"/etc/init.d/qpcd", "/etc/config/qpcd"}, "/etc/config/qpcd",
			[]string{"/usr/lib/systemd/system/qpcd.service", "/etc/qpcd/qpcd.yaml"}, []string{"postinstall", "preremove"}},
	}
	for _, tc := range cases {
		t.Run(tc.format, func(t *testing.T) {
			p := build(t, "nfpm.yaml", tc.format, tc.arch, binDir, distDir)
			for _, d := range append(common, tc.want...) {
				if _, ok := p.dsts[d]; !ok {
					t.Errorf("%s lacks %s", tc.format, d)
				}
			}
			for _, d := range tc.absent {
				if _, ok := p.dsts[d]; ok {
					t.Errorf("%s must not ship %s", tc.format, d)
				}
			}
			if typ := p.dsts[tc.config]; !strings.HasPrefix(typ, "config") {
				t.Errorf("%s: %s has type %q, want a config file (kept on upgrade)", tc.format, tc.config, typ)
			}
			scripts := map[string]string{"preinstall": p.scripts.PreInstall, "postinstall": p.scripts.PostInstall,
				"preremove": p.scripts.PreRemove, "postremove": p.scripts.PostRemove}
			for name, path := range scripts {
				if slices.Contains(tc.scripts, name) != (path != "") {
					t.Errorf("%s %s script = %q", tc.format, name, path)
				}
				if path != "" {
					if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
						t.Errorf("%s: sh -n: %v\n%s", path, err, out)
					}
				}
			}
			if !strings.Contains(p.name, "1.2.3") {
				t.Errorf("package name %q lacks the version", p.name)
			}
			// Same inputs and SOURCE_DATE_EPOCH: the same bytes.
			if again := build(t, "nfpm.yaml", tc.format, tc.arch, binDir, distDir); again.sum != p.sum {
				t.Errorf("%s: two builds differ: not reproducible", tc.format)
			}
		})
	}
}

// The client package (built once cmd/qpc exists) parses and carries qpc.
func TestNFPMClientPackage(t *testing.T) {
	binDir, distDir := fakeInputs(t)
	inRoot(t)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	for _, format := range []string{"deb", "rpm"} {
		p := build(t, "nfpm-qpc.yaml", format, "amd64", binDir, distDir)
		for _, d := range []string{"/usr/bin/qpc", "/usr/share/man/man1/qpc.1.gz", "/usr/share/bash-completion/completions/qpc"} {
			if _, ok := p.dsts[d]; !ok {
				t.Errorf("qpc %s lacks %s", format, d)
			}
		}
		// The release key belongs to qpcd alone, so both install together.
		if _, ok := p.dsts[release.DefaultPublicKeyPath]; ok {
			t.Errorf("qpc %s ships %s, which qpcd owns", format, release.DefaultPublicKeyPath)
		}
	}
}

// unit parses a systemd unit file into section.key -> values.
func unit(t *testing.T, text string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line without '=': %q", line)
			}
			out[section+"."+strings.TrimSpace(k)] = append(out[section+"."+strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return out
}

func TestSystemdUnitHardening(t *testing.T) {
	u := unit(t, read(t, "packaging/systemd/qpcd.service"))
	want := map[string]string{
		"Service.User":                  "qpcd",
		"Service.Group":                 "qpcd",
		"Service.StateDirectory":        "qpcd",
		"Service.ProtectSystem":         "strict",
		"Service.NoNewPrivileges":       "yes",
		"Service.CapabilityBoundingSet": "",
		"Service.AmbientCapabilities":   "",
		"Service.ProtectHome":           "yes",
		"Service.PrivateTmp":            "yes",
		"Service.ExecStart":             "/usr/bin/qpcd --config /etc/qpcd/qpcd.yaml",
		"Install.WantedBy":              "multi-user.target",
	}
	for k, v := range want {
		got, ok := u[k]
		if !ok || got[len(got)-1] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if u["Service.DynamicUser"] != nil {
		t.Error("the unit uses the dedicated qpcd user, not DynamicUser")
	}

	// The shipped configuration is valid for qpcd and keeps its data in the
	// unit's StateDirectory.
	cfg, err := config.Load(config.LoadOptions{File: filepath.Join(root, "packaging/qpcd.yaml"), Env: []string{}})
	if err != nil {
		t.Fatalf("packaging/qpcd.yaml: %v", err)
	}
	if cfg.DataDir != "/var/lib/qpcd" {
		t.Errorf("data_dir = %q, want /var/lib/qpcd (StateDirectory=qpcd)", cfg.DataDir)
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: skipping its offline security score of the unit")
	}
	// systemd's own exposure score: 0 (locked down) .. 10; 2.0 or less passes.
	dir := t.TempDir()
	unitCopy := filepath.Join(dir, "qpcd.service")
	if err := os.WriteFile(unitCopy, []byte(read(t, "packaging/systemd/qpcd.service")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sa, "security", "--offline=true", "--threshold=20", unitCopy)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	if i := bytes.LastIndex(out, []byte("Overall exposure level")); i >= 0 {
		t.Log(strings.TrimSpace(string(out[i:])))
	}
}

// uciOptions reads `option NAME 'value'` lines of /etc/config/qpcd.
func uciOptions(t *testing.T) map[string]string {
	t.Helper()
	opts := map[string]string{}
	re := regexp.MustCompile(`^\s*option\s+(\w+)\s+'([^']*)'`)
	for _, line := range strings.Split(read(t, "packaging/openwrt/files/qpcd.config"), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			opts[m[1]] = m[2]
		}
	}
	if len(opts) == 0 {
		t.Fatal("no options in packaging/openwrt/files/qpcd.config")
	}
	return opts
}

// runInit sources the procd init script with stand-ins for OpenWrt's shell
// functions and returns the env entries it passed to procd and its calls.
func runInit(t *testing.T, opts map[string]string) (env []string, calls string) {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var stub strings.Builder
	stub.WriteString(`
config_load() { echo "config_load $1"; }
config_get() { # var section option [default]
	eval "v=\${UCI_$3-}"
	[ -n "$v" ] || v=${4-}
	eval "$1=\$v"
}
config_get_bool() { config_get "$@"; }
procd_open_instance() { echo "procd_open_instance $*"; }
procd_close_instance() { echo "procd_close_instance"; }
procd_set_param() { k=$1; shift; for a in "$@"; do echo "set $k $a"; done; }
procd_append_param() { k=$1; shift; for a in "$@"; do echo "set $k $a"; done; }
procd_add_reload_trigger() { echo "reload_trigger $*"; }
mkdir() { echo "mkdir $*"; }
chown() { echo "chown $*"; }
chmod() { echo "chmod $*"; }
`)
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		stub.WriteString("UCI_" + k + "='" + strings.ReplaceAll(opts[k], "'", "") + "'\n")
	}
	stub.WriteString(". " + filepath.Join(root, "packaging/openwrt/files/qpcd.init") + "\nstart_service\nservice_triggers\n")
	out, err := exec.Command(sh, "-c", stub.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("init script: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "set env "); ok {
			env = append(env, v)
		}
	}
	return env, string(out)
}

func TestOpenWrtProcdScript(t *testing.T) {
	script := read(t, "packaging/openwrt/files/qpcd.init")
	for _, want := range []string{"#!/bin/sh /etc/rc.common", "USE_PROCD=1", "procd_set_param respawn", "procd_add_reload_trigger qpcd",
		"procd_set_param file /etc/config/qpcd", "procd_set_param user qpcd", "start_service()", "service_triggers()"} {
		if !strings.Contains(script, want) {
			t.Errorf("qpcd.init lacks %q", want)
		}
	}
	vars := qpcVars(t)

	t.Run("UCI options are QPC variables", func(t *testing.T) {
		for opt := range uciOptions(t) {
			if opt == "enabled" {
				continue
			}
			if v := "QPC_" + strings.ToUpper(opt); !vars[v] {
				t.Errorf("UCI option %s maps to %s, which .env.example does not list", opt, v)
			}
		}
	})

	t.Run("every QPC variable can be set from UCI", func(t *testing.T) {
		opts := map[string]string{}
		for v := range vars {
			opts[strings.ToLower(strings.TrimPrefix(v, "QPC_"))] = "marker-" + v
		}
		env, calls := runInit(t, opts)
		got := map[string]string{}
		for _, e := range env {
			k, v, _ := strings.Cut(e, "=")
			got[k] = v
		}
		for v := range vars {
			switch {
			case v == "QPC_DB_KEY":
				if _, ok := got[v]; ok {
					t.Errorf("the inline database key must not come from world-readable UCI")
				}
			case got[v] != "marker-"+v:
				t.Errorf("%s = %q from UCI option %s, want the option's value", v, got[v], strings.ToLower(strings.TrimPrefix(v, "QPC_")))
			}
		}
		for _, want := range []string{"config_load qpcd", "procd_open_instance", "set respawn", "set user qpcd", "reload_trigger qpcd", "procd_close_instance"} {
			if !strings.Contains(calls, want) {
				t.Errorf("start_service/service_triggers did not call %q:\n%s", want, calls)
			}
		}
	})

	t.Run("shipped UCI config is a valid qpcd configuration", func(t *testing.T) {
		env, _ := runInit(t, uciOptions(t))
		cfg, err := config.Load(config.LoadOptions{Env: env})
		if err != nil {
			t.Fatalf("qpcd rejects the environment from /etc/config/qpcd: %v\nenv: %v", err, env)
		}
		if cfg.DataDir != uciOptions(t)["data_dir"] {
			t.Errorf("data_dir = %q", cfg.DataDir)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		_, calls := runInit(t, map[string]string{"enabled": "0"})
		if strings.Contains(calls, "procd_open_instance") {
			t.Errorf("enabled=0 still starts qpcd:\n%s", calls)
		}
	})
}

func TestOpenWrtSDKMakefile(t *testing.T) {
	mk := read(t, "packaging/openwrt/Makefile")
	module := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(read(t, "go.mod"), "\n", 2)[0], "module"))
	for _, want := range []string{
		"include $(TOPDIR)/rules.mk",
		"include $(INCLUDE_DIR)/package.mk",
		"golang/golang-package.mk",
		"GO_PKG:=" + module,
		"$(GO_PKG)/cmd/qpcd", "$(GO_PKG)/cmd/qpcctl",
		"PKG_BUILD_DEPENDS:=golang/host",
		"$(GO_PKG)/internal/version.Version=",
		"./files/qpcd.init $(1)/etc/init.d/qpcd",
		"./files/qpcd.config $(1)/etc/config/qpcd",
		"define Package/qpcd/conffiles\n/etc/config/qpcd\nendef",
		"$(eval $(call GoBinPackage,qpcd))",
		"$(eval $(call BuildPackage,qpcd))",
	} {
		if !strings.Contains(mk, want) {
			t.Errorf("packaging/openwrt/Makefile lacks %q", want)
		}
	}
	for _, f := range []string{"files/qpcd.init", "files/qpcd.config", "scripts/postinst", "scripts/prerm"} {
		if _, err := os.Stat(filepath.Join(root, "packaging/openwrt", f)); err != nil {
			t.Error(err)
		}
	}
	// Recipe lines must start with a tab.
	for i, line := range strings.Split(mk, "\n") {
		if strings.HasPrefix(line, "    $(") {
			t.Errorf("Makefile line %d is indented with spaces: %q", i+1, line)
		}
	}
}

func TestReleaseScriptMatchesDockerBuild(t *testing.T) {
	script := read(t, "packaging/release/build.sh")
	df := read(t, "Dockerfile")
	m := regexp.MustCompile(`(?m)^TAGS=(\S+)`).FindStringSubmatch(script)
	if m == nil {
		t.Fatal("build.sh: no TAGS=")
	}
	if !strings.Contains(df, "-tags "+m[1]) {
		t.Errorf("Dockerfile does not build with the release tags %s", m[1])
	}
	for _, flag := range []string{"-trimpath", "-buildvcs=false", "-extldflags=-static"} {
		if !strings.Contains(script, flag) || !strings.Contains(df, flag) {
			t.Errorf("%s missing from build.sh or Dockerfile", flag)
		}
	}
	if out, err := exec.Command("bash", "-n", filepath.Join(root, "packaging/release/build.sh")).CombinedOutput(); err != nil {
		t.Errorf("bash -n build.sh: %v\n%s", err, out)
	}
}

// Every internal package has an explicit owner in CODEOWNERS, so
// a new package cannot slip in with only the catch-all owner.
func TestCodeownersCoverPackages(t *testing.T) {
	owned := map[string]bool{}
	for _, line := range strings.Split(read(t, ".github/CODEOWNERS"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			owned[f[0]] = true
		}
	}
	for _, parent := range []string{"internal"} {
		entries, err := os.ReadDir(filepath.Join(root, parent))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IsDir() && !owned["/"+parent+"/"+e.Name()+"/"] {
				t.Errorf(".github/CODEOWNERS has no line for /%s/%s/", parent, e.Name())
			}
		}
	}
	for _, p := range []string{"/internal/mls/", "/internal/auth/", "/internal/identity/", "/proto/"} {
		if !owned[p] {
			t.Errorf(".github/CODEOWNERS has no line for %s (two reviews, CONTRIBUTING.md)", p)
		}
		if !strings.Contains(read(t, "CONTRIBUTING.md"), "`"+strings.TrimPrefix(p, "/")+"`") {
			t.Errorf("CONTRIBUTING.md does not list %s among the paths needing two reviews", p)
		}
		if !strings.Contains(read(t, ".github/workflows/reviews.yml"), strings.TrimPrefix(p, "/")) {
			t.Errorf("reviews.yml does not check %s", p)
		}
	}
}
