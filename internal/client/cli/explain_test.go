package cli

import (
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// A revoked device is not told to run qpc login (which fails the same
// way) but that it was revoked and how to come back; an expired session
// still is told to log in (issue 16).
func TestExplainRevokedDevice(t *testing.T) {
	revoked := explain(wire.Errorf(qpcv1.Status_STATUS_UNAUTHENTICATED, "auth: token revoked: device revoked")).Error()
	if strings.Contains(revoked, "run qpc login") || !strings.Contains(revoked, "was revoked") || !strings.Contains(revoked, "new device") {
		t.Errorf("revoked device: %s", revoked)
	}
	login := explain(wire.Errorf(qpcv1.Status_STATUS_UNAUTHENTICATED, "auth: device revoked")).Error()
	if strings.Contains(login, "run qpc login") {
		t.Errorf("login of a revoked device: %s", login)
	}
	expired := explain(wire.Errorf(qpcv1.Status_STATUS_UNAUTHENTICATED, "auth: token expired")).Error()
	if !strings.Contains(expired, "run qpc login") {
		t.Errorf("expired token: %s", expired)
	}
}
