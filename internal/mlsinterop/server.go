package mlsinterop

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicprochat/quicprochat/internal/mls"
	pb "github.com/quicprochat/quicprochat/internal/mlsinterop/mlsclientpb"
)

// Server is the MLSClient service. States, transactions (KeyPackages
// waiting for a Welcome), ReInits and external signers live in memory,
// numbered from one counter.
type Server struct {
	pb.UnimplementedMLSClientServer

	mu      sync.Mutex
	next    uint32
	states  map[uint32]*state
	txs     map[uint32]*transaction
	reinits map[uint32]*reinit
	signers map[uint32]*signer
	suites  []mls.CipherSuiteID
}

type pskMap map[string][]byte

func (m pskMap) store() mls.PSKStore {
	return func(id []byte) (mls.Secret, bool) {
		p, ok := m[string(id)]
		return mls.NewSecret(p), ok
	}
}

type state struct {
	g    *mls.Group
	psks pskMap
}

type transaction struct {
	bundle *mls.KeyPackageBundle
	psks   pskMap
}

type reinit struct {
	old    *mls.Group
	bundle *mls.KeyPackageBundle
	psks   pskMap
}

type signer struct {
	suite    mls.CipherSuiteID
	priv     mls.SignaturePrivateKey
	identity []byte
}

// NewServer returns a server advertising every cipher suite internal/mls
// implements (the seven of RFC 9420 and the X-Wing hybrids).
func NewServer() *Server {
	return NewServerWithSuites(mls.SuiteIDs())
}

// NewServerWithSuites returns a server advertising only suites (for a
// shorter harness run).
func NewServerWithSuites(suites []mls.CipherSuiteID) *Server {
	return &Server{
		states: map[uint32]*state{}, txs: map[uint32]*transaction{}, reinits: map[uint32]*reinit{}, signers: map[uint32]*signer{},
		suites: append([]mls.CipherSuiteID(nil), suites...),
	}
}

func (s *Server) id() uint32 { s.next++; return s.next }

// config is the library configuration of every state: the advertised
// suites, and ReInits to any of them (the harness's change_ciphersuite
// picks any other suite; RFC 9420 §12.1.5 allows it, the product does not).
func (s *Server) config(encrypt bool, psks pskMap) mls.Config {
	return mls.Config{AllowedSuites: s.suites, PublicHandshake: !encrypt, PSKs: psks.store(), SkipLifetimeCheck: true, AllowWeakerReInit: true}
}

// fail maps a library error to a gRPC status.
func fail(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	switch {
	case errors.Is(err, mls.ErrUnsupported), errors.Is(err, mls.ErrUnsupportedCipherSuite):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, mls.ErrDecode), errors.Is(err, mls.ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Aborted, err.Error())
}

func (s *Server) state(id uint32) (*state, error) {
	st, ok := s.states[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no state %d", id)
	}
	return st, nil
}

func (s *Server) suite(id uint32) (*mls.CipherSuite, error) {
	for _, x := range s.suites {
		if uint32(x) == id {
			return mls.Suite(x)
		}
	}
	return nil, status.Errorf(codes.Unimplemented, "cipher suite %d not supported", id)
}

func (s *Server) addState(g *mls.Group, psks pskMap) uint32 {
	id := s.id()
	s.states[id] = &state{g: g, psks: psks}
	return id
}

func marshalKP(kp *mls.KeyPackage) ([]byte, error) {
	return (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}).Marshal()
}

func decodeKP(raw []byte) (*mls.KeyPackage, error) {
	var m mls.MLSMessage
	if err := m.Unmarshal(raw); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "key package: %v", err)
	}
	if m.WireFormat != mls.WireFormatKeyPackage {
		return nil, status.Error(codes.InvalidArgument, "not a KeyPackage")
	}
	return m.KeyPackage, nil
}

func newBundle(su *mls.CipherSuite, identity []byte) (*mls.KeyPackageBundle, error) {
	sig, _, err := su.GenerateSignatureKey()
	if err != nil {
		return nil, err
	}
	return mls.GenerateKeyPackage(su.ID(), identity, sig, mls.KeyPackageOptions{})
}

func treeBytes(rt mls.RatchetTree) ([]byte, error) { return rt.Marshal() }

func decodeTree(b []byte) (mls.RatchetTree, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var rt mls.RatchetTree
	if err := rt.Unmarshal(b); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "ratchet tree: %v", err)
	}
	return rt, nil
}

func extensions(l []*pb.Extension) []mls.Extension {
	out := make([]mls.Extension, 0, len(l))
	for _, x := range l {
		out = append(out, mls.Extension{Type: mls.ExtensionType(x.GetExtensionType()), Data: x.GetExtensionData()})
	}
	return out
}

// Name implements MLSClient.
func (s *Server) Name(context.Context, *pb.NameRequest) (*pb.NameResponse, error) {
	return &pb.NameResponse{Name: "quicprochat"}, nil
}

// SupportedCiphersuites implements MLSClient.
func (s *Server) SupportedCiphersuites(context.Context, *pb.SupportedCiphersuitesRequest) (*pb.SupportedCiphersuitesResponse, error) {
	out := &pb.SupportedCiphersuitesResponse{}
	for _, x := range s.suites {
		out.Ciphersuites = append(out.Ciphersuites, uint32(x))
	}
	return out, nil
}

// CreateGroup implements MLSClient.
func (s *Server) CreateGroup(_ context.Context, r *pb.CreateGroupRequest) (*pb.CreateGroupResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	su, err := s.suite(r.GetCipherSuite())
	if err != nil {
		return nil, err
	}
	sig, _, err := su.GenerateSignatureKey()
	if err != nil {
		return nil, fail(err)
	}
	psks := pskMap{}
	g, err := mls.CreateGroup(s.config(r.GetEncryptHandshake(), psks), r.GetGroupId(), su.ID(), r.GetIdentity(), sig, mls.GroupOptions{})
	if err != nil {
		return nil, fail(err)
	}
	return &pb.CreateGroupResponse{StateId: s.addState(g, psks)}, nil
}

// CreateKeyPackage implements MLSClient.
func (s *Server) CreateKeyPackage(_ context.Context, r *pb.CreateKeyPackageRequest) (*pb.CreateKeyPackageResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	su, err := s.suite(r.GetCipherSuite())
	if err != nil {
		return nil, err
	}
	b, err := newBundle(su, r.GetIdentity())
	if err != nil {
		return nil, fail(err)
	}
	kp, err := marshalKP(&b.KeyPackage)
	if err != nil {
		return nil, fail(err)
	}
	id := s.id()
	s.txs[id] = &transaction{bundle: b, psks: pskMap{}}
	return &pb.CreateKeyPackageResponse{TransactionId: id, KeyPackage: kp, InitPriv: b.InitPriv.Bytes(),
		EncryptionPriv: b.EncryptionPriv.Bytes(), SignaturePriv: b.SignaturePriv.Bytes()}, nil
}

// JoinGroup implements MLSClient.
func (s *Server) JoinGroup(_ context.Context, r *pb.JoinGroupRequest) (*pb.JoinGroupResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, ok := s.txs[r.GetTransactionId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no transaction %d", r.GetTransactionId())
	}
	rt, err := decodeTree(r.GetRatchetTree())
	if err != nil {
		return nil, err
	}
	g, err := mls.JoinFromWelcome(s.config(r.GetEncryptHandshake(), tx.psks), r.GetWelcome(), tx.bundle, mls.JoinOptions{RatchetTree: rt})
	if err != nil {
		return nil, fail(err)
	}
	return &pb.JoinGroupResponse{StateId: s.addState(g, tx.psks), EpochAuthenticator: g.EpochAuthenticator()}, nil
}

// ExternalJoin implements MLSClient.
func (s *Server) ExternalJoin(_ context.Context, r *pb.ExternalJoinRequest) (*pb.ExternalJoinResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gc, err := mls.GroupInfoContext(r.GetGroupInfo())
	if err != nil {
		return nil, fail(err)
	}
	su, err := s.suite(uint32(gc.CipherSuite))
	if err != nil {
		return nil, err
	}
	rt, err := decodeTree(r.GetRatchetTree())
	if err != nil {
		return nil, err
	}
	psks := pskMap{}
	var ids [][]byte
	for _, p := range r.GetPsks() {
		psks[string(p.GetPskId())] = p.GetPskSecret()
		ids = append(ids, p.GetPskId())
	}
	sig, _, err := su.GenerateSignatureKey()
	if err != nil {
		return nil, fail(err)
	}
	g, commit, err := mls.JoinExternal(s.config(r.GetEncryptHandshake(), psks), r.GetGroupInfo(), r.GetIdentity(), sig,
		mls.ExternalJoinOptions{RatchetTree: rt, RemovePrior: r.GetRemovePrior(), PSKs: ids})
	if err != nil {
		return nil, fail(err)
	}
	return &pb.ExternalJoinResponse{StateId: s.addState(g, psks), Commit: commit, EpochAuthenticator: g.EpochAuthenticator()}, nil
}

// GroupInfo implements MLSClient.
func (s *Server) GroupInfo(_ context.Context, r *pb.GroupInfoRequest) (*pb.GroupInfoResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	gi, err := st.g.GroupInfoWithOptions(!r.GetExternalTree())
	if err != nil {
		return nil, fail(err)
	}
	out := &pb.GroupInfoResponse{GroupInfo: gi}
	if r.GetExternalTree() {
		if out.RatchetTree, err = treeBytes(st.g.RatchetTree()); err != nil {
			return nil, fail(err)
		}
	}
	return out, nil
}

// StateAuth implements MLSClient.
func (s *Server) StateAuth(_ context.Context, r *pb.StateAuthRequest) (*pb.StateAuthResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	return &pb.StateAuthResponse{StateAuthSecret: st.g.EpochAuthenticator()}, nil
}

// Export implements MLSClient.
func (s *Server) Export(_ context.Context, r *pb.ExportRequest) (*pb.ExportResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	sec, err := st.g.ExportSecret(r.GetLabel(), r.GetContext(), int(r.GetKeyLength()))
	if err != nil {
		return nil, fail(err)
	}
	return &pb.ExportResponse{ExportedSecret: append([]byte(nil), sec.Bytes()...)}, nil
}

// Protect implements MLSClient.
func (s *Server) Protect(_ context.Context, r *pb.ProtectRequest) (*pb.ProtectResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	ct, err := st.g.Protect(r.GetPlaintext(), r.GetAuthenticatedData())
	if err != nil {
		return nil, fail(err)
	}
	return &pb.ProtectResponse{Ciphertext: ct}, nil
}

// Unprotect implements MLSClient.
func (s *Server) Unprotect(_ context.Context, r *pb.UnprotectRequest) (*pb.UnprotectResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	p, err := st.g.ProcessMessage(r.GetCiphertext())
	if err != nil {
		return nil, fail(err)
	}
	if p.Kind != mls.KindApplication {
		return nil, status.Error(codes.InvalidArgument, "not an application message")
	}
	return &pb.UnprotectResponse{AuthenticatedData: p.AuthenticatedData, Plaintext: p.ApplicationData}, nil
}

// StorePSK implements MLSClient.
func (s *Server) StorePSK(_ context.Context, r *pb.StorePSKRequest) (*pb.StorePSKResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.GetStateOrTransactionId()
	var m pskMap
	switch {
	case s.states[id] != nil:
		m = s.states[id].psks
	case s.txs[id] != nil:
		m = s.txs[id].psks
	case s.reinits[id] != nil:
		m = s.reinits[id].psks
	default:
		return nil, status.Errorf(codes.NotFound, "no state or transaction %d", id)
	}
	m[string(r.GetPskId())] = append([]byte(nil), r.GetPskSecret()...)
	return &pb.StorePSKResponse{}, nil
}

// propose sends p from state id.
func (s *Server) propose(id uint32, p *mls.Proposal) (*pb.ProposalResponse, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, err
	}
	msg, err := st.g.Propose(p, nil)
	if err != nil {
		return nil, fail(err)
	}
	return &pb.ProposalResponse{Proposal: msg}, nil
}

// AddProposal implements MLSClient.
func (s *Server) AddProposal(_ context.Context, r *pb.AddProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kp, err := decodeKP(r.GetKeyPackage())
	if err != nil {
		return nil, err
	}
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
}

// UpdateProposal implements MLSClient.
func (s *Server) UpdateProposal(_ context.Context, r *pb.UpdateProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	p, err := st.g.UpdateProposal()
	if err != nil {
		return nil, fail(err)
	}
	return s.propose(r.GetStateId(), p)
}

// RemoveProposal implements MLSClient.
func (s *Server) RemoveProposal(_ context.Context, r *pb.RemoveProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	l, ok := st.g.MemberByIdentity(r.GetRemovedId())
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "no member %q", r.GetRemovedId())
	}
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: l}})
}

// ExternalPSKProposal implements MLSClient.
func (s *Server) ExternalPSKProposal(_ context.Context, r *pb.ExternalPSKProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: st.g.ExternalPSK(r.GetPskId())}})
}

// ResumptionPSKProposal implements MLSClient.
func (s *Server) ResumptionPSKProposal(_ context.Context, r *pb.ResumptionPSKProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: st.g.ResumptionPSKID(r.GetEpochId())}})
}

// GroupContextExtensionsProposal implements MLSClient.
func (s *Server) GroupContextExtensionsProposal(_ context.Context, r *pb.GroupContextExtensionsProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypeGroupContextExtensions,
		GroupContextExtensions: &mls.GroupContextExtensions{Extensions: extensions(r.GetExtensions())}})
}

// ReInitProposal implements MLSClient.
func (s *Server) ReInitProposal(_ context.Context, r *pb.ReInitProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.suite(r.GetCipherSuite()); err != nil {
		return nil, err
	}
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypeReInit, ReInit: &mls.ReInit{
		GroupID: r.GetGroupId(), Version: mls.ProtocolVersionMLS10, CipherSuite: mls.CipherSuiteID(r.GetCipherSuite()), Extensions: extensions(r.GetExtensions())}})
}

// describe turns a ProposalDescription into a proposal for group g, or,
// when g is nil (an external sender), for the group whose context gc is.
func describe(g *mls.Group, gc *mls.GroupContext, d *pb.ProposalDescription) (*mls.Proposal, error) {
	switch string(d.GetProposalType()) {
	case "add":
		kp, err := decodeKP(d.GetKeyPackage())
		if err != nil {
			return nil, err
		}
		return &mls.Proposal{Type: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}}, nil
	case "remove":
		if g == nil {
			return nil, status.Error(codes.Unimplemented, "remove by identity needs the group")
		}
		l, ok := g.MemberByIdentity(d.GetRemovedId())
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "no member %q", d.GetRemovedId())
		}
		return &mls.Proposal{Type: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: l}}, nil
	case "externalPSK":
		if g == nil {
			// An external sender (RFC 9420 §12.1.8) builds the PSK ID
			// from the GroupInfo's context: the nonce is Nh random bytes
			// of the group's suite (§8.4).
			id, err := pskIDFor(gc, mls.PreSharedKeyID{Type: mls.PSKTypeExternal, PSKID: d.GetPskId()})
			if err != nil {
				return nil, err
			}
			return &mls.Proposal{Type: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: id}}, nil
		}
		return &mls.Proposal{Type: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: g.ExternalPSK(d.GetPskId())}}, nil
	case "resumptionPSK":
		if g == nil {
			id, err := pskIDFor(gc, mls.PreSharedKeyID{Type: mls.PSKTypeResumption, Usage: mls.ResumptionPSKUsageApplication,
				PSKGroupID: gc.GroupID, PSKEpoch: d.GetEpochId()})
			if err != nil {
				return nil, err
			}
			return &mls.Proposal{Type: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: id}}, nil
		}
		return &mls.Proposal{Type: mls.ProposalTypePSK, PreSharedKey: &mls.PreSharedKey{PSK: g.ResumptionPSKID(d.GetEpochId())}}, nil
	case "groupContextExtensions":
		return &mls.Proposal{Type: mls.ProposalTypeGroupContextExtensions, GroupContextExtensions: &mls.GroupContextExtensions{Extensions: extensions(d.GetExtensions())}}, nil
	case "reinit":
		return &mls.Proposal{Type: mls.ProposalTypeReInit, ReInit: &mls.ReInit{GroupID: d.GetGroupId(), Version: mls.ProtocolVersionMLS10,
			CipherSuite: mls.CipherSuiteID(d.GetCipherSuite()), Extensions: extensions(d.GetExtensions())}}, nil
	}
	return nil, status.Errorf(codes.Unimplemented, "proposal type %q", d.GetProposalType())
}

func (s *Server) commit(r *pb.CommitRequest, reinit bool) (*pb.CommitResponse, error) {
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	for _, m := range r.GetByReference() {
		if _, err := st.g.ProcessMessage(m); err != nil {
			return nil, fail(fmt.Errorf("proposal by reference: %w", err))
		}
	}
	opts := mls.CommitOptions{NoPath: !r.GetForcePath(), OmitRatchetTree: r.GetExternalTree(), PendingReInit: reinit}
	for _, d := range r.GetByValue() {
		p, err := describe(st.g, nil, d)
		if err != nil {
			return nil, err
		}
		opts.Proposals = append(opts.Proposals, *p)
	}
	pc, err := st.g.Commit(opts)
	if err != nil {
		return nil, fail(err)
	}
	out := &pb.CommitResponse{Commit: pc.Message, Welcome: pc.Welcome}
	if r.GetExternalTree() {
		if out.RatchetTree, err = treeBytes(pc.RatchetTree()); err != nil {
			return nil, fail(err)
		}
	}
	return out, nil
}

// Commit implements MLSClient.
func (s *Server) Commit(_ context.Context, r *pb.CommitRequest) (*pb.CommitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commit(r, false)
}

// ReInitCommit implements MLSClient.
func (s *Server) ReInitCommit(_ context.Context, r *pb.CommitRequest) (*pb.CommitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commit(r, true)
}

func (s *Server) handleCommit(r *pb.HandleCommitRequest) (*state, error) {
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	for _, m := range r.GetProposal() {
		if _, err := st.g.ProcessMessage(m); err != nil {
			return nil, fail(fmt.Errorf("proposal: %w", err))
		}
	}
	p, err := st.g.ProcessMessage(r.GetCommit())
	if err != nil {
		return nil, fail(err)
	}
	if p.Kind != mls.KindCommit {
		return nil, status.Error(codes.InvalidArgument, "not a commit")
	}
	return st, nil
}

// HandleCommit implements MLSClient.
func (s *Server) HandleCommit(_ context.Context, r *pb.HandleCommitRequest) (*pb.HandleCommitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.handleCommit(r)
	if err != nil {
		return nil, err
	}
	return &pb.HandleCommitResponse{StateId: r.GetStateId(), EpochAuthenticator: st.g.EpochAuthenticator()}, nil
}

func (s *Server) handlePending(id uint32) (*state, error) {
	st, err := s.state(id)
	if err != nil {
		return nil, err
	}
	if err := st.g.MergePendingCommit(st.g.Pending()); err != nil {
		return nil, fail(err)
	}
	return st, nil
}

// HandlePendingCommit implements MLSClient.
func (s *Server) HandlePendingCommit(_ context.Context, r *pb.HandlePendingCommitRequest) (*pb.HandleCommitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.handlePending(r.GetStateId())
	if err != nil {
		return nil, err
	}
	return &pb.HandleCommitResponse{StateId: r.GetStateId(), EpochAuthenticator: st.g.EpochAuthenticator()}, nil
}

// reinitResponse records a ReInit and returns a KeyPackage for the new
// group.
func (s *Server) reinitResponse(st *state) (*pb.HandleReInitCommitResponse, error) {
	ri := st.g.PendingReInit()
	if ri == nil {
		return nil, status.Error(codes.FailedPrecondition, "the commit did not carry a ReInit")
	}
	su, err := s.suite(uint32(ri.CipherSuite))
	if err != nil {
		return nil, err
	}
	var identity []byte
	for _, m := range st.g.Members() {
		if m.Leaf == st.g.OwnLeaf() {
			identity = m.Identity
		}
	}
	b, err := newBundle(su, identity)
	if err != nil {
		return nil, fail(err)
	}
	kp, err := marshalKP(&b.KeyPackage)
	if err != nil {
		return nil, fail(err)
	}
	id := s.id()
	s.reinits[id] = &reinit{old: st.g, bundle: b, psks: st.psks}
	return &pb.HandleReInitCommitResponse{ReinitId: id, KeyPackage: kp, EpochAuthenticator: st.g.EpochAuthenticator()}, nil
}

// HandlePendingReInitCommit implements MLSClient.
func (s *Server) HandlePendingReInitCommit(_ context.Context, r *pb.HandlePendingCommitRequest) (*pb.HandleReInitCommitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.handlePending(r.GetStateId())
	if err != nil {
		return nil, err
	}
	return s.reinitResponse(st)
}

// HandleReInitCommit implements MLSClient.
func (s *Server) HandleReInitCommit(_ context.Context, r *pb.HandleCommitRequest) (*pb.HandleReInitCommitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.handleCommit(r)
	if err != nil {
		return nil, err
	}
	return s.reinitResponse(st)
}

func (s *Server) subgroupResponse(g *mls.Group, welcome []byte, psks pskMap, externalTree bool) (*pb.CreateSubgroupResponse, error) {
	out := &pb.CreateSubgroupResponse{StateId: s.addState(g, psks), Welcome: welcome, EpochAuthenticator: g.EpochAuthenticator()}
	if externalTree {
		var err error
		if out.RatchetTree, err = treeBytes(g.RatchetTree()); err != nil {
			return nil, fail(err)
		}
	}
	return out, nil
}

func keyPackages(raw [][]byte) ([]*mls.KeyPackage, error) {
	var out []*mls.KeyPackage
	for _, b := range raw {
		kp, err := decodeKP(b)
		if err != nil {
			return nil, err
		}
		out = append(out, kp)
	}
	return out, nil
}

// ReInitWelcome implements MLSClient.
func (s *Server) ReInitWelcome(_ context.Context, r *pb.ReInitWelcomeRequest) (*pb.CreateSubgroupResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ri, ok := s.reinits[r.GetReinitId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no reinit %d", r.GetReinitId())
	}
	kps, err := keyPackages(r.GetKeyPackage())
	if err != nil {
		return nil, err
	}
	g, welcome, err := ri.old.ReInitGroup(ri.bundle.SignaturePriv, kps, mls.SubgroupOptions{NoPath: !r.GetForcePath(), OmitRatchetTree: r.GetExternalTree()})
	if err != nil {
		return nil, fail(err)
	}
	return s.subgroupResponse(g, welcome, ri.psks, r.GetExternalTree())
}

// HandleReInitWelcome implements MLSClient.
func (s *Server) HandleReInitWelcome(_ context.Context, r *pb.HandleReInitWelcomeRequest) (*pb.JoinGroupResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ri, ok := s.reinits[r.GetReinitId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no reinit %d", r.GetReinitId())
	}
	rt, err := decodeTree(r.GetRatchetTree())
	if err != nil {
		return nil, err
	}
	g, err := mls.JoinSubgroup(ri.old, r.GetWelcome(), ri.bundle, mls.JoinOptions{RatchetTree: rt})
	if err != nil {
		return nil, fail(err)
	}
	return &pb.JoinGroupResponse{StateId: s.addState(g, ri.psks), EpochAuthenticator: g.EpochAuthenticator()}, nil
}

// CreateBranch implements MLSClient.
func (s *Server) CreateBranch(_ context.Context, r *pb.CreateBranchRequest) (*pb.CreateSubgroupResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	kps, err := keyPackages(r.GetKeyPackages())
	if err != nil {
		return nil, err
	}
	g, welcome, err := st.g.Branch(r.GetGroupId(), extensions(r.GetExtensions()), kps, mls.SubgroupOptions{NoPath: !r.GetForcePath(), OmitRatchetTree: r.GetExternalTree()})
	if err != nil {
		return nil, fail(err)
	}
	return s.subgroupResponse(g, welcome, st.psks, r.GetExternalTree())
}

// HandleBranch implements MLSClient.
func (s *Server) HandleBranch(_ context.Context, r *pb.HandleBranchRequest) (*pb.HandleBranchResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	tx, ok := s.txs[r.GetTransactionId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no transaction %d", r.GetTransactionId())
	}
	rt, err := decodeTree(r.GetRatchetTree())
	if err != nil {
		return nil, err
	}
	g, err := mls.JoinSubgroup(st.g, r.GetWelcome(), tx.bundle, mls.JoinOptions{RatchetTree: rt})
	if err != nil {
		return nil, fail(err)
	}
	return &pb.HandleBranchResponse{StateId: s.addState(g, st.psks), EpochAuthenticator: g.EpochAuthenticator()}, nil
}

// NewMemberAddProposal implements MLSClient.
func (s *Server) NewMemberAddProposal(_ context.Context, r *pb.NewMemberAddProposalRequest) (*pb.NewMemberAddProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gc, err := mls.GroupInfoContext(r.GetGroupInfo())
	if err != nil {
		return nil, fail(err)
	}
	su, err := s.suite(uint32(gc.CipherSuite))
	if err != nil {
		return nil, err
	}
	b, err := newBundle(su, r.GetIdentity())
	if err != nil {
		return nil, fail(err)
	}
	msg, err := mls.NewMemberAddProposal(r.GetGroupInfo(), b)
	if err != nil {
		return nil, fail(err)
	}
	id := s.id()
	s.txs[id] = &transaction{bundle: b, psks: pskMap{}}
	return &pb.NewMemberAddProposalResponse{TransactionId: id, Proposal: msg, InitPriv: b.InitPriv.Bytes(),
		EncryptionPriv: b.EncryptionPriv.Bytes(), SignaturePriv: b.SignaturePriv.Bytes()}, nil
}

// CreateExternalSigner implements MLSClient.
func (s *Server) CreateExternalSigner(_ context.Context, r *pb.CreateExternalSignerRequest) (*pb.CreateExternalSignerResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	su, err := s.suite(r.GetCipherSuite())
	if err != nil {
		return nil, err
	}
	priv, pub, err := su.GenerateSignatureKey()
	if err != nil {
		return nil, fail(err)
	}
	es := mls.ExternalSender{SignatureKey: pub, Credential: mls.Credential{Type: mls.CredentialTypeBasic, Identity: r.GetIdentity()}}
	raw, err := es.Marshal()
	if err != nil {
		return nil, fail(err)
	}
	id := s.id()
	s.signers[id] = &signer{suite: su.ID(), priv: priv, identity: r.GetIdentity()}
	return &pb.CreateExternalSignerResponse{SignerId: id, ExternalSender: raw}, nil
}

// AddExternalSigner implements MLSClient: a GroupContextExtensions
// proposal appending the signer to external_senders.
func (s *Server) AddExternalSigner(_ context.Context, r *pb.AddExternalSignerRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.state(r.GetStateId())
	if err != nil {
		return nil, err
	}
	var es mls.ExternalSender
	if err := es.Unmarshal(r.GetExternalSender()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "external sender: %v", err)
	}
	list, err := st.g.ExternalSenders()
	if err != nil {
		return nil, fail(err)
	}
	x, err := mls.ExternalSendersExtension(append(list, es))
	if err != nil {
		return nil, fail(err)
	}
	ext := []mls.Extension{x}
	for _, e := range st.g.Context().Extensions {
		if e.Type != mls.ExtensionTypeExternalSenders {
			ext = append(ext, e)
		}
	}
	return s.propose(r.GetStateId(), &mls.Proposal{Type: mls.ProposalTypeGroupContextExtensions, GroupContextExtensions: &mls.GroupContextExtensions{Extensions: ext}})
}

// ExternalSignerProposal implements MLSClient.
func (s *Server) ExternalSignerProposal(_ context.Context, r *pb.ExternalSignerProposalRequest) (*pb.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sg, ok := s.signers[r.GetSignerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no signer %d", r.GetSignerId())
	}
	gc, err := mls.GroupInfoContext(r.GetGroupInfo())
	if err != nil {
		return nil, fail(err)
	}
	d := r.GetDescription()
	var p *mls.Proposal
	if string(d.GetProposalType()) == "remove" {
		// Resolve the identity in the GroupInfo's tree.
		rt, err := decodeTree(r.GetRatchetTree())
		if err != nil {
			return nil, err
		}
		if rt == nil {
			rt, err = treeFromGroupInfo(r.GetGroupInfo())
			if err != nil {
				return nil, err
			}
		}
		l, ok := leafByIdentity(rt, d.GetRemovedId())
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "no member %q", d.GetRemovedId())
		}
		p = &mls.Proposal{Type: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: l}}
	} else {
		if p, err = describe(nil, gc, d); err != nil {
			return nil, err
		}
	}
	msg, err := mls.ExternalProposal(gc, r.GetSignerIndex(), p, sg.priv)
	if err != nil {
		return nil, fail(err)
	}
	return &pb.ProposalResponse{Proposal: msg}, nil
}

// pskIDFor completes id with a fresh nonce of the length gc's suite
// requires.
func pskIDFor(gc *mls.GroupContext, id mls.PreSharedKeyID) (mls.PreSharedKeyID, error) {
	su, err := mls.Suite(gc.CipherSuite)
	if err != nil {
		return id, fail(err)
	}
	id.PSKID = append([]byte(nil), id.PSKID...)
	id.PSKGroupID = append([]byte(nil), id.PSKGroupID...)
	id.PSKNonce = make([]byte, su.Nh())
	if _, err := rand.Read(id.PSKNonce); err != nil {
		return id, fail(err)
	}
	return id, nil
}

func treeFromGroupInfo(raw []byte) (mls.RatchetTree, error) {
	var m mls.MLSMessage
	if err := m.Unmarshal(raw); err != nil || m.GroupInfo == nil {
		return nil, status.Error(codes.InvalidArgument, "group info")
	}
	for _, x := range m.GroupInfo.Extensions {
		if x.Type == mls.ExtensionTypeRatchetTree {
			return decodeTree(x.Data)
		}
	}
	return nil, status.Error(codes.InvalidArgument, "no ratchet tree")
}

func leafByIdentity(rt mls.RatchetTree, id []byte) (uint32, bool) {
	for i := 0; i < len(rt); i += 2 {
		if n := rt[i]; n != nil && n.Leaf != nil && string(n.Leaf.Credential.Identity) == string(id) {
			return uint32(i / 2), true
		}
	}
	return 0, false
}

// Free implements MLSClient.
func (s *Server) Free(_ context.Context, r *pb.FreeRequest) (*pb.FreeResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.states, r.GetStateId())
	return &pb.FreeResponse{}, nil
}
