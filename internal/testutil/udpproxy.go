package testutil

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// UDPProxy forwards datagrams between clients and one UDP server until
// Blackhole is called; from then on it swallows everything in both
// directions, like a server that stopped answering (a frozen process, a
// cable pulled) without closing anything. Resume forwards again.
type UDPProxy struct {
	ln       *net.UDPConn
	upstream *net.UDPAddr
	drop     atomic.Bool

	mu      sync.Mutex
	clients map[string]*net.UDPConn // client address -> socket towards the server
	closed  bool
}

// StartUDPProxy listens on a loopback port and forwards to server
// (host:port); it is closed when the test ends.
func StartUDPProxy(t testing.TB, server string) *UDPProxy {
	t.Helper()
	up, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &UDPProxy{ln: ln, upstream: up, clients: map[string]*net.UDPConn{}}
	go p.fromClients()
	t.Cleanup(p.close)
	return p
}

// Addr is the address clients dial instead of the server's.
func (p *UDPProxy) Addr() string { return p.ln.LocalAddr().String() }

// Blackhole drops every datagram from now on, in both directions.
func (p *UDPProxy) Blackhole() { p.drop.Store(true) }

// Resume forwards again.
func (p *UDPProxy) Resume() { p.drop.Store(false) }

func (p *UDPProxy) fromClients() {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.ln.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if p.drop.Load() {
			continue
		}
		up := p.towardsServer(from)
		if up == nil {
			return
		}
		_, _ = up.Write(buf[:n])
	}
}

// towardsServer returns the client's own socket towards the server,
// opening it (and its return path) on the client's first datagram.
func (p *UDPProxy) towardsServer(client *net.UDPAddr) *net.UDPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if c, ok := p.clients[client.String()]; ok {
		return c
	}
	c, err := net.DialUDP("udp", nil, p.upstream)
	if err != nil {
		return nil
	}
	p.clients[client.String()] = c
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if p.drop.Load() {
				continue
			}
			_, _ = p.ln.WriteToUDP(buf[:n], client)
		}
	}()
	return c
}

func (p *UDPProxy) close() {
	p.mu.Lock()
	p.closed = true
	for _, c := range p.clients {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
}
