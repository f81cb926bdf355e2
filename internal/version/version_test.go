package version

import "testing"

// A build without the release-drill link flag must never fail its readiness.
func TestFaultReadyzEmptyByDefault(t *testing.T) {
	if FaultReadyz != "" {
		t.Fatalf("FaultReadyz = %q in a default build, want empty", FaultReadyz)
	}
}
