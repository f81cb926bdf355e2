package server

import (
	"testing"

	"github.com/quicprochat/quicprochat/internal/store/storetest"
)

// The suite runs once per storage backend (SQLCipher, then PostgreSQL).
func TestMain(m *testing.M) { storetest.Main(m) }
