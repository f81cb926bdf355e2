package server

import (
	"context"
	"time"

	"github.com/quicprochat/quicprochat/internal/version"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Method names, as carried in the request envelope.
const (
	MethodPing = "Ping"
)

func (s *Server) registerMethods(t map[string]*method) {
	register(t, MethodPing, true, s.ping)
	s.registerAuth(t)
	s.registerDirectory(t)
	s.registerDelivery(t)
	s.registerKeyLog(t)
}

// ping echoes, optionally after holding the reply (capped at the long-poll
// cap) so drills can keep an RPC in flight.
func (s *Server) ping(ctx context.Context, _ *Call, req *qpcv1.PingRequest) (*qpcv1.PingResponse, error) {
	if hold := min(time.Duration(req.GetHoldMs())*time.Millisecond, s.cfg.Limits.LongPollMax); hold > 0 {
		t := time.NewTimer(hold)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	return &qpcv1.PingResponse{
		Echo:             req.GetEcho(),
		ServerTimeUnixMs: s.now().UnixMilli(),
		ServerVersion:    version.Version,
		ProtocolVersion:  wire.ProtocolVersion,
		MlsPolicy:        s.mlsPolicy(),
		Features:         features,
	}, nil
}

// FeatureRatchetTree is the PingResponse feature of a server that stores
// the ratchet tree sent beside a GroupInfo (EnqueueRequest.ratchet_tree)
// and returns it (GetGroupInfoResponse.ratchet_tree).
const FeatureRatchetTree = "ratchet_tree"

// features are the optional features PingResponse announces.
var features = []string{FeatureRatchetTree}

// mlsPolicy is the directory's cipher-suite policy for PingResponse.
func (s *Server) mlsPolicy() *qpcv1.MLSPolicy {
	p := s.keydir.Policy()
	out := &qpcv1.MLSPolicy{MinimumSuite: uint32(p.Minimum)}
	for _, id := range p.Allowed {
		out.AllowedSuites = append(out.AllowedSuites, uint32(id))
	}
	return out
}
