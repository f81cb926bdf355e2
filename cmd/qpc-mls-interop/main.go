// Command qpc-mls-interop serves the MLS interop harness's MLSClient gRPC
// service (mlswg/mls-implementations) backed by internal/mls.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/quicprochat/quicprochat/internal/mlsinterop"
)

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "qpc-mls-interop:", err)
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	fs := flag.NewFlagSet("qpc-mls-interop", flag.ContinueOnError)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 50051, "TCP port to listen on")
	if err := fs.Parse(args); err != nil {
		return 2, nil
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		return 1, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := mlsinterop.Serve(ctx, lis); err != nil {
		return 1, err
	}
	return 0, nil
}
