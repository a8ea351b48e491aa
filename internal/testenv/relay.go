package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Relay forwards the TCP connections made to its loopback port to a
// target, each on a connection of its own, and can cut one of them or all:
// the network between two hosts, with a cable that can be pulled for one
// connection while the others carry on, or for every one (a partition).
type Relay struct {
	// Addr is where to connect instead of the target.
	Addr string

	mu    sync.Mutex
	pairs map[string]*relayPair // by the client's address
	// cut is set while SetCut breaks the path: new connections are reset.
	cut bool
}

type relayPair struct{ client, target net.Conn }

// StartRelay relays loopback connections to target until the test ends.
func StartRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String(), pairs: map[string]*relayPair{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for _, p := range r.pairs {
			p.client.Close()
			p.target.Close()
		}
		r.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { r.serve(c, target, &wg) })
		}
	})
	return r
}

func (r *Relay) serve(c net.Conn, target string, wg *sync.WaitGroup) {
	if r.isCut() {
		reset(c)
		return
	}
	tc, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	key := c.RemoteAddr().String()
	r.mu.Lock()
	if r.cut { // cut while dialling
		r.mu.Unlock()
		reset(c)
		reset(tc)
		return
	}
	r.pairs[key] = &relayPair{client: c, target: tc}
	r.mu.Unlock()
	one := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = dst.(*net.TCPConn).CloseWrite()
	}
	wg.Go(func() { one(tc, c) })
	one(c, tc)
}

// Clients are the addresses of the connections relayed so far (as the
// relay saw them: the clients' local addresses).
func (r *Relay) Clients() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.pairs))
	for k := range r.pairs {
		out = append(out, k)
	}
	return out
}

// Cut resets the relayed connection of the client at addr, both ways.
func (r *Relay) Cut(addr string) bool {
	r.mu.Lock()
	p := r.pairs[addr]
	delete(r.pairs, addr)
	r.mu.Unlock()
	if p == nil {
		return false
	}
	reset(p.client)
	reset(p.target)
	return true
}

// SetCut breaks the path to the target (on): every relayed connection is
// reset, both ways, and so is each new one until SetCut(false) mends it.
func (r *Relay) SetCut(on bool) {
	r.mu.Lock()
	r.cut = on
	var pairs map[string]*relayPair
	if on {
		pairs, r.pairs = r.pairs, map[string]*relayPair{}
	}
	r.mu.Unlock()
	for _, p := range pairs {
		reset(p.client)
		reset(p.target)
	}
}

func (r *Relay) isCut() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cut
}

// reset closes c with a reset (RST) instead of an orderly FIN.
func reset(c net.Conn) {
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close()
}
