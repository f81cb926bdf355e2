package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// ErrPinMismatch means the server's certificate is not the pinned one.
var ErrPinMismatch = errors.New("transport: server certificate does not match the pinned fingerprint")

// DialOptions says how to trust the server. With PinSHA256 set the leaf
// certificate must have exactly that fingerprint and CA verification is not
// used (self-signed servers); otherwise the chain is verified against
// RootCAs (nil: the system roots) for ServerName.
type DialOptions struct {
	PinSHA256   string
	RootCAs     *x509.CertPool
	ServerName  string        // default: the host part of addr
	ALPN        string        // default "qpc"; tests set others to check refusal
	IdleTimeout time.Duration // default 60s
	KeepAlive   time.Duration // default 15s
}

// Dial opens a QUIC connection to addr with TLS 1.3 and ALPN "qpc".
func Dial(ctx context.Context, addr string, o DialOptions) (*quic.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("transport: server address %q: %w", addr, err)
	}
	alpn := o.ALPN
	if alpn == "" {
		alpn = ALPN
	}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpn},
		ServerName: o.ServerName,
		RootCAs:    o.RootCAs,
	}
	if tlsConf.ServerName == "" {
		tlsConf.ServerName = host
	}
	var (
		mu       sync.Mutex
		mismatch error
	)
	if o.PinSHA256 != "" {
		pin, err := NormalizeFingerprint(o.PinSHA256)
		if err != nil {
			return nil, err
		}
		tlsConf.InsecureSkipVerify = true // replaced by the exact pin check below
		tlsConf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return fmt.Errorf("%w: server sent no certificate", ErrPinMismatch)
			}
			if !fingerprintMatches(raw[0], pin) {
				err := fmt.Errorf("%w: server presented %s, pinned %x", ErrPinMismatch, Fingerprint(raw[0]), pin)
				mu.Lock()
				mismatch = err
				mu.Unlock()
				return err
			}
			return nil
		}
	}
	idle := o.IdleTimeout
	if idle <= 0 {
		idle = 60 * time.Second
	}
	keep := o.KeepAlive
	if keep <= 0 {
		keep = 15 * time.Second
	}
	qc, err := quic.DialAddr(ctx, addr, tlsConf, &quic.Config{
		MaxIdleTimeout:       idle,
		KeepAlivePeriod:      keep,
		HandshakeIdleTimeout: 10 * time.Second,
	})
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		if mismatch != nil {
			return nil, mismatch
		}
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	return qc, nil
}
