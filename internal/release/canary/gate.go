package canary

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// errorStatuses are the qpcd_rpc_requests_total statuses the gate counts as
// errors: the server's own failures, as in the SLO rules of ops/alerts
// (internal, unavailable), plus statuses qpcd should never answer
// (unspecified, unknown numbers). Client mistakes (invalid_argument,
// unauthenticated, not_found, stale_epoch, ...), rate limiting and draining
// are not errors of the release.
func errorStatus(status string) bool {
	switch status {
	case "internal", "unavailable", "unspecified":
		return true
	}
	return strings.HasPrefix(status, "status_")
}

// latencyExcluded are methods left out of the p99, as in the SLO rules:
// FetchWait is a long poll (it waits up to its cap by design) and Ping is
// trivial.
func latencyExcluded(method string) bool { return method == "FetchWait" || method == "Ping" }

// Sample is what the gate reads from one scrape of qpcd's /metrics.
type Sample struct {
	Version   string              // qpcd_build_info{version}
	StartTime float64             // qpcd_start_time_seconds: tells processes apart
	Requests  float64             // qpcd_rpc_requests_total, all statuses
	Errors    float64             // qpcd_rpc_requests_total with an error status
	Buckets   map[float64]float64 // qpcd_rpc_duration_seconds cumulative buckets (upper bound -> count), excluded methods left out
	Count     float64             // qpcd_rpc_duration_seconds_count, excluded methods left out
}

// ParseMetrics reads a Prometheus text exposition.
func ParseMetrics(r io.Reader) (Sample, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Sample{}, fmt.Errorf("%w: parse /metrics: %v", ErrScrape, err)
	}
	s := Sample{Buckets: map[float64]float64{}}
	if mf := mfs["qpcd_build_info"]; mf != nil && len(mf.GetMetric()) > 0 {
		s.Version = label(mf.GetMetric()[0], "version")
	}
	if mf := mfs["qpcd_start_time_seconds"]; mf != nil && len(mf.GetMetric()) > 0 {
		s.StartTime = mf.GetMetric()[0].GetGauge().GetValue()
	}
	if mf := mfs["qpcd_rpc_requests_total"]; mf != nil {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue()
			s.Requests += v
			if errorStatus(label(m, "status")) {
				s.Errors += v
			}
		}
	}
	if mf := mfs["qpcd_rpc_duration_seconds"]; mf != nil {
		for _, m := range mf.GetMetric() {
			if latencyExcluded(label(m, "method")) {
				continue
			}
			h := m.GetHistogram()
			s.Count += float64(h.GetSampleCount())
			for _, b := range h.GetBucket() {
				s.Buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
			}
		}
	}
	if s.Version == "" {
		return s, fmt.Errorf("%w: no qpcd_build_info in /metrics (is the ops URL qpcd's?)", ErrScrape)
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Measure is the gate's verdict inputs over the bake: deltas between two samples.
type Measure struct {
	Requests   float64 `json:"requests"`
	Errors     float64 `json:"errors"`
	ErrorRatio float64 `json:"error_ratio"`
	// P99Seconds is estimated from the histogram buckets like PromQL's
	// histogram_quantile (linear inside the bucket); -1 when no RPC was timed.
	P99Seconds float64 `json:"p99_seconds"`
	Timed      float64 `json:"timed_requests"`
}

// Delta measures what happened between from and to (one process: the caller
// checks the start times).
func Delta(from, to Sample) Measure {
	m := Measure{Requests: to.Requests - from.Requests, Errors: to.Errors - from.Errors, Timed: to.Count - from.Count, P99Seconds: -1}
	if m.Requests > 0 {
		m.ErrorRatio = m.Errors / m.Requests
	}
	if m.Timed > 0 {
		bounds := make([]float64, 0, len(to.Buckets))
		for b := range to.Buckets {
			bounds = append(bounds, b)
		}
		sort.Float64s(bounds)
		cum := make([]float64, len(bounds))
		for i, b := range bounds {
			cum[i] = to.Buckets[b] - from.Buckets[b]
		}
		m.P99Seconds = quantile(0.99, bounds, cum, m.Timed)
	}
	return m
}

// quantile follows histogram_quantile: find the bucket holding rank q*total
// and interpolate linearly between its lower and upper bound. Above the
// highest finite bucket it returns that bucket's bound.
func quantile(q float64, bounds, cum []float64, total float64) float64 {
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range bounds {
		if cum[i] >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			in := cum[i] - below
			if in <= 0 {
				return b
			}
			return lower + (b-lower)*(rank-below)/in
		}
		lower, below = b, cum[i]
	}
	return lower
}

// Thresholds are the gate's limits.
type Thresholds struct {
	MaxErrorRatio float64       // default 0.01
	MaxP99        time.Duration // default 500ms
}

// check says why m fails the thresholds ("" when it passes).
func (t Thresholds) check(m Measure) string {
	var why []string
	if m.Requests > 0 && m.ErrorRatio > t.MaxErrorRatio {
		why = append(why, fmt.Sprintf("RPC error ratio %.4f (%.0f of %.0f) above --max-error-ratio %.4f", m.ErrorRatio, m.Errors, m.Requests, t.MaxErrorRatio))
	}
	if m.P99Seconds >= 0 && m.P99Seconds > t.MaxP99.Seconds() {
		why = append(why, fmt.Sprintf("RPC p99 %s above --max-p99 %s", secs(m.P99Seconds), t.MaxP99))
	}
	return strings.Join(why, "; ")
}

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}

// opsProbe reads /readyz and /metrics from qpcd's ops listener.
type opsProbe struct {
	base string
	hc   *http.Client
}

// ready returns nil when /readyz answers 200, else why not.
func (o opsProbe) ready(ctx context.Context) error {
	body, code, err := o.get(ctx, "/readyz", "")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("/readyz answered %d: %s", code, oneLine(body))
	}
	return nil
}

func (o opsProbe) scrape(ctx context.Context) (Sample, error) {
	body, code, err := o.get(ctx, "/metrics", "text/plain;version=0.0.4")
	if err != nil {
		return Sample{}, err
	}
	if code != http.StatusOK {
		return Sample{}, fmt.Errorf("%w: /metrics answered %d", ErrScrape, code)
	}
	return ParseMetrics(strings.NewReader(body))
}

func (o opsProbe) get(ctx context.Context, path, accept string) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.base+path, nil)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %v (check --ops-url)", ErrScrape, err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := o.hc.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("%w: GET %s%s: %v", ErrScrape, o.base, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return "", 0, fmt.Errorf("%w: GET %s%s: %v", ErrScrape, o.base, path, err)
	}
	return string(b), resp.StatusCode, nil
}
