package admin

// UDPCounters are a UDP service's own counters (Service.UDP). In is client
// to backend, out backend to client.
type UDPCounters struct {
	// MaxSessions is the session table's bound, Sessions what it holds now.
	MaxSessions int   `json:"max_sessions"`
	Sessions    int64 `json:"sessions"`
	// Expired sessions ended after the idle timeout; Moved ones because
	// their backend left the service or failed; Refused ones because the
	// backend's port was closed (ICMP port unreachable).
	Expired int64 `json:"expired"`
	Moved   int64 `json:"moved"`
	Refused int64 `json:"refused"`
	// Datagrams dropped: TableFull from new clients while the table was
	// full, NoBackend with no usable backend, Dropped for other reasons
	// (queue full while a session opened, send errors).
	TableFull  int64 `json:"table_full"`
	NoBackend  int64 `json:"no_backend"`
	Dropped    int64 `json:"dropped"`
	PacketsIn  int64 `json:"datagrams_in"`
	PacketsOut int64 `json:"datagrams_out"`
}
