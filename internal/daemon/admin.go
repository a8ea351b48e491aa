package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/discovery/consul"
	"github.com/attache/attache/internal/discovery/dns"
	"github.com/attache/attache/internal/discovery/docker"
	"github.com/attache/attache/internal/discovery/etcd"
)

// adminState lets the admin API and the metrics collector read the daemon
// at request time, so the data path does nothing for them.
type adminState struct{ d *daemon }

var _ admin.State = adminState{}

// Ready: every listener is open (not starting, not shutting down, none
// died) and every discovery provider has sent its first snapshot.
//
// "Sent" means the merger received it, which may be up to its debounce
// before the routes are rebuilt: waiting for the rebuild instead would
// never end for a provider whose first snapshot changes nothing (an empty
// answer, or the same endpoints a reload seeded).
func (a adminState) Ready() error {
	if pid := a.d.successor.Load(); pid != 0 {
		return fmt.Errorf("handed over to a new process (pid %d) in an upgrade; this one drains its connections", pid)
	}
	if !a.d.open.Load() {
		return errors.New("listeners are not open: attache is starting or shutting down")
	}
	for _, p := range a.d.discoveryState() {
		if !p.Reported {
			return fmt.Errorf("discovery provider %q has not sent its first snapshot yet", p.Name)
		}
	}
	return nil
}

func (a adminState) Services() []admin.Service { return a.d.services() }

func (a adminState) Discovery() []admin.Provider { return a.d.discoveryState() }

// services builds the admin view of every service, TCP and UDP, by name.
func (d *daemon) services() []admin.Service {
	now := time.Now()
	out := d.serving.adminViews(d, tcpProto, now)
	out = append(out, d.udpServing.adminViews(d, udpProto, now)...)
	slices.SortFunc(out, func(a, b admin.Service) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// backendViews is the admin view of a service's backends in rotation (set)
// and of those a drain took out, for TCP and UDP services alike.
func backendViews(set *backend.Set, draining []*backend.Backend, checked bool, now time.Time) []admin.Backend {
	out := make([]admin.Backend, 0, set.Len()+len(draining))
	for i := range set.Len() {
		b := set.At(i)
		until, failures := b.Ejection(now)
		tot := b.Totals()
		out = append(out, admin.Backend{
			Addr: b.Addr, Weight: b.EffectiveWeight(), Priority: b.Priority,
			Healthy: b.Healthy(), Check: checkVerdict(checked, b.CheckHealthy()),
			EjectedUntil: until, PassiveFailures: failures, Active: b.Active(),
			Connections: tot.Connections, DialErrors: tot.DialErrors, Ejections: tot.Ejections,
		})
	}
	for _, b := range draining {
		tot := b.Totals()
		out = append(out, admin.Backend{
			Addr: b.Addr, Weight: b.EffectiveWeight(), Priority: b.Priority, Healthy: b.Healthy(),
			Check: admin.CheckOff, Active: b.Active(), Draining: true,
			Connections: tot.Connections, DialErrors: tot.DialErrors, Ejections: tot.Ejections,
		})
	}
	return out
}

func checkVerdict(checked, passing bool) string {
	switch {
	case !checked:
		return admin.CheckOff
	case passing:
		return admin.CheckPassing
	}
	return admin.CheckFailing
}

// discoveryState reports every running provider: whether its first
// snapshot arrived, whether its source answers, and its own Status.
func (d *daemon) discoveryState() []admin.Provider {
	d.discMu.Lock()
	run := d.disc
	var got map[string]map[string][]backend.Endpoint
	if run != nil && run.merger != nil {
		got = run.merger.Snapshots()
	}
	d.discMu.Unlock()
	if run == nil {
		return []admin.Provider{}
	}
	out := make([]admin.Provider, 0, len(run.providers))
	for _, p := range run.providers {
		_, reported := got[p.Name()]
		status, up := providerStatus(p)
		out = append(out, admin.Provider{Name: p.Name(), Reported: reported, Up: reported && up, Status: status})
	}
	return out
}

// providerStatus returns a provider's own Status and whether its last
// contact with the source worked. The set of providers is closed, so a
// switch on the type is the honest way to read them.
func providerStatus(p discovery.Provider) (status any, up bool) {
	if r, ok := p.(renamed); ok {
		p = r.Provider
	}
	switch p := p.(type) {
	case *dns.Provider:
		st := p.Status()
		up = len(st) > 0
		for _, q := range st {
			up = up && q.Failures == 0 && !q.LastSuccess.IsZero()
		}
		return st, up
	case *consul.Provider:
		st := p.Status()
		up = len(st) > 0
		for _, w := range st {
			up = up && w.Failures == 0 && !w.LastSuccessAt.IsZero()
		}
		return st, up
	case *etcd.Provider:
		st := p.Status()
		return st, st.Connected
	case *docker.Provider:
		st := p.Status()
		return st, st.Connected
	}
	return nil, true
}
