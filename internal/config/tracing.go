package config

import "github.com/quicprochat/quicprochat/internal/tracing"

// TracingConfig is the tracing.* options as internal/tracing takes them,
// with the resource attributes of this process (node id, version).
func (c Config) TracingConfig(nodeID, version string) tracing.Config {
	return tracing.Config{
		Endpoint:    c.Tracing.Endpoint,
		Protocol:    c.Tracing.Protocol,
		SampleRatio: c.Tracing.SampleRatio,
		CAFile:      c.Tracing.CAFile,
		ServiceName: c.Tracing.ServiceName,
		NodeID:      nodeID,
		Version:     version,
	}
}
