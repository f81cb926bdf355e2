package client

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func TestLoginMessageMatchesServer(t *testing.T) {
	nonce := bytes.Repeat([]byte{7}, 32)
	if got, want := loginMessage("0123456789abcdef0123456789abcdef", nonce), auth.LoginMessage("0123456789abcdef0123456789abcdef", nonce); !bytes.Equal(got, want) {
		t.Fatalf("login message differs from the server's")
	}
}

func TestRegisterLoginWhoAmIDevices(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c := registered(t, srv, "alice")
	ctx := ctxT(t)
	id, err := c.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id.Credential(), "alice/") || len(id.DeviceID) != 32 {
		t.Fatalf("credential %q", id.Credential())
	}
	w, err := c.WhoAmI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w.GetAccountName() != "alice" || w.GetDeviceId() != id.DeviceID {
		t.Fatalf("whoami = %v", w)
	}
	devs, err := c.Devices(ctx)
	if err != nil || len(devs) != 1 || !bytes.Equal(devs[0].GetSignatureKey(), id.PublicKey()) {
		t.Fatalf("devices = %v, %v", devs, err)
	}
	// The stock was uploaded at registration.
	n, err := c.KeyPackageStock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.GetDeviceCount() != DefaultStock || !n.GetHasLastResort() {
		t.Fatalf("stock after register = %v", n)
	}
	// A second register on the same home is refused.
	if _, err := c.Register(ctx, RegisterParams{AccountName: "alice2"}); !errors.Is(err, ErrAlreadyRegistered) {
		t.Fatalf("second register: %v", err)
	}
	// The name is taken for anyone else.
	other, _ := newTestClient(t, srv, testKey(t))
	_, err = other.Register(ctx, RegisterParams{AccountName: "alice"})
	var se *wire.StatusError
	if !errors.As(err, &se) || se.Code != qpcv1.Status_STATUS_ALREADY_EXISTS || !strings.Contains(err.Error(), "choose another name") {
		t.Fatalf("taken name: %v", err)
	}
}
