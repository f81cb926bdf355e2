package server

import (
	"testing"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func TestRegisterLoginWhoAmI(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	var who qpcv1.WhoAmIResponse
	if err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &who); err != nil {
		t.Fatal(err)
	}
	if who.GetAccountId() != d.AccountID || who.GetDeviceId() != d.DeviceID || who.GetAccountName() != "alice" {
		t.Fatalf("whoami = %v", &who)
	}
}
