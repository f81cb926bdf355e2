package faultproxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// UDP forwards datagrams between clients and one upstream address. Each
// client address gets its own upstream socket, so the server sees one peer
// per client as it would without the proxy.
type UDP struct {
	state    *faultState
	conn     *net.UDPConn // client-facing
	upstream *net.UDPAddr

	mu      sync.Mutex
	flows   map[string]*net.UDPConn // client address -> upstream socket
	closed  bool
	wg      sync.WaitGroup
	pending sync.WaitGroup // delayed sends not yet made
}

const (
	maxDatagram  = 64 << 10 // larger than any QUIC packet
	socketBuffer = 4 << 20  // bursts are the proxy's faults to make, not the kernel's
)

// ListenUDP starts a proxy on listen (e.g. "127.0.0.1:0") towards upstream,
// its fault choices drawn from an RNG seeded with seed.
func ListenUDP(listen, upstream string, seed uint64) (*UDP, error) {
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	_ = c.SetReadBuffer(socketBuffer)
	p := &UDP{state: newFaultState(seed), conn: c, upstream: ua, flows: map[string]*net.UDPConn{}}
	p.wg.Add(1)
	go p.fromClients()
	return p, nil
}

// Addr is the address clients send to.
func (p *UDP) Addr() string { return p.conn.LocalAddr().String() }

// Set replaces the faults in force.
func (p *UDP) Set(f Faults) { p.state.set(f) }

// Faults returns the faults in force.
func (p *UDP) Faults() Faults { return p.state.get() }

// Stats returns the counters so far.
func (p *UDP) Stats() Stats { return p.state.snapshot() }

// Close stops the proxy and closes every flow.
func (p *UDP) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	err := p.conn.Close()
	for _, f := range p.flows {
		_ = f.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.pending.Wait()
	return err
}

func (p *UDP) fromClients() {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		up := p.flow(from)
		if up == nil {
			return
		}
		p.send(buf[:n], func(b []byte) { _, _ = up.Write(b) })
	}
}

// flow returns the upstream socket for a client, making it (and its reader)
// on the client's first datagram; nil once closed.
func (p *UDP) flow(from *net.UDPAddr) *net.UDPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if f, ok := p.flows[from.String()]; ok {
		return f
	}
	up, err := net.DialUDP("udp", nil, p.upstream)
	if err != nil {
		return nil
	}
	_ = up.SetReadBuffer(socketBuffer)
	p.flows[from.String()] = up
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, err := up.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP port unreachable while the server restarts
			}
			p.send(buf[:n], func(b []byte) { _, _ = p.conn.WriteToUDP(b, from) })
		}
	}()
	return up
}

// send applies the faults to one datagram: drop, or deliver each copy after
// its delay (a copy of the bytes, as buf is reused).
func (p *UDP) send(buf []byte, write func([]byte)) {
	for _, d := range p.state.plan() {
		if d == 0 {
			write(buf)
			continue
		}
		b := append([]byte(nil), buf...)
		p.pending.Add(1)
		time.AfterFunc(d, func() {
			defer p.pending.Done()
			write(b)
		})
	}
}
