package daemon

import (
	"time"

	"github.com/attache/attache/internal/admin"
)

var _ admin.ConnectionLister = adminState{}

// Connections lists the open proxied connections for GET /v1/connections.
func (a adminState) Connections() []admin.Connection {
	now := time.Now()
	cs := a.d.proxy.Connections()
	out := make([]admin.Connection, len(cs))
	for i, c := range cs {
		out[i] = admin.Connection{
			ID: c.ID, Service: c.Service, Listen: c.Listener.Addr().String(), Client: c.Client,
			Backend: c.Backend, Start: c.Start, Seconds: now.Sub(c.Start).Seconds(),
			BytesIn: c.BytesIn, BytesOut: c.BytesOut,
		}
	}
	return out
}
