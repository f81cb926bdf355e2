package mlsinterop

import (
	"bytes"
	"context"
	"testing"

	pb "github.com/quicprochat/quicprochat/internal/mlsinterop/mlsclientpb"
)

// TestScenarios runs the reinit, branch and external_proposals flows of
// the harness between two instances.
func TestScenarios(t *testing.T) {
	ctx := context.Background()
	a, b := startInstance(t), startInstance(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	eq := func(x, y []byte, what string) {
		t.Helper()
		if !bytes.Equal(x, y) {
			t.Fatalf("%s: epoch authenticators differ", what)
		}
	}
	setup := func() (uint32, uint32) {
		cg, err := a.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: []byte("g1"), CipherSuite: 1, Identity: []byte("alice")})
		must(err)
		kp, err := b.CreateKeyPackage(ctx, &pb.CreateKeyPackageRequest{CipherSuite: 1, Identity: []byte("bob")})
		must(err)
		cm, err := a.Commit(ctx, &pb.CommitRequest{StateId: cg.StateId, ByValue: []*pb.ProposalDescription{{ProposalType: []byte("add"), KeyPackage: kp.KeyPackage}}})
		must(err)
		_, err = a.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: cg.StateId})
		must(err)
		jb, err := b.JoinGroup(ctx, &pb.JoinGroupRequest{TransactionId: kp.TransactionId, Welcome: cm.Welcome, Identity: []byte("bob")})
		must(err)
		return cg.StateId, jb.StateId
	}

	t.Run("reinit", func(t *testing.T) {
		sa, sb := setup()
		p, err := b.ReInitProposal(ctx, &pb.ReInitProposalRequest{StateId: sb, CipherSuite: 1, GroupId: []byte("g2")})
		must(err)
		cm, err := a.ReInitCommit(ctx, &pb.CommitRequest{StateId: sa, ByReference: [][]byte{p.Proposal}})
		must(err)
		ra, err := a.HandlePendingReInitCommit(ctx, &pb.HandlePendingCommitRequest{StateId: sa})
		must(err)
		rb, err := b.HandleReInitCommit(ctx, &pb.HandleCommitRequest{StateId: sb, Proposal: [][]byte{p.Proposal}, Commit: cm.Commit})
		must(err)
		eq(ra.EpochAuthenticator, rb.EpochAuthenticator, "reinit commit")
		w, err := a.ReInitWelcome(ctx, &pb.ReInitWelcomeRequest{ReinitId: ra.ReinitId, KeyPackage: [][]byte{rb.KeyPackage}, ForcePath: true, ExternalTree: true})
		must(err)
		jb, err := b.HandleReInitWelcome(ctx, &pb.HandleReInitWelcomeRequest{ReinitId: rb.ReinitId, Welcome: w.Welcome, RatchetTree: w.RatchetTree})
		must(err)
		eq(w.EpochAuthenticator, jb.EpochAuthenticator, "reinit welcome")
	})

	t.Run("branch", func(t *testing.T) {
		sa, sb := setup()
		kp, err := b.CreateKeyPackage(ctx, &pb.CreateKeyPackageRequest{CipherSuite: 1, Identity: []byte("bob")})
		must(err)
		br, err := a.CreateBranch(ctx, &pb.CreateBranchRequest{StateId: sa, GroupId: []byte("branch"), KeyPackages: [][]byte{kp.KeyPackage}})
		must(err)
		hb, err := b.HandleBranch(ctx, &pb.HandleBranchRequest{StateId: sb, TransactionId: kp.TransactionId, Welcome: br.Welcome})
		must(err)
		eq(br.EpochAuthenticator, hb.EpochAuthenticator, "branch")
	})

	t.Run("external_proposals", func(t *testing.T) {
		sa, sb := setup()
		sg, err := b.CreateExternalSigner(ctx, &pb.CreateExternalSignerRequest{CipherSuite: 1, Identity: []byte("ds")})
		must(err)
		p, err := a.AddExternalSigner(ctx, &pb.AddExternalSignerRequest{StateId: sa, ExternalSender: sg.ExternalSender})
		must(err)
		cm, err := a.Commit(ctx, &pb.CommitRequest{StateId: sa, ByReference: [][]byte{p.Proposal}})
		must(err)
		_, err = a.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: sa})
		must(err)
		_, err = b.HandleCommit(ctx, &pb.HandleCommitRequest{StateId: sb, Proposal: [][]byte{p.Proposal}, Commit: cm.Commit})
		must(err)
		// The external signer proposes adding carol; a new member proposes itself.
		gi, err := a.GroupInfo(ctx, &pb.GroupInfoRequest{StateId: sa})
		must(err)
		kc, err := b.CreateKeyPackage(ctx, &pb.CreateKeyPackageRequest{CipherSuite: 1, Identity: []byte("carol")})
		must(err)
		ep, err := b.ExternalSignerProposal(ctx, &pb.ExternalSignerProposalRequest{SignerId: sg.SignerId, SignerIndex: 0, GroupInfo: gi.GroupInfo,
			Description: &pb.ProposalDescription{ProposalType: []byte("add"), KeyPackage: kc.KeyPackage}})
		must(err)
		nm, err := b.NewMemberAddProposal(ctx, &pb.NewMemberAddProposalRequest{GroupInfo: gi.GroupInfo, Identity: []byte("dave")})
		must(err)
		rp, err := b.ExternalSignerProposal(ctx, &pb.ExternalSignerProposalRequest{SignerId: sg.SignerId, SignerIndex: 0, GroupInfo: gi.GroupInfo,
			Description: &pb.ProposalDescription{ProposalType: []byte("remove"), RemovedId: []byte("bob")}})
		must(err)
		cm, err = a.Commit(ctx, &pb.CommitRequest{StateId: sa, ByReference: [][]byte{ep.Proposal, nm.Proposal}})
		must(err)
		ha, err := a.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: sa})
		must(err)
		hb, err := b.HandleCommit(ctx, &pb.HandleCommitRequest{StateId: sb, Proposal: [][]byte{ep.Proposal, nm.Proposal}, Commit: cm.Commit})
		must(err)
		eq(ha.EpochAuthenticator, hb.EpochAuthenticator, "external proposals")
		jd, err := b.JoinGroup(ctx, &pb.JoinGroupRequest{TransactionId: nm.TransactionId, Welcome: cm.Welcome, Identity: []byte("dave")})
		must(err)
		eq(ha.EpochAuthenticator, jd.EpochAuthenticator, "new member join")
		// External remove of bob, committed by alice.
		cm, err = a.Commit(ctx, &pb.CommitRequest{StateId: sa, ByReference: [][]byte{rp.Proposal}})
		if err == nil {
			t.Fatal("a proposal of a past epoch was accepted")
		}
		_ = cm
	})

	// An external signer proposes an external and a resumption PSK
	// (RFC 9420 §12.1.8), which it builds from the GroupInfo alone; both
	// members hold the external PSK. Before the fix the server refused
	// these proposals ("needs the group").
	t.Run("external_psk_proposals", func(t *testing.T) {
		sa, sb := setup()
		sg, err := b.CreateExternalSigner(ctx, &pb.CreateExternalSignerRequest{CipherSuite: 1, Identity: []byte("ds")})
		must(err)
		p, err := a.AddExternalSigner(ctx, &pb.AddExternalSignerRequest{StateId: sa, ExternalSender: sg.ExternalSender})
		must(err)
		cm, err := a.Commit(ctx, &pb.CommitRequest{StateId: sa, ByReference: [][]byte{p.Proposal}})
		must(err)
		_, err = a.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: sa})
		must(err)
		_, err = b.HandleCommit(ctx, &pb.HandleCommitRequest{StateId: sb, Proposal: [][]byte{p.Proposal}, Commit: cm.Commit})
		must(err)
		psk := []byte("0123456789abcdef0123456789abcdef")
		for _, st := range []struct {
			c  pb.MLSClientClient
			id uint32
		}{{a, sa}, {b, sb}} {
			_, err := st.c.StorePSK(ctx, &pb.StorePSKRequest{StateOrTransactionId: st.id, PskId: []byte("k1"), PskSecret: psk})
			must(err)
		}
		gi, err := a.GroupInfo(ctx, &pb.GroupInfoRequest{StateId: sa})
		must(err)
		var props [][]byte
		for _, d := range []*pb.ProposalDescription{
			{ProposalType: []byte("externalPSK"), PskId: []byte("k1")},
			{ProposalType: []byte("resumptionPSK"), EpochId: 1},
		} {
			ep, err := b.ExternalSignerProposal(ctx, &pb.ExternalSignerProposalRequest{SignerId: sg.SignerId, SignerIndex: 0, GroupInfo: gi.GroupInfo, Description: d})
			if err != nil {
				t.Fatalf("external %s proposal: %v", d.ProposalType, err)
			}
			props = append(props, ep.Proposal)
		}
		cm, err = a.Commit(ctx, &pb.CommitRequest{StateId: sa, ByReference: props})
		must(err)
		ha, err := a.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: sa})
		must(err)
		hb, err := b.HandleCommit(ctx, &pb.HandleCommitRequest{StateId: sb, Proposal: props, Commit: cm.Commit})
		must(err)
		eq(ha.EpochAuthenticator, hb.EpochAuthenticator, "external PSK proposals")
	})
}
