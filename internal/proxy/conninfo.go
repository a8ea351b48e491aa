package proxy

import (
	"cmp"
	"slices"
	"time"
)

// ConnInfo is one open connection as the admin API lists it.
type ConnInfo struct {
	// ID numbers connections in the order they were accepted, from 1,
	// for the life of the Proxy.
	ID       uint64
	Listener *Listener
	Service  string
	// Client is the client as the access log names it: the address a
	// PROXY protocol header gave, else the socket's peer.
	Client string
	// Backend is the backend's address; empty while the dial is under way.
	Backend string
	Start   time.Time
	// BytesIn and BytesOut are the bytes moved so far, client to backend
	// and back.
	BytesIn, BytesOut int64
}

// Connections lists the open connections, oldest first. It holds the
// proxy's lock only to copy the set, and each connection's own lock for a
// moment, so a listing never holds up the data path.
func (p *Proxy) Connections() []ConnInfo {
	p.mu.Lock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	out := make([]ConnInfo, 0, len(cs))
	for _, c := range cs {
		ci := ConnInfo{Listener: c.listener, Service: c.route.Service, Start: c.start}
		c.mu.Lock()
		ci.ID = c.id
		if c.target != nil {
			// The client as logs name it (a PROXY header's source, once
			// read, which happened before the backend was set).
			ci.Backend, ci.Client = c.target.Addr, c.clientName()
		}
		c.mu.Unlock()
		if ci.Client == "" {
			ci.Client = peerName(c.client) // still dialling
		}
		ci.BytesIn, ci.BytesOut = c.moved()
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b ConnInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
