//go:build interop

package interop

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// TestOpenMLS runs internal/mls against OpenMLS as Wire's core-crypto
// 10.3.0 ships it (interop/openmls, its WebAssembly build in Node.js) on
// suites 1, 2, 3, 5 and 7: OpenMLS's KeyPackage validated and added by internal/mls, the
// Welcome joined by OpenMLS, the exporter secret compared, application
// messages both ways, and a commit with an UpdatePath from internal/mls.
// TestOpenMLSCreates is the other direction.
func TestOpenMLS(t *testing.T) {
	for _, suite := range openMLSSuites {
		t.Run(suite.String(), func(t *testing.T) { openMLSJoins(t, suite) })
	}
	// The Ed448 suites are listed by core-crypto but not implemented by
	// its WebAssembly build; asserted so that support shows up.
	for _, suite := range []mls.CipherSuiteID{4, 6} {
		t.Run(suite.String()+"/unsupported", func(t *testing.T) {
			peer := startTS(t, "openmls", newArtifacts(t, "openmls/"+suite.String()))
			_, err := peer.call("init", map[string]any{"suite": int(suite), "client": "00000000-0000-4000-8000-000000000001"})
			if err == nil || !strings.Contains(err.Error(), "UnsupportedSignatureScheme") {
				t.Fatalf("core-crypto on suite %v: %v (expected UnsupportedSignatureScheme; if it works now, add the suite to openMLSSuites)", suite, err)
			}
		})
	}
}

// openMLSSuites are the suites core-crypto 10.3.0's WebAssembly build
// runs (all of RFC 9420's but the two Ed448 ones).
var openMLSSuites = []mls.CipherSuiteID{1, 2, 3, 5, 7}

func openMLSJoins(t *testing.T, suite mls.CipherSuiteID) {
	art := newArtifacts(t, "openmls/"+suite.String())
	peer := startTS(t, "openmls", art)
	// core-crypto refuses messages whose sender's basic credential is not
	// a Wire client id (<user-id>:<device-id>@<domain>), an application
	// rule of Wire's, not of MLS.
	const goID = "00000000-0000-4000-8000-000000000002:1@example.org"
	g := newGoPeer(t, suite, goID)
	// core-crypto's wire-format policy takes handshake messages as
	// PublicMessage only (Wire's delivery service reads them).
	g.cfg.PublicHandshake = true
	r := peer.must("init", map[string]any{"suite": int(suite), "client": "00000000-0000-4000-8000-000000000001"})
	t.Logf("core-crypto %v", r["version"])
	var kp mls.KeyPackage
	if err := kp.Unmarshal(peer.bytesOf(r, "key_package", "keypackage-openmls")); err != nil {
		t.Fatalf("OpenMLS KeyPackage does not decode: %v", err)
	}
	if err := mls.ValidateKeyPackage(&kp, mls.KeyPackagePolicy{AllowedSuites: []mls.CipherSuiteID{suite}}); err != nil {
		t.Fatalf("OpenMLS KeyPackage refused by internal/mls: %v", err)
	}
	var err error
	g.g, err = mls.CreateGroup(g.cfg, mls.NewGroupID(), suite, []byte(goID), g.sig, mls.GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := g.g.Commit(mls.CommitOptions{Add: []*mls.KeyPackage{&kp}})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.g.MergePendingCommit(pc); err != nil {
		t.Fatal(err)
	}
	art.keep("welcome-go-to-openmls", pc.Welcome)
	if _, err := peer.call("join", map[string]any{"welcome": pc.Welcome}); err != nil {
		t.Fatalf("OpenMLS refused internal/mls's Welcome: %v", err)
	}
	sameExport(t, g, peer, "after join")

	ct, err := g.g.Protect([]byte("from go"), nil)
	if err != nil {
		t.Fatal(err)
	}
	art.keep("app-go-to-openmls", ct)
	if r, err := peer.call("process", map[string]any{"message": ct}); err != nil || r["text"] != "from go" {
		t.Fatalf("OpenMLS read %v, %v", r, err)
	}
	r = peer.must("protect", map[string]any{"text": "from openmls"})
	p, err := g.g.ProcessMessage(peer.bytesOf(r, "message", "app-openmls-to-go"))
	if err != nil || p.Kind != mls.KindApplication || string(p.ApplicationData) != "from openmls" {
		t.Fatalf("internal/mls read %+v, %v", p, err)
	}

	pc, err = g.g.Commit(mls.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.g.MergePendingCommit(pc); err != nil {
		t.Fatal(err)
	}
	art.keep("commit-go-to-openmls", pc.Message)
	if _, err := peer.call("process", map[string]any{"message": pc.Message}); err != nil {
		t.Fatalf("OpenMLS refused internal/mls's commit with path: %v", err)
	}
	sameExport(t, g, peer, "after commit")
}

// sameExport compares core-crypto's exportSecretKey, which is OpenMLS's
// MLS-Exporter with label "exporter" and an empty context.
func sameExport(t *testing.T, g *goPeer, peer *tsPeer, step string) {
	t.Helper()
	mine, err := g.g.ExportSecret("exporter", nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	r := peer.must("export", map[string]any{"length": 32})
	theirs, _ := base64.StdEncoding.DecodeString(r["secret"].(string))
	if !bytes.Equal(mine.Bytes(), theirs) || uint64(r["epoch"].(float64)) != g.g.Epoch() {
		t.Fatalf("%s: internal/mls (epoch %d) and OpenMLS (epoch %v) disagree on the exporter secret", step, g.g.Epoch(), r["epoch"])
	}
}

// TestOpenMLSCreates: OpenMLS creates the group and adds internal/mls's
// KeyPackage (the commit bundle core-crypto hands its transport), the
// Welcome is joined by internal/mls, then application messages both
// ways, a commit with an UpdatePath from each side, and the exporter
// compared after each step.
func TestOpenMLSCreates(t *testing.T) {
	for _, suite := range openMLSSuites {
		t.Run(suite.String(), func(t *testing.T) { openMLSCreates(t, suite) })
	}
}

func openMLSCreates(t *testing.T, suite mls.CipherSuiteID) {
	art := newArtifacts(t, "openmls/"+suite.String()+"/openmls-creates")
	peer := startTS(t, "openmls", art)
	const goID = "00000000-0000-4000-8000-000000000002:1@example.org"
	g := newGoPeer(t, suite, goID)
	g.cfg.PublicHandshake = true
	peer.must("init", map[string]any{"suite": int(suite), "client": "00000000-0000-4000-8000-000000000001"})
	peer.must("create", map[string]any{"group_id": mls.NewGroupID()})
	// core-crypto adds only KeyPackages whose capabilities list x509
	// besides basic credentials (its own do), though the group uses basic
	// ones: Wire's policy, not RFC 9420's (§7.2 asks only that every
	// member support the credential types in use). Asserted, then met.
	raw, err := g.bundle.KeyPackage.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peer.call("add", map[string]any{"key_package": raw}); err == nil || !strings.Contains(err.Error(), "Credentials are not acceptable") {
		t.Fatalf("core-crypto's policy changed: a basic-only KeyPackage gave %v", err)
	}
	if g.bundle, err = mls.GenerateKeyPackage(suite, []byte(goID), g.sig, mls.KeyPackageOptions{Capabilities: &mls.Capabilities{
		Credentials: []mls.CredentialType{mls.CredentialTypeBasic, mls.CredentialTypeX509}}}); err != nil {
		t.Fatal(err)
	}
	if raw, err = g.bundle.KeyPackage.Marshal(); err != nil {
		t.Fatal(err)
	}
	art.keep("keypackage-go", raw)
	r, err := peer.call("add", map[string]any{"key_package": raw})
	if err != nil {
		t.Fatalf("OpenMLS refused internal/mls's KeyPackage: %v", err)
	}
	peer.bytesOf(r, "group_info", "groupinfo-openmls")
	welcome := peer.bytesOf(r, "welcome", "welcome-openmls-to-go")
	if g.g, err = mls.JoinFromWelcome(g.cfg, welcome, g.bundle, mls.JoinOptions{}); err != nil {
		t.Fatalf("internal/mls refused OpenMLS's Welcome: %v", err)
	}
	sameExport(t, g, peer, "after join")
	ct, err := g.g.Protect([]byte("from go"), nil)
	if err != nil {
		t.Fatal(err)
	}
	art.keep("app-go-to-openmls", ct)
	if r, err := peer.call("process", map[string]any{"message": ct}); err != nil || r["text"] != "from go" {
		t.Fatalf("OpenMLS read %v, %v", r, err)
	}
	r = peer.must("protect", map[string]any{"text": "from openmls"})
	if p, err := g.g.ProcessMessage(peer.bytesOf(r, "message", "app-openmls-to-go")); err != nil || string(p.ApplicationData) != "from openmls" {
		t.Fatalf("internal/mls read %+v, %v", p, err)
	}
	r = peer.must("commit", nil)
	if _, err := g.g.ProcessMessage(peer.bytesOf(r, "commit", "commit-openmls-to-go")); err != nil {
		t.Fatalf("internal/mls refused OpenMLS's commit with path: %v", err)
	}
	sameExport(t, g, peer, "after OpenMLS's commit")
	pc, err := g.g.Commit(mls.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.g.MergePendingCommit(pc); err != nil {
		t.Fatal(err)
	}
	art.keep("commit-go-to-openmls", pc.Message)
	if _, err := peer.call("process", map[string]any{"message": pc.Message}); err != nil {
		t.Fatalf("OpenMLS refused internal/mls's commit with path: %v", err)
	}
	sameExport(t, g, peer, "after internal/mls's commit")
}
