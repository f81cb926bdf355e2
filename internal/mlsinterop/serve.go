package mlsinterop

import (
	"context"
	"net"

	"google.golang.org/grpc"

	pb "github.com/quicprochat/quicprochat/internal/mlsinterop/mlsclientpb"
)

// Serve runs the MLSClient service on lis until ctx is done.
func Serve(ctx context.Context, lis net.Listener) error {
	gs := grpc.NewServer()
	pb.RegisterMLSClientServer(gs, NewServer())
	go func() {
		<-ctx.Done()
		gs.GracefulStop()
	}()
	return gs.Serve(lis)
}
