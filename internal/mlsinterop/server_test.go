package mlsinterop

import (
	"bytes"
	"context"
	"net"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quicprochat/quicprochat/internal/mls"
	pb "github.com/quicprochat/quicprochat/internal/mlsinterop/mlsclientpb"
)

// startInstance runs one server over TCP and returns a client for it.
func startInstance(t *testing.T) pb.MLSClientClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-done
	})
	return pb.NewMLSClientClient(conn)
}

// TestTwoInstances drives two server instances over gRPC: a Welcome
// join, application messages both ways, a commit with a path, and an
// external join, as the harness's welcome_join, application, commit and
// external_join scenarios do.
func TestTwoInstances(t *testing.T) {
	ctx := context.Background()
	a, b := startInstance(t), startInstance(t)
	for _, encrypt := range []bool{false, true} {
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		name, err := a.Name(ctx, &pb.NameRequest{})
		must(err)
		if name.Name == "" {
			t.Fatal("empty name")
		}
		cg, err := a.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: []byte("interop group"), CipherSuite: 1, EncryptHandshake: encrypt, Identity: []byte("alice")})
		must(err)
		kp, err := b.CreateKeyPackage(ctx, &pb.CreateKeyPackageRequest{CipherSuite: 1, Identity: []byte("bob")})
		must(err)
		cm, err := a.Commit(ctx, &pb.CommitRequest{StateId: cg.StateId, ByValue: []*pb.ProposalDescription{{ProposalType: []byte("add"), KeyPackage: kp.KeyPackage}}, ExternalTree: true})
		must(err)
		ha, err := a.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: cg.StateId})
		must(err)
		jb, err := b.JoinGroup(ctx, &pb.JoinGroupRequest{TransactionId: kp.TransactionId, Welcome: cm.Welcome, EncryptHandshake: encrypt, Identity: []byte("bob"), RatchetTree: cm.RatchetTree})
		must(err)
		if !bytes.Equal(ha.EpochAuthenticator, jb.EpochAuthenticator) {
			t.Fatal("epoch authenticators differ after the Welcome")
		}
		// Application messages both ways.
		for _, dir := range []struct {
			from, to     pb.MLSClientClient
			fromID, toID uint32
		}{{a, b, cg.StateId, jb.StateId}, {b, a, jb.StateId, cg.StateId}} {
			ct, err := dir.from.Protect(ctx, &pb.ProtectRequest{StateId: dir.fromID, AuthenticatedData: []byte("ad"), Plaintext: []byte("hello")})
			must(err)
			pt, err := dir.to.Unprotect(ctx, &pb.UnprotectRequest{StateId: dir.toID, Ciphertext: ct.Ciphertext})
			must(err)
			if string(pt.Plaintext) != "hello" || string(pt.AuthenticatedData) != "ad" {
				t.Fatalf("unprotect: %q %q", pt.Plaintext, pt.AuthenticatedData)
			}
		}
		// bob commits an Update proposal of alice's with a path.
		up, err := a.UpdateProposal(ctx, &pb.UpdateProposalRequest{StateId: cg.StateId})
		must(err)
		cm, err = b.Commit(ctx, &pb.CommitRequest{StateId: jb.StateId, ByReference: [][]byte{up.Proposal}, ForcePath: true})
		must(err)
		hb, err := b.HandlePendingCommit(ctx, &pb.HandlePendingCommitRequest{StateId: jb.StateId})
		must(err)
		ha2, err := a.HandleCommit(ctx, &pb.HandleCommitRequest{StateId: cg.StateId, Proposal: [][]byte{up.Proposal}, Commit: cm.Commit})
		must(err)
		if !bytes.Equal(ha2.EpochAuthenticator, hb.EpochAuthenticator) {
			t.Fatal("epoch authenticators differ after the commit")
		}
		// carol (on instance b) joins by external commit.
		gi, err := a.GroupInfo(ctx, &pb.GroupInfoRequest{StateId: cg.StateId})
		must(err)
		ej, err := b.ExternalJoin(ctx, &pb.ExternalJoinRequest{GroupInfo: gi.GroupInfo, EncryptHandshake: encrypt, Identity: []byte("carol")})
		must(err)
		ha3, err := a.HandleCommit(ctx, &pb.HandleCommitRequest{StateId: cg.StateId, Commit: ej.Commit})
		must(err)
		if !bytes.Equal(ha3.EpochAuthenticator, ej.EpochAuthenticator) {
			t.Fatal("epoch authenticators differ after the external join")
		}
		ea, err := a.Export(ctx, &pb.ExportRequest{StateId: cg.StateId, Label: "x", Context: []byte("c"), KeyLength: 16})
		must(err)
		ec, err := b.Export(ctx, &pb.ExportRequest{StateId: ej.StateId, Label: "x", Context: []byte("c"), KeyLength: 16})
		must(err)
		if !bytes.Equal(ea.ExportedSecret, ec.ExportedSecret) {
			t.Fatal("exported secrets differ")
		}
		// Every implemented suite is advertised; others are refused
		// with Unimplemented.
		sc, err := a.SupportedCiphersuites(ctx, &pb.SupportedCiphersuitesRequest{})
		must(err)
		var want []uint32
		for _, id := range mls.SuiteIDs() {
			want = append(want, uint32(id))
		}
		if !slices.Equal(sc.Ciphersuites, want) {
			t.Fatalf("advertised suites %v, want %v", sc.Ciphersuites, want)
		}
		if _, err := a.CreateGroup(ctx, &pb.CreateGroupRequest{GroupId: []byte("g"), CipherSuite: 0x0BAD, Identity: []byte("x")}); status.Code(err) != codes.Unimplemented {
			t.Fatalf("suite 0x0BAD: %v", err)
		}
	}
}
