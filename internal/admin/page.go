package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/attache/attache/internal/admin/ui"
)

// Snapshot is one message of /v1/events: everything the status page shows,
// taken at one moment.
type Snapshot struct {
	Time time.Time `json:"time"`
	// Started is when the admin API started serving, which is close to
	// when attache started.
	Started time.Time `json:"started,omitzero"`
	Version string    `json:"version,omitempty"`
	// IntervalMS is the time between two snapshots, so a client can tell a
	// stream that stalled from one that is merely slow.
	IntervalMS int64      `json:"interval_ms"`
	Ready      bool       `json:"ready"`
	ReadyError string     `json:"ready_error,omitempty"`
	Services   []Service  `json:"services"`
	Providers  []Provider `json:"providers"`
}

func (s *Server) snapshot(started time.Time) Snapshot {
	snap := Snapshot{
		Time: time.Now(), Started: started, Version: s.Version,
		IntervalMS: s.eventInterval().Milliseconds(),
		Services:   nonNil(s.State.Services()), Providers: nonNil(s.State.Discovery()),
		Ready: true,
	}
	if err := s.State.Ready(); err != nil {
		snap.Ready, snap.ReadyError = false, err.Error()
	}
	return snap
}

func (s *Server) eventInterval() time.Duration {
	if s.EventInterval <= 0 {
		return time.Second
	}
	return s.EventInterval
}

// page serves the status page at "/" and its assets under /ui/. The page
// is meant for people; everything it shows is in the JSON endpoints too.
func page(w http.ResponseWriter, r *http.Request) {
	a := ui.Index()
	// Everything comes from this origin: the policy turns away any
	// injected script or a fetch elsewhere, whatever a backend's error
	// text contains.
	w.Header().Set("Content-Security-Policy",
		"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	serveAsset(w, r, a)
}

func asset(w http.ResponseWriter, r *http.Request) {
	a, ok := ui.Lookup(r.PathValue("file"))
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such asset: %s", r.URL.Path))
		return
	}
	serveAsset(w, r, a)
}

// serveAsset answers with a, or 304 when the browser's copy is current:
// "no-cache" makes the browser ask every time, and the ETag makes the
// answer a few bytes, so a new binary's assets are never served stale.
func serveAsset(w http.ResponseWriter, r *http.Request, a ui.Asset) {
	h := w.Header()
	h.Set("Content-Type", a.ContentType)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.ETag)
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, a.Name, time.Time{}, bytes.NewReader(a.Body))
}

// events streams a Snapshot every EventInterval as server-sent events,
// starting at once. It ends when the client goes away or when stop closes,
// which Serve does at the start of a shutdown: http.Server.Shutdown waits
// for handlers to return and would otherwise wait on every open page.
func (s *Server) events(stop <-chan struct{}, started time.Time) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		// Ask a buffering reverse proxy in front (nginx) to pass events on
		// as they come.
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		interval := s.eventInterval()
		// The retry field sets how soon the browser reconnects after a cut.
		if _, err := fmt.Fprintf(w, "retry: %d\n\n", interval.Milliseconds()); err != nil {
			return
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			b, err := json.Marshal(s.snapshot(started))
			if err != nil {
				s.logger().Error("encoding a status snapshot", "error", err)
				return
			}
			if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
				return // the client went away
			}
			if err := rc.Flush(); err != nil {
				if errors.Is(err, http.ErrNotSupported) {
					s.logger().Error("event stream: the response writer cannot flush", "error", err)
				}
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}
}
