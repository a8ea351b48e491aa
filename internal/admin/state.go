package admin

import "time"

// State is what the admin API serves, supplied by the daemon. admin never
// imports daemon: the daemon builds these values from its own state when a
// request arrives, so the data path does no extra work for the API.
//
// Implementations must be safe for concurrent use; every method is called
// from HTTP handler goroutines.
type State interface {
	// Ready returns nil when attache is ready to take traffic (every
	// listener open, every discovery provider has sent its first
	// snapshot), or the reason it is not.
	Ready() error
	// Services returns every served service, sorted by name.
	Services() []Service
	// Discovery returns every running discovery provider, in start order.
	Discovery() []Provider
}

// Service is one served listener and what it forwards to.
type Service struct {
	Name string `json:"name"`
	// Listen is the bound address (the real port when the config said 0).
	Listen  string `json:"listen"`
	Balance string `json:"balance"`
	// Discovery lists the service's discovery entries as configured, e.g.
	// "srv://_redis._tcp.example"; empty for a static service.
	Discovery   []string  `json:"discovery"`
	Backends    []Backend `json:"backends"`
	Connections Counters  `json:"connections"`
	// Protocol is "tcp" or "udp". For a UDP service, Connections counts
	// sessions (accepted: created, active: open, limited: datagrams
	// dropped because the session table was full) and UDP has the rest.
	Protocol string       `json:"protocol"`
	UDP      *UDPCounters `json:"udp,omitempty"`
}

// Check verdicts of a backend's active health checks.
const (
	CheckPassing = "passing"
	CheckFailing = "failing"
	CheckOff     = "off" // the service has no active checks
)

// Backend is one backend of a service with its live state.
type Backend struct {
	Addr     string `json:"addr"`
	Weight   int    `json:"weight"`
	Priority int    `json:"priority"`
	// Healthy is what the balancing policies see: the active checks pass
	// (or there are none) and the backend is not passively ejected.
	Healthy bool `json:"healthy"`
	// Check is the active checks' verdict: CheckPassing, CheckFailing or
	// CheckOff.
	Check string `json:"check"`
	// LastError is why the last active probe failed; empty when it passed.
	LastError string `json:"last_error,omitempty"`
	// LastCheck is when the last active probe ended.
	LastCheck time.Time `json:"last_check,omitzero"`
	// EjectedUntil is when passive ejection ends; absent when not ejected.
	EjectedUntil    time.Time `json:"ejected_until,omitzero"`
	PassiveFailures int64     `json:"passive_failures"`
	// Active is the number of proxied connections open to the backend.
	Active int64 `json:"active"`
	// Draining is true while the backend is out of rotation by a drain
	// call: it gets no new connections, its open ones carry on.
	Draining bool `json:"draining"`
	// Totals since attache first saw the backend: dials that connected,
	// dials that failed, passive ejections begun.
	Connections int64 `json:"connections_total"`
	DialErrors  int64 `json:"dial_errors_total"`
	Ejections   int64 `json:"ejections_total"`
}

// Counters are a listener's connection counters since it opened.
type Counters struct {
	Accepted   int64 `json:"accepted"`
	Active     int64 `json:"active"`
	Failed     int64 `json:"failed"`
	NoBackend  int64 `json:"no_backend"`
	Retried    int64 `json:"retried"`
	DialErrors int64 `json:"dial_errors"`
	BytesIn    int64 `json:"bytes_in"`  // client to backend
	BytesOut   int64 `json:"bytes_out"` // backend to client
	Limited    int64 `json:"limited"`
	// ProxyRejected are connections closed for a missing or malformed
	// PROXY protocol header, or from an untrusted peer (accept_proxy).
	ProxyRejected int64 `json:"proxy_rejected"`
}

// Provider is one discovery provider.
type Provider struct {
	Name string `json:"name"`
	// Reported is true once the provider has sent its first snapshot.
	Reported bool `json:"reported"`
	// Up is true when the provider's last contact with its source worked.
	Up bool `json:"up"`
	// Status is the provider's own Status(), whose shape depends on the
	// kind of provider.
	Status any `json:"status"`
}
