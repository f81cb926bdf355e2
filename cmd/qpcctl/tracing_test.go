package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/tracing/jaegertest"
)

// TestTracingLongCommandsAndShutdownFlush (issue 18), against Jaeger and
// the real binaries: `qpcctl backup create` with QPC_TRACING_ENDPOINT set
// is a trace of service qpcctl whose child is qpcd's admin backup span
// (the context crosses the admin socket); and the spans of qpcd's last
// RPC, made just before SIGTERM, reach Jaeger because qpcd flushes its
// exporter while shutting down (the batch would otherwise wait 5s).
func TestTracingLongCommandsAndShutdownFlush(t *testing.T) {
	j := jaegertest.Start(t)
	dataDir := shortDir(t)
	d := startQPCD(t, dataDir, "QPC_TRACING_ENDPOINT="+j.OTLPGRPC)

	out := filepath.Join(t.TempDir(), "b.qpcbak")
	cmd := exec.Command(qpcctlBin, "--data-dir", dataDir, "backup", "create", "--out", out)
	cmd.Env = cleanEnv("QPC_TRACING_ENDPOINT=" + j.OTLPHTTP)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("qpcctl backup create: %v\n%s", err, stderr.String())
	}

	c := d.mustDial(t)
	if _, _, err := register(c, "lastbeforesigterm"); err != nil {
		t.Fatal(err)
	}
	d.signal(t, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("qpcd did not exit within 30s of SIGTERM")
	}

	var backup, regs []jaegertest.Trace
	waitFor(t, 20*time.Second, "the traces in Jaeger", func() bool {
		backup = j.Traces(t, "qpcctl", "qpcctl.backup.create")
		regs = j.Traces(t, "qpcd", "qpc.Register")
		return len(backup) > 0 && len(regs) > 0
	})
	tr := backup[0]
	var root, adminSpan *jaegertest.Span
	for i := range tr.Spans {
		s := &tr.Spans[i]
		switch {
		case s.OperationName == "qpcctl.backup.create" && tr.Processes[s.ProcessID].ServiceName == "qpcctl":
			root = s
		case s.OperationName == "qpcd.admin.backup" && tr.Processes[s.ProcessID].ServiceName == "qpcd":
			adminSpan = s
		}
	}
	if root == nil || adminSpan == nil {
		t.Fatalf("backup trace lacks qpcctl's root or qpcd's admin span: %+v", tr.Spans)
	}
	if len(adminSpan.References) == 0 || adminSpan.References[0].SpanID != root.SpanID {
		t.Errorf("qpcd's admin span is not the child of qpcctl's command span: %+v", adminSpan.References)
	}
	exit := false
	for _, tag := range root.Tags {
		if tag.Key == tracing.KeyExitCode {
			exit = true
		}
	}
	if !exit {
		t.Errorf("qpcctl's span has no %s tag: %+v", tracing.KeyExitCode, root.Tags)
	}
}
