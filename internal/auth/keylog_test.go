package auth

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
)

// breakingLog is the real key log that can be told to fail right after
// appending, as a full disk or a lost connection would.
type breakingLog struct {
	l    *logstore.Log
	fail bool
}

func (b *breakingLog) AppendTx(ctx context.Context, tx *sql.Tx, e keylog.Entry, dev string) error {
	if err := b.l.AppendTx(ctx, tx, e, dev); err != nil {
		return err
	}
	if b.fail {
		return errors.New("the key log write failed")
	}
	return nil
}

// TestKeyLogAppendedInTheSameTransaction: registering with an identity key
// and certifying a device each append their entry in the transaction that
// stores them: when the append fails nothing is stored, and what is
// stored is proven by the log.
func TestKeyLogAppendedInTheSameTransaction(t *testing.T) {
	var bl breakingLog
	e := newEnv(t, func(o *Options) {
		l, err := logstore.Open(context.Background(), logstore.Options{DB: o.DB, Now: o.Now})
		if err != nil {
			t.Fatal(err)
		}
		bl.l = l
		o.KeyLog = &bl
	})
	ctx := context.Background()
	ik, _ := identity.Generate()
	ikPub := ik.Public()
	pub, _ := genKey(t)
	size := func() uint64 {
		h, err := bl.l.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return h.Size
	}

	bl.fail = true
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: pub, DeviceName: "d", IdentityKey: ikPub.Bytes()}); err == nil {
		t.Fatal("registered although the key log write failed")
	}
	if _, _, err := e.s.LookupAccount(ctx, "bob"); !errors.Is(err, ErrNotFound) || size() != 0 {
		t.Fatalf("after a failed append: lookup %v, log size %d", err, size())
	}
	bl.fail = false
	acc, devID, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: pub, DeviceName: "d", IdentityKey: ikPub.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	// Registering without an identity key logs nothing.
	e.register(t, "legacy")
	if size() != 1 {
		t.Fatalf("log size %d after one registration with an identity key", size())
	}
	cert, err := identity.Issue(ik, "bob", devID, pub, e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := cert.Marshal()
	a := Actor{AccountID: acc, DeviceID: devID}
	bl.fail = true
	if err := e.s.CertifyDevice(ctx, a, devID, raw); err == nil {
		t.Fatal("certified although the key log write failed")
	}
	if d, _ := e.s.Device(ctx, devID); d.Certificate != nil || size() != 1 {
		t.Fatalf("after a failed append: certificate %x, log size %d", d.Certificate, size())
	}
	bl.fail = false
	if err := e.s.CertifyDevice(ctx, a, devID, raw); err != nil {
		t.Fatal(err)
	}
	p, err := bl.l.ProveAccount(ctx, "bob", []string{devID})
	if err != nil || p.Head.Size != 2 || p.Identity == nil || p.Devices[devID] == nil {
		t.Fatalf("proofs %+v (%v)", p, err)
	}
	for _, pr := range []*logstore.Proof{p.Identity, p.Devices[devID]} {
		if err := keylog.VerifyInclusion(pr.Entry, pr.Index, pr.Path, p.Head); err != nil {
			t.Fatal(err)
		}
	}
}
