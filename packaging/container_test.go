package packaging_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestContainerImage builds the release image from local files with buildah
// (packaging/docker/Containerfile.release: static binaries on scratch), runs
// it with podman as non-root, waits for its health check, chats through it
// with qpc from the host, restarts it on the same volume with nothing lost,
// and stops it with SIGTERM (drain, exit 0). `make container-test` runs it
// (QPC_CONTAINER_TEST=1, as root, with buildah, podman and runc installed);
// it needs a static qpcd build, so it stays out of make test.
func TestContainerImage(t *testing.T) {
	if os.Getenv("QPC_CONTAINER_TEST") != "1" {
		t.Skip("set QPC_CONTAINER_TEST=1 (make container-test): builds static binaries and an image")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for podman and buildah here")
	}
	buildah, podman := tool(t, "buildah"), tool(t, "podman")
	tool(t, "runc")
	ctx := t.TempDir()
	hostBin := t.TempDir()
	static := func(pkg, out string) {
		t.Helper()
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "netgo,osusergo,sqlite_omit_load_extension",
			"-ldflags", "-s -w -linkmode external -extldflags=-static", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	static("./cmd/qpcd", filepath.Join(ctx, "qpcd"))
	static("./cmd/qpcctl", filepath.Join(ctx, "qpcctl"))
	for pkg, out := range map[string]string{"./packaging/docker/healthcheck": filepath.Join(ctx, "qpc-healthcheck"), "./cmd/qpc": filepath.Join(hostBin, "qpc")} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if pkg == "./cmd/qpc" {
			cmd.Env = os.Environ()
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	if err := os.Mkdir(filepath.Join(ctx, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("qpcd-test-%d", time.Now().UnixNano())
	image := "localhost/" + name + ":test"
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// Docker format: OCI images have no HEALTHCHECK.
	run(buildah, "bud", "--format", "docker", "--isolation", "chroot", "-t", image, "-f", filepath.Join(root, "packaging/docker/Containerfile.release"), ctx)
	t.Cleanup(func() { _ = exec.Command(podman, "rmi", "-f", image).Run() })

	quic, ops := freeUDP(t), freeTCP(t)
	volume := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(volume, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(volume, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	// runc: podman's default crun refuses this kind of machine's hybrid
	// cgroups; explicit ulimits because the host's are unlimited.
	run(podman, "--runtime", "runc", "run", "-d", "--name", name, "--network=host",
		"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1000:1000",
		"-e", "QPC_LISTEN="+quic, "-e", "QPC_OPS_LISTEN="+ops, "-e", "QPC_HEALTHCHECK_URL=http://"+ops+"/readyz",
		"-v", volume+":/var/lib/qpcd", image)
	t.Cleanup(func() { _ = exec.Command(podman, "rm", "-f", name).Run() })
	waitReady(t, ops)
	run(podman, "--runtime", "runc", "healthcheck", "run", name)

	// Non-root inside and out: the image's user and the process's uid.
	if u := run(podman, "inspect", "--format", "{{.Config.User}}", name); u != "65532:65532" {
		t.Errorf("image user %q", u)
	}
	pid := run(podman, "inspect", "--format", "{{.State.Pid}}", name)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil || !strings.Contains(string(status), "\nUid:\t65532\t") {
		t.Errorf("qpcd runs as: %v\n%s", err, status)
	}
	pin := certPin(t, run(podman, "logs", name))

	type user struct{ home string }
	qpc := func(u user, args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(hostBin, "qpc"), append([]string{"--home", u.home}, args...)...)
		cmd.Env = append(os.Environ(), "QPC_CLIENT_PASSPHRASE=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("qpc %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	alice, bob := user{t.TempDir()}, user{t.TempDir()}
	for n, u := range map[string]user{"alice": alice, "bob": bob} {
		qpc(u, "init", "--server", quic, "--pin", pin)
		qpc(u, "register", n)
	}
	qpc(alice, "dm", "bob")
	qpc(bob, "dm", "alice")
	qpc(alice, "send", "@bob", "through the container")
	if out := qpc(bob, "recv"); !strings.Contains(out, "through the container") {
		t.Fatalf("bob recv: %q", out)
	}

	// SIGTERM: qpcd drains and exits 0.
	run(podman, "stop", "-t", "30", name)
	if code := run(podman, "inspect", "--format", "{{.State.ExitCode}}", name); code != "0" {
		t.Fatalf("exit code after SIGTERM: %s\n%s", code, run(podman, "logs", name))
	}
	// Restarted on the same volume: the same identity and everything kept.
	run(podman, "--runtime", "runc", "start", name)
	waitReady(t, ops)
	if again := certPin(t, run(podman, "logs", "--since", "1m", name)); again != pin {
		t.Errorf("certificate changed across the restart: %s then %s", pin, again)
	}
	qpc(alice, "send", "@bob", "after the restart")
	if out := qpc(bob, "recv"); !strings.Contains(out, "after the restart") {
		t.Fatalf("bob recv after restart: %q", out)
	}
	if out := qpc(bob, "history", "@alice"); !strings.Contains(out, "through the container") || !strings.Contains(out, "after the restart") {
		t.Fatalf("history after restart: %q", out)
	}
	run(podman, "stop", "-t", "30", name)
	if code := run(podman, "inspect", "--format", "{{.State.ExitCode}}", name); code != "0" {
		t.Fatalf("exit code after the second SIGTERM: %s", code)
	}
}

func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitReady(t *testing.T, ops string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + ops + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("qpcd in the container not ready at %s within 60s (last: %v)", ops, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// certPin finds the newest cert_sha256 in qpcd's JSON log.
func certPin(t *testing.T, logs string) string {
	t.Helper()
	pin := ""
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			if p, ok := line["cert_sha256"].(string); ok && p != "" {
				pin = p
			}
		}
	}
	if pin == "" {
		t.Fatalf("no cert_sha256 in the container's log:\n%s", logs)
	}
	return pin
}
