package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
)

func newDrainCommand(g *globals) *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:   "drain",
		Short: "Gracefully stop qpcd, as SIGTERM does: unready, refuse new RPCs, let in-flight ones finish, close",
		Long:  "By default waits until qpcd has stopped (its admin socket stops answering); --no-wait returns at once.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			res, err := c.Drain(ctx)
			if err != nil {
				return failed(err)
			}
			out := struct {
				admin.DrainResult
				Stopped bool `json:"stopped"`
			}{DrainResult: res}
			if !noWait {
				// qpcd stops within its drain timeout; wait that long and a
				// little more, not the command's whole time limit.
				wctx, wcancel := context.WithTimeout(ctx, time.Duration(res.TimeoutSecs*float64(time.Second))+drainGrace)
				defer wcancel()
				stop := g.newProgress().ticker(fmt.Sprintf("draining %d connections (qpcd's drain timeout %.0fs)", res.Connections, res.TimeoutSecs))
				err := waitGone(wctx, c)
				stop()
				if err != nil {
					return failed(fmt.Errorf("qpcd was asked to drain but still answers: %w; check its log (drain timeout %.0fs)", err, res.TimeoutSecs))
				}
				out.Stopped = true
			}
			return g.emit(out, func(w io.Writer) {
				switch {
				case out.Stopped:
					fmt.Fprintln(w, "qpcd drained and stopped")
				case res.AlreadyGoing:
					fmt.Fprintln(w, "qpcd was already draining")
				default:
					fmt.Fprintf(w, "qpcd is draining %d connections (timeout %.0fs)\n", res.Connections, res.TimeoutSecs)
				}
			})
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once qpcd has started draining")
	return cmd
}

// drainGrace is how long past its drain timeout qpcd may take to close
// its storage and exit.
const drainGrace = 5 * time.Second

// waitGone polls until nothing answers on the socket (or ctx ends).
func waitGone(ctx context.Context, c *admin.Client) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		gone := c.Gone(pctx)
		cancel()
		if gone {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
