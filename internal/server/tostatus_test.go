package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Transient store conditions reach the client as UNAVAILABLE (it retries);
// only errors nobody explained are INTERNAL.
func TestToStatusTransientStoreErrors(t *testing.T) {
	r := &rpcServer{log: slog.New(slog.DiscardHandler)}
	call := &Call{Method: "Enqueue", RequestID: 7}
	for _, c := range []struct {
		err  error
		want qpcv1.Status
	}{
		{fmt.Errorf("delivery: enqueue: %w", fmt.Errorf("%w: 21 attempts: %w", store.ErrContended, errors.New("40001"))), qpcv1.Status_STATUS_UNAVAILABLE},
		{fmt.Errorf("x: %w", store.ErrPostgresUnreachable), qpcv1.Status_STATUS_UNAVAILABLE},
		{fmt.Errorf("x: %w", store.ErrCommitUnknown), qpcv1.Status_STATUS_UNAVAILABLE},
		{errors.New("something nobody explained"), qpcv1.Status_STATUS_INTERNAL},
	} {
		if got := r.toStatus(context.Background(), call, c.err); got.Code != c.want {
			t.Errorf("%v: %v, want %v", c.err, got.Code, c.want)
		}
	}
}
