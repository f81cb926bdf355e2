package server

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Key log methods (issue 19; docs/protocol.md, "Key log").
const (
	MethodGetKeyLogHead        = "GetKeyLogHead"
	MethodGetKeyLogConsistency = "GetKeyLogConsistency"
)

// keyLogCheckEvery is how often each node re-checks the whole log
// (logstore.Verify) for qpcd_keylog_consistent.
const keyLogCheckEvery = 10 * time.Minute

// keyLogPart holds the key log inside Server.
type keyLogPart struct {
	keyLog      *logstore.Log
	keyLogStop  chan struct{}
	keyLogDone  sync.WaitGroup
	keyLogGauge struct {
		consistent prometheus.Gauge
		entries    prometheus.Gauge
		checked    prometheus.Gauge
		failures   prometheus.Counter
	}
}

// KeyLog is the server's key transparency log (tests of malicious servers
// sign forged heads with its key, as a dishonest operator could).
func (s *Server) KeyLog() *logstore.Log { return s.keyLog }

func (s *Server) initKeyLog(ctx context.Context) error {
	l, err := logstore.Open(ctx, logstore.Options{DB: s.db, Logger: s.log, Now: s.now})
	if err != nil {
		return err
	}
	s.keyLog = l
	g := &s.keyLogGauge
	g.consistent = prometheus.NewGauge(prometheus.GaugeOpts{Name: "qpcd_keylog_consistent",
		Help: "1 when this node's last full re-check of the key log found every entry and signed head consistent, 0 when it did not (see the KeyLogInconsistent runbook)."})
	g.entries = prometheus.NewGauge(prometheus.GaugeOpts{Name: "qpcd_keylog_entries", Help: "Entries in the key log at the last re-check."})
	g.checked = prometheus.NewGauge(prometheus.GaugeOpts{Name: "qpcd_keylog_check_timestamp_seconds", Help: "When this node last re-checked the key log (Unix seconds)."})
	g.failures = prometheus.NewCounter(prometheus.CounterOpts{Name: "qpcd_keylog_check_failures_total", Help: "Key log re-checks that found a mismatch or could not run."})
	if s.metrics != nil && s.metrics.Registry != nil {
		for _, c := range []prometheus.Collector{g.consistent, g.entries, g.checked, g.failures} {
			if err := s.metrics.Registry.Register(c); err != nil {
				return err
			}
		}
	}
	s.checkKeyLog(ctx)
	s.keyLogStop = make(chan struct{})
	s.keyLogDone.Add(1)
	go func() {
		defer s.keyLogDone.Done()
		t := time.NewTicker(keyLogCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-s.keyLogStop:
				return
			case <-t.C:
				cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				s.checkKeyLog(cctx)
				cancel()
			}
		}
	}()
	return nil
}

// checkKeyLog re-checks the whole log and sets the metrics.
func (s *Server) checkKeyLog(ctx context.Context) {
	rep, err := logstore.Verify(ctx, s.db)
	g := &s.keyLogGauge
	g.checked.Set(float64(s.now().Unix()))
	switch {
	case err != nil:
		g.failures.Inc()
		s.log.Error("keylog: re-check could not run", "err", err)
	case !rep.OK:
		g.failures.Inc()
		g.consistent.Set(0)
		g.entries.Set(float64(rep.Entries))
		s.log.Error("keylog: the key log is not consistent; run qpcctl keylog verify", "problems", len(rep.Problems), "first", rep.Problems[0])
	default:
		g.consistent.Set(1)
		g.entries.Set(float64(rep.Entries))
	}
}

func (s *Server) closeKeyLog() error {
	if s.keyLogStop != nil {
		close(s.keyLogStop)
		s.keyLogDone.Wait()
		s.keyLogStop = nil
	}
	return nil
}

func (s *Server) registerKeyLog(t map[string]*method) {
	// With a token, like every lookup: the rate limits per account apply,
	// and a client pins the log key right after its first login.
	register(t, MethodGetKeyLogHead, false, s.getKeyLogHead)
	register(t, MethodGetKeyLogConsistency, false, s.getKeyLogConsistency)
}

func (s *Server) getKeyLogHead(ctx context.Context, _ *Call, _ *qpcv1.GetKeyLogHeadRequest) (*qpcv1.GetKeyLogHeadResponse, error) {
	h, err := s.keyLog.Head(ctx)
	if err != nil {
		return nil, err
	}
	return &qpcv1.GetKeyLogHeadResponse{TreeHead: h.Marshal(), LogPublicKey: s.keyLog.PublicKey()}, nil
}

func (s *Server) getKeyLogConsistency(ctx context.Context, _ *Call, req *qpcv1.GetKeyLogConsistencyRequest) (*qpcv1.GetKeyLogConsistencyResponse, error) {
	h, p, err := s.keyLog.Consistency(ctx, req.GetFromSize(), req.GetToSize())
	if err != nil {
		return nil, err
	}
	return &qpcv1.GetKeyLogConsistencyResponse{TreeHead: h.Marshal(), Proof: p}, nil
}

// keyLogInclusion proves an account's identity key and its devices'
// certificates for a lookup's answer.
func (s *Server) keyLogInclusion(ctx context.Context, account string, deviceIDs []string) (*qpcv1.KeyLogInclusion, error) {
	ap, err := s.keyLog.ProveAccount(ctx, account, deviceIDs)
	if err != nil {
		return nil, wire.Errorf(qpcv1.Status_STATUS_INTERNAL, "key log: %v", err)
	}
	out := &qpcv1.KeyLogInclusion{TreeHead: ap.Head.Marshal()}
	conv := func(p *logstore.Proof) *qpcv1.KeyLogProof {
		return &qpcv1.KeyLogProof{Index: p.Index, Entry: p.Entry, Path: p.Path}
	}
	if ap.Identity != nil {
		out.Identity = conv(ap.Identity)
	}
	if len(ap.Devices) > 0 {
		out.Devices = map[string]*qpcv1.KeyLogProof{}
		for d, p := range ap.Devices {
			out.Devices[d] = conv(p)
		}
	}
	return out, nil
}
