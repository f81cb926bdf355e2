package obs

import (
	"net/http"
	"net/http/pprof"
)

// WithPprof adds Go's runtime profiles under /debug/pprof/ to an ops
// handler (ops_pprof: on). They have no authentication and show memory
// contents by type and call stacks, so they belong only on a private ops
// address; a CPU or trace profile also costs CPU while it runs.
func WithPprof(ops http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", ops)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
