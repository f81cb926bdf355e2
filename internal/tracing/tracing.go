// Package tracing sets up OpenTelemetry distributed tracing for qpcd, qpc
// and qpcctl (OTLP over gRPC or HTTP, off by default) and holds the one
// allow-list of span attributes, so no token, key, ciphertext or account
// name can reach a trace.
package tracing

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/credentials"
)

// Protocols of Config.Protocol.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http"
)

// ErrConfig is returned for a tracing setting that cannot work.
var ErrConfig = errors.New("tracing: invalid configuration")

// Config says where spans go. The zero value (no endpoint) turns tracing off.
type Config struct {
	// Endpoint of the OTLP collector: "host:4317" (gRPC), or an
	// "http://host:4318" / "https://host:4318" URL; "" turns tracing off.
	Endpoint string
	// Protocol is grpc or http; "" picks http for an http(s):// endpoint
	// and grpc otherwise.
	Protocol string
	// SampleRatio is the share of new traces recorded, 0..1. A trace that
	// arrives sampled from a client stays sampled (parent-based).
	SampleRatio float64
	// CAFile is a PEM bundle verifying the collector's certificate; set,
	// it turns TLS on even for a bare host:port endpoint.
	CAFile string
	// ServiceName is service.name (qpcd, qpc, qpcctl).
	ServiceName string
	// NodeID and Version are resource attributes (qpc.node_id,
	// service.version); NodeID may be empty.
	NodeID, Version string
	// Log receives the exporter's errors (an unreachable collector) at
	// warn level, at most one per export interval; nil drops them (the
	// CLIs: a user's terminal is not the place).
	Log *slog.Logger
}

// Enabled reports whether c sends spans anywhere.
func (c Config) Enabled() bool { return strings.TrimSpace(c.Endpoint) != "" }

// Validate checks the settings without contacting the collector.
func (c Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	switch c.Protocol {
	case "", ProtocolGRPC, ProtocolHTTP:
	default:
		return fmt.Errorf("%w: protocol %q (want grpc or http)", ErrConfig, c.Protocol)
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 || c.SampleRatio != c.SampleRatio {
		return fmt.Errorf("%w: sample ratio %v (want 0..1)", ErrConfig, c.SampleRatio)
	}
	if _, _, err := c.target(); err != nil {
		return err
	}
	return nil
}

// target returns the protocol and whether the connection uses TLS.
func (c Config) target() (proto string, secure bool, err error) {
	ep := strings.TrimSpace(c.Endpoint)
	isURL := strings.Contains(ep, "://")
	if isURL {
		u, perr := url.Parse(ep)
		if perr != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return "", false, fmt.Errorf("%w: endpoint %q (want host:port or an http(s):// URL)", ErrConfig, ep)
		}
		secure = u.Scheme == "https"
	} else if !strings.Contains(ep, ":") {
		return "", false, fmt.Errorf("%w: endpoint %q (want host:port or an http(s):// URL)", ErrConfig, ep)
	}
	proto = c.Protocol
	if proto == "" {
		proto = ProtocolGRPC
		if isURL {
			proto = ProtocolHTTP
		}
	}
	return proto, secure || c.CAFile != "", nil
}

// Provider owns the tracer provider of one process. A nil or disabled
// Provider hands out a no-op tracer.
type Provider struct {
	sdk    *sdktrace.TracerProvider // nil when tracing is off
	tracer trace.Tracer
}

// InstrumentationName names the tracer of every qpc span.
const InstrumentationName = "github.com/quicprochat/quicprochat"

// Setup builds the exporter and provider for c. With tracing off it
// returns a Provider whose tracer does nothing and costs nothing.
func Setup(ctx context.Context, c Config) (*Provider, error) {
	if !c.Enabled() {
		return &Provider{tracer: noop.NewTracerProvider().Tracer(InstrumentationName)}, nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	exp, err := newExporter(ctx, c)
	if err != nil {
		return nil, err
	}
	// The SDK reports export failures through one process-wide handler;
	// the default prints unstructured lines on stderr.
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: spans not exported", "endpoint", redactEndpoint(c.Endpoint), "err", err)
	}))
	attrs := []attribute.KeyValue{
		attribute.String("service.name", c.ServiceName),
		attribute.String("service.version", c.Version),
	}
	if c.NodeID != "" {
		attrs = append(attrs, attribute.String("qpc.node_id", c.NodeID))
	}
	res := resource.NewSchemaless(attrs...)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SampleRatio))),
	)
	return &Provider{sdk: tp, tracer: tp.Tracer(InstrumentationName)}, nil
}

// NewWithProcessor is a Provider over a given span processor (tests: an
// in-memory recorder) that samples every trace.
func NewWithProcessor(sp sdktrace.SpanProcessor, res map[string]string) *Provider {
	var attrs []attribute.KeyValue
	for k, v := range res {
		attrs = append(attrs, attribute.String(k, v))
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSpanProcessor(sp),
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
	)
	return &Provider{sdk: tp, tracer: tp.Tracer(InstrumentationName)}
}

func newExporter(ctx context.Context, c Config) (sdktrace.SpanExporter, error) {
	proto, secure, err := c.target()
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if secure {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: ca file: %w", ErrConfig, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: ca file %s holds no PEM certificate", ErrConfig, c.CAFile)
			}
			tlsCfg.RootCAs = pool
		}
	}
	ep := strings.TrimSpace(c.Endpoint)
	isURL := strings.Contains(ep, "://")
	switch proto {
	case ProtocolHTTP:
		opts := []otlptracehttp.Option{otlptracehttp.WithTimeout(10 * time.Second)}
		if isURL {
			opts = append(opts, otlptracehttp.WithEndpointURL(withTracesPath(ep)))
		} else {
			opts = append(opts, otlptracehttp.WithEndpoint(ep))
		}
		if tlsCfg != nil {
			opts = append(opts, otlptracehttp.WithTLSClientConfig(tlsCfg))
		} else {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		return otlptracehttp.New(ctx, opts...)
	default:
		opts := []otlptracegrpc.Option{otlptracegrpc.WithTimeout(10 * time.Second)}
		if isURL {
			u, _ := url.Parse(ep)
			ep = u.Host
		}
		opts = append(opts, otlptracegrpc.WithEndpoint(ep))
		if tlsCfg != nil {
			opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(tlsCfg)))
		} else {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		return otlptracegrpc.New(ctx, opts...)
	}
}

// redactEndpoint drops a password from an endpoint URL before logging.
func redactEndpoint(ep string) string {
	u, err := url.Parse(ep)
	if err != nil || u.User == nil {
		return ep
	}
	return u.Redacted()
}

// withTracesPath adds OTLP/HTTP's /v1/traces to a URL without a path, so
// "http://host:4318" works as operators write it.
func withTracesPath(ep string) string {
	u, err := url.Parse(ep)
	if err != nil || (u.Path != "" && u.Path != "/") {
		return ep
	}
	u.Path = "/v1/traces"
	return u.String()
}

// Tracer returns the process's tracer (a no-op one when tracing is off).
func (p *Provider) Tracer() trace.Tracer {
	if p == nil || p.tracer == nil {
		return noop.NewTracerProvider().Tracer(InstrumentationName)
	}
	return p.tracer
}

// Enabled reports whether spans are recorded and exported.
func (p *Provider) Enabled() bool { return p != nil && p.sdk != nil }

// Shutdown flushes the spans still queued and stops the exporter; qpcd
// calls it after draining on SIGTERM, the CLIs before they exit.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil || p.sdk == nil {
		return nil
	}
	return p.sdk.Shutdown(ctx)
}

// ForceFlush exports every span ended so far.
func (p *Provider) ForceFlush(ctx context.Context) error {
	if p == nil || p.sdk == nil {
		return nil
	}
	return p.sdk.ForceFlush(ctx)
}

// Start begins a child span of the span in ctx. When that span is not
// recording (tracing off, or the trace not sampled) it returns ctx and a
// non-recording span without allocating: the hot path pays nothing.
func Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		// Not the parent itself: a caller's End must not reach it.
		return ctx, nonRecording
	}
	return parent.TracerProvider().Tracer(InstrumentationName).Start(ctx, name, opts...)
}

// nonRecording is the span Start returns when there is nothing to record.
var nonRecording trace.Span = noop.Span{}

// Set adds attributes to span, dropping any whose key is not on the
// allow-list (Allowed); a non-recording span costs one call.
func Set(span trace.Span, kv ...attribute.KeyValue) {
	if !span.IsRecording() {
		return
	}
	for _, a := range kv {
		if Allowed(string(a.Key)) {
			span.SetAttributes(a)
		}
	}
}

// Fail marks span as failed with a status name (never an error's text,
// which can name an account or echo input).
func Fail(span trace.Span, status string) {
	if !span.IsRecording() {
		return
	}
	span.SetStatus(codes.Error, status)
}

// Propagator is the W3C trace-context propagator used on the wire.
var propagator = propagation.TraceContext{}

// Inject returns the W3C traceparent and tracestate of the span in ctx
// ("" when there is no valid span context).
func Inject(ctx context.Context) (traceparent, tracestate string) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return "", ""
	}
	c := carrier{}
	propagator.Inject(ctx, c)
	return c["traceparent"], c["tracestate"]
}

// Extract returns ctx carrying the remote span context of traceparent and
// tracestate; malformed values are ignored (a new trace starts).
func Extract(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagator.Extract(ctx, carrier{"traceparent": traceparent, "tracestate": tracestate})
}

// SpanContext parses a stored traceparent (with its tracestate) into a
// span context; ok is false for "" or a malformed value.
func SpanContext(traceparent, tracestate string) (trace.SpanContext, bool) {
	sc := trace.SpanContextFromContext(Extract(context.Background(), traceparent, tracestate))
	return sc, sc.IsValid()
}

type carrier map[string]string

func (c carrier) Get(k string) string { return c[k] }
func (c carrier) Set(k, v string)     { c[k] = v }
func (c carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
