package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue writes a server certificate for localhost/127.0.0.1 signed by ca.
func (ca *testCA) issue(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

// Without a pin the client verifies the chain: the issuing CA is accepted,
// another CA and the system roots are not.
func TestCAVerifiedServer(t *testing.T) {
	ca := newTestCA(t, "qpc test CA")
	cfg := testConfig(t)
	cfg.TLS.CertFile, cfg.TLS.KeyFile = ca.issue(t, t.TempDir())
	ts := startServer(t, cfg)

	c, err := rpcclient.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{RootCAs: ca.pool})
	if err != nil {
		t.Fatalf("dial with the issuing CA: %v", err)
	}
	defer c.Close()
	if err := c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{Echo: "ca"}, &qpcv1.PingResponse{}); err != nil {
		t.Fatal(err)
	}

	other := newTestCA(t, "another CA")
	var unknown x509.UnknownAuthorityError
	if _, err := transport.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{RootCAs: other.pool}); !errors.As(err, &unknown) {
		t.Fatalf("a certificate from another CA was not refused as unknown authority: %v", err)
	}
	if _, err := transport.Dial(ctxT(t), ts.QUICAddr(), transport.DialOptions{}); err == nil {
		t.Fatal("the system roots accepted a test CA's certificate")
	}
}
