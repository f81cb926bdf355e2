package faultproxy

import (
	"errors"
	"io"
	"net"
	"sync"
)

// TCP forwards connections to one upstream address. Of the faults only
// Partition applies: while it is in force, accepted connections are held
// (no upstream dial) and no bytes move in either direction, as across a
// cut link; nothing is lost, and it all flows once the partition heals
// (unless an endpoint gave up and closed in the meantime).
type TCP struct {
	state    *faultState
	ln       net.Listener
	upstream string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// ListenTCP starts a proxy on listen towards upstream.
func ListenTCP(listen, upstream string) (*TCP, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &TCP{state: newFaultState(0), ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients connect to.
func (p *TCP) Addr() string { return p.ln.Addr().String() }

// Set replaces the faults in force (only Partition has an effect).
func (p *TCP) Set(f Faults) { p.state.set(f) }

// Stats returns the counters so far (Forwarded counts chunks).
func (p *TCP) Stats() Stats { return p.state.snapshot() }

// Open is the number of client connections currently proxied.
func (p *TCP) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Close stops accepting and closes every proxied connection.
func (p *TCP) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	err := p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.state.set(Faults{}) // release held copiers
	p.wg.Wait()
	return err
}

func (p *TCP) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *TCP) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *TCP) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *TCP) serve(client net.Conn) {
	defer p.wg.Done()
	<-p.state.waitHealed() // a partition holds new connections too
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(client) || !p.track(up) {
		_ = up.Close()
		p.untrack(client)
		return
	}
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); p.pipe(up, client) }()
	go func() { defer both.Done(); p.pipe(client, up) }()
	both.Wait()
	p.untrack(client)
	p.untrack(up)
}

// pipe copies src to dst, waiting out partitions between a read and its
// write (so bytes read just before a partition are held, not lost).
func (p *TCP) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		<-p.state.waitHealed()
		n, err := src.Read(buf)
		if n > 0 {
			<-p.state.waitHealed()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
			p.state.mu.Lock()
			p.state.stats.Forwarded++
			p.state.mu.Unlock()
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
					return
				}
			}
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
}
