package daemon

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
)

var _ admin.Control = adminState{}

// Reload hands the reload to Run's loop, which also runs SIGHUP reloads,
// and waits for its result: the two never interleave.
func (a adminState) Reload(ctx context.Context) (admin.ReloadSummary, error) {
	req := reloadRequest{reply: make(chan reloadReply, 1)}
	select {
	case a.d.reloadReq <- req:
	case <-a.d.stopped:
		return admin.ReloadSummary{}, admin.Errorf(http.StatusServiceUnavailable, "reload: attache is shutting down")
	case <-ctx.Done():
		return admin.ReloadSummary{}, ctx.Err()
	}
	var r reloadReply
	select {
	case r = <-req.reply:
	case <-ctx.Done():
		// The reload carries on; only the caller stopped waiting.
		return admin.ReloadSummary{}, ctx.Err()
	}
	if r.err == nil {
		return r.sum, nil
	}
	status := http.StatusInternalServerError
	switch {
	case errors.Is(r.err, errNoSource):
		status = http.StatusNotImplemented
	case errors.As(r.err, new(*configError)):
		status = http.StatusUnprocessableEntity
	}
	return admin.ReloadSummary{}, admin.Errorf(status, "%v; the running configuration keeps serving", r.err)
}

// SetBackends replaces a service's static backends until the next reload.
// The route is swapped like any rebuild: connections in flight keep the
// backend they have (unless the service sets close_on_remove).
func (a adminState) SetBackends(service string, specs []admin.BackendSpec) error {
	d := a.d
	d.mu.Lock()
	defer d.mu.Unlock()
	sv, err := d.controlled(service)
	if err != nil {
		return err
	}
	return sv.setBackends(d, specs)
}

// Drain takes addr out of service's rotation (on) or puts it back. A
// drained backend gets no new connections, its open ones carry on, and it
// stays drained across reloads and discovery changes until undrained or
// its service is removed. Undraining puts the same backend state back in
// rotation: its open connections, health verdict and ejection carry on.
func (a adminState) Drain(service, addr string, on bool) error {
	d := a.d
	canon, err := config.ParseHostPort(addr)
	if err != nil {
		return admin.Errorf(http.StatusBadRequest, "backend address: %v", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sv, err := d.controlled(service)
	if err != nil {
		return err
	}
	return sv.drain(d, canon, on)
}

// withoutDrained splits eps into those in rotation and the drained ones'
// backends (the state their open connections hold); d.mu is held.
func (d *daemon) withoutDrained(service string, eps []backend.Endpoint) ([]backend.Endpoint, []*backend.Backend) {
	drained := d.drained[service]
	if len(drained) == 0 {
		return eps, nil
	}
	var keep []backend.Endpoint
	var out []*backend.Backend
	for _, ep := range eps {
		if b, ok := drained[ep.Addr]; ok {
			if !slices.Contains(out, b) {
				out = append(out, b)
			}
			continue
		}
		keep = append(keep, ep)
	}
	return keep, out
}

func hasDiscovery(s config.Service) bool {
	for _, b := range s.Backends {
		if b.Discover != nil {
			return true
		}
	}
	return false
}
