package cli

import (
	"context"
	"strconv"
	"time"

	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/version"
)

// The tracing settings qpc reads, named as qpcd's options
// (docs/configuration.md, "Distributed tracing").
const (
	EnvTracingEndpoint    = "QPC_TRACING_ENDPOINT"
	EnvTracingProtocol    = "QPC_TRACING_PROTOCOL"
	EnvTracingSampleRatio = "QPC_TRACING_SAMPLE_RATIO"
	EnvTracingCAFile      = "QPC_TRACING_CA_FILE"
)

// tracingConfig reads the QPC_TRACING_* settings; the endpoint unset turns
// tracing off. The sample ratio defaults to 1, as qpcd's does.
func (a *app) tracingConfig() (tracing.Config, error) {
	c := tracing.Config{
		Endpoint:    a.io.Getenv(EnvTracingEndpoint),
		Protocol:    a.io.Getenv(EnvTracingProtocol),
		CAFile:      a.io.Getenv(EnvTracingCAFile),
		SampleRatio: 1,
		ServiceName: "qpc",
		Version:     version.String(),
	}
	if v := a.io.Getenv(EnvTracingSampleRatio); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return c, usagef("%s=%q: want a number from 0 to 1", EnvTracingSampleRatio, v)
		}
		c.SampleRatio = r
	}
	if err := c.Validate(); err != nil {
		return c, usagef("%s: %v", EnvTracingEndpoint, err)
	}
	return c, nil
}

// tracer sets up the process's span exporter on first use.
func (a *app) tracer(ctx context.Context) (*tracing.Provider, error) {
	if a.tp != nil {
		return a.tp, nil
	}
	c, err := a.tracingConfig()
	if err != nil {
		return nil, err
	}
	a.tp, err = tracing.Setup(ctx, c)
	return a.tp, err
}

// flushTraces exports the command's spans before qpc exits.
func (a *app) flushTraces() {
	if a.tp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.tp.Shutdown(ctx)
}
