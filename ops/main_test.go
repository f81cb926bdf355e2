package ops_test

import (
	"testing"

	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// The live test runs qpcd on a throwaway PostgreSQL server.
func TestMain(m *testing.M) { pgtest.Main(m) }
