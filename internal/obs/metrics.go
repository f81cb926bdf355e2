package obs

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/version"
)

// Label values for qpcd_connections_total{result}.
const (
	ConnAccepted          = "accepted"
	ConnRejectedLimit     = "rejected_limit"
	ConnRejectedHandshake = "rejected_handshake"
	ConnRejectedDraining  = "rejected_draining"
)

// Label values for qpcd_frames_rejected_total{reason}.
const (
	FrameOversized          = "oversized"
	FrameMalformed          = "malformed"
	FrameUnsupportedVersion = "unsupported_version"
	FrameInvalidArgument    = "invalid_argument"
)

// Label values for qpcd_rate_limited_total{scope}.
const (
	ScopeIP      = "ip"
	ScopeAccount = "account"
	ScopeDevice  = "device"
	// ScopeAccountBytes is the per-account limit on payload bytes per
	// second (limits.byte_rate), beside the request limits.
	ScopeAccountBytes = "account_bytes"
)

// RPCDurationBuckets are the latency buckets of qpcd_rpc_duration_seconds,
// 0.5 ms to 10 s.
var RPCDurationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Metrics are qpcd's Prometheus metrics, in their own registry (no global
// state). Label sets known in advance are created at zero so that rate()
// and absent() behave from the first scrape.
type Metrics struct {
	Registry         *prometheus.Registry
	Connections      prometheus.Gauge         // qpcd_connections: open QUIC connections
	ConnectionsTotal *prometheus.CounterVec   // qpcd_connections_total{result}
	RPCs             *prometheus.CounterVec   // qpcd_rpc_requests_total{method,status}
	RPCDuration      *prometheus.HistogramVec // qpcd_rpc_duration_seconds{method}
	EnqueueMessages  *prometheus.CounterVec   // qpcd_enqueue_status_total{rpc,status}: wire status per message, alone or batched (the delivery SLO)
	InFlight         prometheus.Gauge         // qpcd_rpc_in_flight
	FramesRejected   *prometheus.CounterVec   // qpcd_frames_rejected_total{reason}
	RateLimited      *prometheus.CounterVec   // qpcd_rate_limited_total{scope}
	AuthFailures     *prometheus.CounterVec   // qpcd_auth_failures_total{reason}
	Ready            prometheus.Gauge         // qpcd_ready: 1 when serving, 0 while starting or draining
	DBCommitDuration prometheus.Histogram     // qpcd_db_commit_duration_seconds: COMMIT of one write batch
	DBCommitWrites   prometheus.Histogram     // qpcd_db_commit_writes: WriteTx calls per committed batch
	DBWriteWait      prometheus.Histogram     // qpcd_db_write_wait_seconds: a write's wait for SQLite's single writer

	err error // registration failure; see Err
}

// StoreGauges are read from the store at each scrape; nil fields are
// left out.
type StoreGauges struct {
	Size       func() float64 // qpcd_db_size_bytes
	WriteQueue func() float64 // qpcd_db_write_queue
}

// DBCommitBuckets are the buckets of qpcd_db_commit_duration_seconds, 0.1 ms
// to 2.5 s: a commit is a WAL write and an fsync.
var DBCommitBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// NewMetrics builds the registry: Go runtime and process collectors,
// qpcd_build_info, qpcd_start_time_seconds, the metrics in Metrics and the
// store gauges that are set (qpcd_db_size_bytes, qpcd_db_write_queue).
func NewMetrics(store *StoreGauges) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qpcd_connections", Help: "Open QUIC connections.",
		}),
		ConnectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_connections_total", Help: "QUIC connection attempts by result (accepted, rejected_limit, rejected_handshake, rejected_draining).",
		}, []string{"result"}),
		RPCs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_rpc_requests_total", Help: "RPCs handled, by method and response status.",
		}, []string{"method", "status"}),
		RPCDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "qpcd_rpc_duration_seconds", Help: "RPC handling time from request frame read to response written, by method.",
			Buckets: RPCDurationBuckets,
		}, []string{"method"}),
		EnqueueMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_enqueue_status_total", Help: "Messages offered for delivery, by the RPC that carried them (Enqueue or EnqueueBatch) and their status: one per message, so a batch of 16 counts 16, each item by its own status (a batch refused before its items are read, malformed or over the item cap, is not counted).",
		}, []string{"rpc", "status"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qpcd_rpc_in_flight", Help: "RPCs being handled now.",
		}),
		FramesRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_frames_rejected_total", Help: "Request frames refused before dispatch, by reason.",
		}, []string{"reason"}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_rate_limited_total", Help: "Requests refused by a rate limit, by scope (ip, account, device: requests per second; account_bytes: payload bytes per second).",
		}, []string{"scope"}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_auth_failures_total", Help: "Failed authentications, by reason.",
		}, []string{"reason"}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qpcd_ready", Help: "1 when qpcd is ready to serve, 0 while starting or draining.",
		}),
		DBCommitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "qpcd_db_commit_duration_seconds", Help: "Time the COMMIT of one write batch took: writing the WAL and flushing it to disk.",
			Buckets: DBCommitBuckets,
		}),
		DBWriteWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "qpcd_db_write_wait_seconds", Help: "Time a write waited for SQLite's single writer, from being queued to the start of its batch (SQLite only).",
			Buckets: DBCommitBuckets,
		}),
		DBCommitWrites: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "qpcd_db_commit_writes", Help: "Write transactions group-committed per batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1 to 256, the batch cap
		}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qpcd_build_info", Help: "Build information; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version.Version, "commit": version.Commit, "goversion": version.GoVersion()},
	})
	buildInfo.Set(1)
	start := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "qpcd_start_time_seconds", Help: "Start time of the qpcd process since the Unix epoch, in seconds.",
	})
	start.Set(float64(time.Now().UnixNano()) / 1e9)

	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo, start,
		m.Connections, m.ConnectionsTotal, m.RPCs, m.RPCDuration, m.EnqueueMessages, m.InFlight,
		m.FramesRejected, m.RateLimited, m.AuthFailures, m.Ready,
		m.DBCommitDuration, m.DBCommitWrites, m.DBWriteWait,
	}
	if store != nil && store.Size != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "qpcd_db_size_bytes", Help: "Size of the database files on disk, in bytes.",
		}, store.Size))
	}
	if store != nil && store.WriteQueue != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "qpcd_db_write_queue", Help: "Write transactions waiting for the database's single writer.",
		}, store.WriteQueue))
	}
	var errs []error
	for _, c := range cs {
		if err := m.Registry.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		m.err = fmt.Errorf("obs: registering metrics: %w", errors.Join(errs...))
	}

	for _, r := range []string{ConnAccepted, ConnRejectedLimit, ConnRejectedHandshake, ConnRejectedDraining} {
		m.ConnectionsTotal.WithLabelValues(r)
	}
	for _, r := range []string{FrameOversized, FrameMalformed, FrameUnsupportedVersion, FrameInvalidArgument} {
		m.FramesRejected.WithLabelValues(r)
	}
	for _, s := range []string{ScopeIP, ScopeAccount, ScopeDevice, ScopeAccountBytes} {
		m.RateLimited.WithLabelValues(s)
	}
	// The delivery SLO's ratios read these from the first scrape.
	for _, rpc := range []string{"Enqueue", "EnqueueBatch"} {
		for _, st := range []string{"ok", "internal", "unavailable"} {
			m.EnqueueMessages.WithLabelValues(rpc, st)
		}
	}
	return m
}

// Err reports a failure to register a collector. It is nil unless this
// package itself is broken (its tests check it); NewMetrics keeps its simple
// signature and does not panic instead.
func (m *Metrics) Err() error { return m.err }

// ObserveRPCDuration records one RPC's latency. When the RPC's trace is
// sampled the observation carries the trace id as an exemplar (served in
// the OpenMetrics format), so a latency panel links to the trace.
func (m *Metrics) ObserveRPCDuration(method string, d time.Duration, sc trace.SpanContext) {
	o := m.RPCDuration.WithLabelValues(method)
	if sc.IsSampled() {
		if eo, ok := o.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(d.Seconds(), prometheus.Labels{"trace_id": sc.TraceID().String()})
			return
		}
	}
	o.Observe(d.Seconds())
}

// ObserveRPC records one finished RPC: the request counter by method and
// status, and the latency histogram by method. A nil *Metrics does nothing.
func (m *Metrics) ObserveRPC(method, status string, d time.Duration) {
	if m == nil {
		return
	}
	m.RPCs.WithLabelValues(method, status).Inc()
	m.RPCDuration.WithLabelValues(method).Observe(d.Seconds())
}
