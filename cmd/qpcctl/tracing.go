package main

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/version"
)

// tracedCommands are the commands that do long work: with tracing.* set
// (the same settings as qpcd: --config, QPC_TRACING_*), each run is a
// trace of service qpcctl, with the database work below it.
var tracedCommands = map[string]bool{
	"qpcctl backup create": true, "qpcctl backup verify": true, "qpcctl restore": true,
	"qpcctl migrate to-postgres": true, "qpcctl rotate db-key": true,
}

// traceLongCommands wraps the RunE of every command in tracedCommands.
func traceLongCommands(root *cobra.Command, g *globals) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if tracedCommands[c.CommandPath()] && c.RunE != nil {
			c.RunE = g.traced(c.RunE)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// traceFlushTimeout bounds the wait for the collector before exiting.
const traceFlushTimeout = 5 * time.Second

// traced runs fn inside a root span named after the command and flushes
// the spans before returning. Tracing never fails a command: settings that
// do not load leave it untraced (the command itself reports them).
func (g *globals) traced(fn func(*cobra.Command, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cfg, err := g.loadConfig()
		if err != nil || cfg.Tracing.Endpoint == "" {
			return fn(cmd, args)
		}
		tc := cfg.TracingConfig("", version.String())
		tc.ServiceName = "qpcctl"
		p, err := tracing.Setup(cmd.Context(), tc)
		if err != nil {
			return fn(cmd, args)
		}
		name := strings.ReplaceAll(cmd.CommandPath(), " ", ".")
		ctx, span := p.Tracer().Start(cmd.Context(), name, trace.WithSpanKind(trace.SpanKindInternal))
		cmd.SetContext(ctx)
		err = fn(cmd, args)
		code := exitOK
		if err != nil {
			code = exitUsage
			var ee exitError
			if errors.As(err, &ee) {
				code = ee.code
			}
			tracing.Fail(span, "failed")
		}
		tracing.Set(span, tracing.Int(tracing.KeyExitCode, code))
		span.End()
		fctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
		defer cancel()
		_ = p.Shutdown(fctx)
		return err
	}
}
