package obs

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewOpsHandler serves the ops endpoints:
//
//	GET /metrics  Prometheus exposition of m.Registry
//	GET /healthz  200 "ok" while the process serves HTTP at all (liveness)
//	GET /readyz   200 "ready" when ready() returns nil, else 503 and the reason
//
// A nil ready counts as always ready. HEAD is accepted wherever GET is.
func NewOpsHandler(m *Metrics, ready func() error) http.Handler {
	mux := http.NewServeMux()
	if m != nil && m.Registry != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
			ErrorHandling: promhttp.ContinueOnError,
			// A scraper that asks for OpenMetrics (Prometheus does) gets
			// the latency exemplars with their trace ids; others get the
			// text format, without exemplars, as before.
			EnableOpenMetrics: true,
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				writeText(w, http.StatusServiceUnavailable, "not ready: "+oneLine(err.Error()))
				return
			}
		}
		writeText(w, http.StatusOK, "ready")
	})
	return mux
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body + "\n"))
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
