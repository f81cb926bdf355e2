package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicprochat/quicprochat/internal/wire"
)

const baselineALPN = "qpc-bench"

// runBaseline measures a bare quic-go request/response loop: an in-process
// echo server, o.clients connections, one stream per request carrying a
// length-prefixed o.size-byte frame, echoed back; no storage, no Protobuf,
// no auth. It is the ceiling the durable enqueue path is compared with.
func runBaseline(ctx context.Context, o options) (report, error) {
	cert, err := selfSigned()
	if err != nil {
		return report{}, err
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{baselineALPN},
	}, &quic.Config{MaxIncomingStreams: 1000, MaxIncomingUniStreams: -1})
	if err != nil {
		return report{}, fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go echoServer(sctx, ln, o.size)

	conns := make([]*quic.Conn, o.clients)
	for i := range conns {
		c, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{
			MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{baselineALPN}, //nolint:gosec // loopback benchmark against its own in-process server
		}, &quic.Config{})
		if err != nil {
			return report{}, fmt.Errorf("dial: %w", err)
		}
		defer c.CloseWithError(0, "")
		conns[i] = c
	}
	req := make([]byte, o.size)
	_, _ = rand.Read(req)
	frame := wire.AppendFrame(nil, req)

	w := newWindow(o.warmup, o.duration, o.messages)
	p := newPacer(o.rate)
	var lat samples
	var errs, done atomic.Int64
	cpu := startCPU(0)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			defer func() { lat.add(mine...) }()
			var kept *quic.Stream
			defer func() {
				if kept != nil {
					_ = kept.Close()
				}
			}()
			for w.running() && ctx.Err() == nil {
				at, ok := p.wait(w.stop)
				if !ok {
					return
				}
				var err error
				if o.keepStream {
					kept, err = echoOnStream(ctx, c, kept, frame, o.size)
				} else {
					err = echoOnce(ctx, c, frame, o.size)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				done.Add(1)
				if w.count(at) {
					mine = append(mine, time.Since(at))
				}
			}
		}()
	}
	wg.Wait()
	stopped := time.Now()
	r := report{Mode: "baseline", Clients: o.clients, Size: o.size, TargetRate: o.rate, Seconds: w.seconds(stopped),
		Requests: w.counted(), Errors: errs.Load(), RPC: lat.summary(), CPUPerReq: cpu.perRequest(done.Load())}
	r.Throughput = float64(r.Requests) / r.Seconds
	if v, ok := firstErr.Load().(string); ok {
		r.FirstError = v
	}
	return finish(r), nil
}

func echoOnce(ctx context.Context, c *quic.Conn, frame []byte, size int) error {
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if _, err := s.Write(frame); err != nil {
		s.CancelRead(0)
		return err
	}
	if err := s.Close(); err != nil {
		s.CancelRead(0)
		return err
	}
	resp, err := wire.ReadFrame(s, size+64)
	if err != nil {
		s.CancelRead(0)
		return err
	}
	if len(resp) != size {
		return fmt.Errorf("echo of %d bytes, sent %d", len(resp), size)
	}
	return nil
}

// echoOnStream sends one request on s (opening it first if nil) and leaves
// the stream open for the next: several requests on one long-lived stream.
func echoOnStream(ctx context.Context, c *quic.Conn, s *quic.Stream, frame []byte, size int) (*quic.Stream, error) {
	if s == nil {
		var err error
		if s, err = c.OpenStreamSync(ctx); err != nil {
			return nil, err
		}
	}
	if _, err := s.Write(frame); err != nil {
		s.CancelRead(0)
		return nil, err
	}
	resp, err := wire.ReadFrame(s, size+64)
	if err != nil {
		s.CancelRead(0)
		return nil, err
	}
	if len(resp) != size {
		return nil, fmt.Errorf("echo of %d bytes, sent %d", len(resp), size)
	}
	return s, nil
}

func echoServer(ctx context.Context, ln *quic.Listener, size int) {
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		go func() {
			for {
				s, err := c.AcceptStream(ctx)
				if err != nil {
					return
				}
				go func() {
					// Echo every frame until the client closes its side:
					// one frame per stream, or many on a kept stream.
					for {
						req, err := wire.ReadFrame(s, size+64)
						if errors.Is(err, io.EOF) {
							_ = s.Close()
							return
						}
						if err != nil {
							s.CancelRead(0)
							s.CancelWrite(0)
							return
						}
						if _, err := s.Write(wire.AppendFrame(nil, req)); err != nil {
							s.CancelWrite(0)
							return
						}
					}
				}()
			}
		}()
	}
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "qpc-bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// finish fills the fields every report has.
func finish(r report) report {
	r.GOMAXPROCS = gomaxprocs()
	if r.CPUPerReq > 0 {
		r.CPUCapacity = float64(runtime.NumCPU()) * 1e6 / r.CPUPerReq
	}
	return r
}

var errNoPin = errors.New("no certificate pin")
