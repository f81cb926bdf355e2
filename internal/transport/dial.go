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
	PinSHA256 string
	// Pins are more accepted leaf fingerprints: the certificate must match
	// PinSHA256 or one of them (the nodes of a cluster may each have their own).
	Pins        []string
	RootCAs     *x509.CertPool
	ServerName  string        // default: the host part of addr
	ALPN        string        // default "qpc"; tests set others to check refusal
	IdleTimeout time.Duration // default 60s
	KeepAlive   time.Duration // default 15s
	// LocalAddr is the local UDP address to send from, e.g. "127.0.0.2:0"
	// (tests of per-address limits); empty: the system chooses.
	LocalAddr string
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
	var pins [][]byte
	for _, p := range append([]string{o.PinSHA256}, o.Pins...) {
		if p == "" {
			continue
		}
		pin, err := NormalizeFingerprint(p)
		if err != nil {
			return nil, err
		}
		pins = append(pins, pin)
	}
	if len(pins) > 0 {
		tlsConf.InsecureSkipVerify = true // replaced by the exact pin check below
		tlsConf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return fmt.Errorf("%w: server sent no certificate", ErrPinMismatch)
			}
			if !anyFingerprintMatches(raw[0], pins) {
				err := fmt.Errorf("%w: server presented %s, pinned %s", ErrPinMismatch, Fingerprint(raw[0]), pinList(pins))
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
	qconf := &quic.Config{
		MaxIdleTimeout:       idle,
		KeepAlivePeriod:      keep,
		HandshakeIdleTimeout: 10 * time.Second,
	}
	var qc *quic.Conn
	if o.LocalAddr == "" {
		qc, err = quic.DialAddr(ctx, addr, tlsConf, qconf)
	} else {
		qc, err = dialFrom(ctx, o.LocalAddr, addr, tlsConf, qconf)
	}
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

// dialFrom dials addr from the local UDP address local; the socket is
// closed when the connection ends.
func dialFrom(ctx context.Context, local, addr string, tlsConf *tls.Config, qconf *quic.Config) (*quic.Conn, error) {
	la, err := net.ResolveUDPAddr("udp", local)
	if err != nil {
		return nil, fmt.Errorf("local address %q: %w", local, err)
	}
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	qc, err := tr.Dial(ctx, ra, tlsConf, qconf)
	if err != nil {
		_ = tr.Close()
		_ = udp.Close()
		return nil, err
	}
	context.AfterFunc(qc.Context(), func() {
		_ = tr.Close()
		_ = udp.Close()
	})
	return qc, nil
}
