package admin

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// ConnectionLister is the optional part of State that lists open
// connections; a State without it answers /v1/connections with 501.
type ConnectionLister interface {
	// Connections returns the open connections, oldest first.
	Connections() []Connection
}

// Connection is one open proxied connection.
type Connection struct {
	// ID numbers connections in the order they were accepted.
	ID      uint64 `json:"id"`
	Service string `json:"service"`
	Listen  string `json:"listen"`
	// Client is the client's address (the one a PROXY protocol header
	// gave, when the listener accepts them).
	Client string `json:"client"`
	// Backend is empty while the connection is still dialling.
	Backend string    `json:"backend"`
	Start   time.Time `json:"start"`
	// Seconds is how long the connection has been open.
	Seconds float64 `json:"seconds"`
	// Bytes moved so far: in is client to backend, out the other way.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// defaultConnectionLimit bounds a listing unless ?limit= says otherwise:
// a busy ambassador has tens of thousands of connections, and a script
// polling the API should not receive megabytes by accident.
const defaultConnectionLimit = 1000

// connections serves GET /v1/connections[?service=NAME][&limit=N]: the
// open connections, oldest first, at most limit of them (0: all), with
// the number that matched.
func (s *Server) connections(w http.ResponseWriter, r *http.Request) {
	cl, ok := s.State.(ConnectionLister)
	if !ok {
		writeError(w, http.StatusNotImplemented, "this attache does not list connections")
		return
	}
	limit := defaultConnectionLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: want a whole number ≥ 0 (0 for all), got %q", v))
			return
		}
		limit = n
	}
	service := r.URL.Query().Get("service")
	if service != "" && !s.hasService(service) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no service %q", service))
		return
	}
	all := cl.Connections()
	out := make([]Connection, 0, min(len(all), max(limit, 0)))
	matched := 0
	for _, c := range all {
		if service != "" && c.Service != service {
			continue
		}
		matched++
		if limit == 0 || len(out) < limit {
			out = append(out, c)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"connections": out, "total": matched, "truncated": len(out) < matched})
}

func (s *Server) hasService(name string) bool {
	for _, svc := range s.State.Services() {
		if svc.Name == name {
			return true
		}
	}
	return false
}
