// Command qpc is the quicprochat end-user client; the work is in internal/client/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/quicprochat/quicprochat/internal/client/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], cli.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}
