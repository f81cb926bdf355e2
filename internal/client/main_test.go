package client

import (
	"testing"

	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// The tracing test also runs its session on a server with the PostgreSQL
// backend (on a throwaway cluster, stopped at the end).
func TestMain(m *testing.M) { pgtest.Main(m) }
