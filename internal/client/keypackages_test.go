package client

import (
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func localKeyPackages(t *testing.T, c *Client) (pool, lastResort int) {
	t.Helper()
	err := c.db.ReadTx(ctxT(t), func(tx *sql.Tx) error {
		if err := tx.QueryRow(`SELECT count(*) FROM key_packages WHERE last_resort = 0`).Scan(&pool); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT count(*) FROM key_packages WHERE last_resort = 1`).Scan(&lastResort)
	})
	if err != nil {
		t.Fatal(err)
	}
	return pool, lastResort
}

func TestKeyPackageUpkeep(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	clock := time.Now()
	c, _ := newTestClient(t, srv, testKey(t))
	c.now = func() time.Time { return clock }
	ctx := ctxT(t)
	id, err := c.Register(ctx, RegisterParams{AccountName: "erin"})
	if err != nil {
		t.Fatal(err)
	}
	if pool, lr := localKeyPackages(t, c); pool != DefaultStock || lr != 1 {
		t.Fatalf("local keys after register: %d pool, %d last resort", pool, lr)
	}

	// Someone fetches three: the next upkeep tops the stock up to 10.
	other := registered(t, srv, "frank")
	for range 3 {
		var fr qpcv1.FetchKeyPackagesResponse
		if err := other.call(ctx, "FetchKeyPackages", &qpcv1.FetchKeyPackagesRequest{AccountName: "erin"}, &fr); err != nil {
			t.Fatal(err)
		}
		// Each verifies and carries the device's credential and key.
		var m mls.MLSMessage
		if err := m.Unmarshal(fr.GetKeyPackages()[0].GetKeyPackage()); err != nil {
			t.Fatal(err)
		}
		kp := m.KeyPackage
		s, _ := mls.Suite(Suite)
		if err := s.VerifyKeyPackage(kp, time.Now()); err != nil {
			t.Fatal(err)
		}
		if string(kp.LeafNode.Credential.Identity) != id.Credential() || string(kp.LeafNode.SignatureKey) != string(id.PublicKey()) {
			t.Fatalf("credential %q", kp.LeafNode.Credential.Identity)
		}
	}
	rep, err := c.KeyPackageUpkeep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Uploaded != 3 || rep.ServerStock != DefaultStock || !rep.LastResort || rep.NewLastResort {
		t.Fatalf("top-up: %+v", rep)
	}
	// Nothing to do when the stock is full and fresh.
	if rep, err := c.KeyPackageUpkeep(ctx); err != nil || rep.Uploaded != 0 {
		t.Fatalf("idle upkeep: %+v, %v", rep, err)
	}
	// 23 h after upload (inside the 2 h margin before the 24 h TTL) the
	// whole stock and the last resort are replaced before the server drops
	// them. (The uploads are aged in the database rather than by moving the
	// client's clock: the server checks KeyPackage lifetimes on its own.)
	age := func(expires time.Time) {
		t.Helper()
		if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.Exec(`UPDATE key_packages SET expires_ms = ?`, expires.UnixMilli())
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	age(clock.Add(time.Hour))
	rep, err = c.KeyPackageUpkeep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Uploaded != DefaultStock || !rep.NewLastResort {
		t.Fatalf("replacement before TTL: %+v", rep)
	}
	// Private keys of KeyPackages dropped more than 7 days ago are purged.
	age(clock.Add(-8 * 24 * time.Hour))
	rep, err = c.KeyPackageUpkeep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Purged == 0 {
		t.Fatalf("nothing purged: %+v", rep)
	}
}

// TestKeyPackageDrainRefilledAtOnce: when others take a device's
// KeyPackages (here as far as the server's per-fetcher limit lets one
// account go), the server's refill signal on the device's next fetch makes
// Sync top the stock up at once, not at the hourly check.
func TestKeyPackageDrainRefilledAtOnce(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	erin := registered(t, srv, "erin")
	if _, err := erin.Sync(ctx, 0); err != nil { // the hourly check is now done
		t.Fatal(err)
	}
	frank := registered(t, srv, "frank")
	taken := 0
	for {
		var fr qpcv1.FetchKeyPackagesResponse
		err := frank.call(ctx, "FetchKeyPackages", &qpcv1.FetchKeyPackagesRequest{AccountName: "erin"}, &fr)
		var se *wire.StatusError
		if errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED && se.RetryAfter > 0 {
			break
		}
		if err != nil || taken == DefaultStock {
			t.Fatalf("fetch %d: %v", taken+1, err)
		}
		taken++
	}
	if taken == 0 || taken >= DefaultStock {
		t.Fatalf("frank took %d of erin's %d KeyPackages", taken, DefaultStock)
	}
	// (Not counting erin's stock here: a count is the device looking, which
	// clears the signal.)
	if _, err := erin.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if st, err := erin.KeyPackageStock(ctx); err != nil || int(st.GetDeviceCount()) != DefaultStock {
		t.Fatalf("stock after erin's next sync: %v %v (want %d)", st, err, DefaultStock)
	}
}
