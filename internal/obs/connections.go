package obs

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values for qpcd_connections_refused_total{reason}.
const (
	RefusedGlobalCap  = "global_cap"  // limits.max_connections reached
	RefusedPerAddress = "per_address" // limits.max_connections_per_address reached
	RefusedDraining   = "draining"
)

// Label values for qpcd_connections_reaped_total{reason}.
const (
	ReapedSilent = "silent" // no request within limits.first_request_timeout of the handshake
	ReapedIdle   = "idle"   // no request for limits.idle_timeout
)

// ConnRejectedPerAddress is the qpcd_connections_total{result} value of a
// handshake refused at the per-address cap.
const ConnRejectedPerAddress = "rejected_per_address"

// ConnectionMetrics count the connections qpcd refused or closed itself.
// The log reports them at most once a minute per reason; these carry the
// volume.
type ConnectionMetrics struct {
	Refused *prometheus.CounterVec // qpcd_connections_refused_total{reason}
	Reaped  *prometheus.CounterVec // qpcd_connections_reaped_total{reason}
}

// NewConnectionMetrics registers the connection counters in m's registry,
// every label value at zero.
func NewConnectionMetrics(m *Metrics) (*ConnectionMetrics, error) {
	c := &ConnectionMetrics{
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_connections_refused_total",
			Help: "QUIC connections refused after the handshake, by reason (global_cap, per_address, draining).",
		}, []string{"reason"}),
		Reaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_connections_reaped_total",
			Help: "QUIC connections qpcd closed for carrying no request, by reason (silent: none after the handshake; idle: none for the idle timeout).",
		}, []string{"reason"}),
	}
	var errs []error
	for _, col := range []prometheus.Collector{c.Refused, c.Reaped} {
		if err := m.Registry.Register(col); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("obs: registering connection metrics: %w", errors.Join(errs...))
	}
	for _, r := range []string{RefusedGlobalCap, RefusedPerAddress, RefusedDraining} {
		c.Refused.WithLabelValues(r)
	}
	for _, r := range []string{ReapedSilent, ReapedIdle} {
		c.Reaped.WithLabelValues(r)
	}
	m.ConnectionsTotal.WithLabelValues(ConnRejectedPerAddress)
	return c, nil
}
