// Package admin is attache's operations HTTP API: liveness and readiness
// probes, the live state of every service and discovery provider as JSON,
// Prometheus metrics, and a status page for people at "/" (assets embedded
// by package ui) that follows the same state live on /v1/events. It reads
// everything through a State the daemon supplies at request time, so it
// never imports the daemon and adds no work to the data path.
//
// Typical usage:
//
//	ln, err := net.Listen("tcp", "127.0.0.1:9901")
//	srv := &admin.Server{State: st, Gatherer: reg, Logger: log}
//	err = srv.Serve(ctx, ln) // returns once ctx is done and requests ended
//
// Errors are JSON objects carrying their HTTP status, {"error": "..."}, so
// scripts can tell a 404 from the API from a proxy's HTML error page.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server serves the admin API. Set its fields before Serve; State is
// required, a nil Gatherer serves an empty /metrics, a nil Logger logs
// nothing.
type Server struct {
	State    State
	Gatherer prometheus.Gatherer
	// Control carries out the mutating calls (reload, backends, drain);
	// nil answers them 501.
	Control Control
	// Token is the bearer token the mutating calls must present. Empty
	// turns them off: they answer 403 whatever is sent.
	Token  string
	Logger *slog.Logger
	// ShutdownTimeout bounds how long Serve waits for requests in flight
	// once ctx is done; 0 means 5s. A scrape must not hold up an exit.
	ShutdownTimeout time.Duration
	// EventInterval is the time between two snapshots on /v1/events, the
	// status page's live feed; 0 means 1s.
	EventInterval time.Duration
	// Version is shown on the status page when set.
	Version string
}

// routes are the API's paths and methods; the catch-all uses them to answer
// 405 rather than 404 for a known path asked with another method.
var routes = map[string]string{
	"/healthz":        http.MethodGet,
	"/readyz":         http.MethodGet,
	"/v1/services":    http.MethodGet,
	"/v1/discovery":   http.MethodGet,
	"/v1/connections": http.MethodGet,
	"/metrics":        http.MethodGet,
	"/v1/reload":      http.MethodPost,
	"/v1/events":      http.MethodGet,
	"/":               http.MethodGet,
}

// mutatingPaths are the changing calls, for the 404 hint and the 405s.
var mutatingPaths = map[string]string{
	"/v1/services/{name}/backends":              http.MethodPut,
	"/v1/services/{name}/backends/{addr}/drain": "POST, DELETE",
}

// Handler returns the API's handler. Its event streams end only when their
// clients go away; Serve also ends them when it shuts down.
func (s *Server) Handler() http.Handler { return s.handler(nil) }

// handler builds the mux; event streams end when stop closes.
func (s *Server) handler(stop <-chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", page)
	mux.HandleFunc("GET /ui/{file}", asset)
	mux.HandleFunc("/ui/{file}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed; use GET", r.Method, r.URL.Path))
	})
	mux.HandleFunc("GET /v1/events", s.events(stop, time.Now()))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"services": nonNil(s.State.Services())})
	})
	mux.HandleFunc("GET /v1/connections", s.connections)
	mux.HandleFunc("GET /v1/discovery", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"providers": nonNil(s.State.Discovery())})
	})
	mux.HandleFunc("POST /v1/reload", s.mutating(s.reload))
	mux.HandleFunc("PUT /v1/services/{name}/backends", s.mutating(s.putBackends))
	mux.HandleFunc("POST /v1/services/{name}/backends/{addr}/drain", s.mutating(s.drain(true)))
	mux.HandleFunc("DELETE /v1/services/{name}/backends/{addr}/drain", s.mutating(s.drain(false)))
	for p, m := range mutatingPaths {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed; use %s", r.Method, r.URL.Path, m))
		})
	}
	g := s.Gatherer
	if g == nil {
		g = prometheus.NewRegistry()
	}
	// ContinueOnError: a collector that fails must not empty the whole
	// scrape (node_exporter's habit); promhttp logs it through ErrorLog.
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      promLogger{s.logger()},
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if m, ok := routes[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed; use %s", r.Method, r.URL.Path, m))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s (try %s)", r.URL.Path, strings.Join(paths(), ", ")))
	})
	return mux
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.State.Ready(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
}

// Serve answers requests on ln until ctx is done, then shuts down: it stops
// accepting, lets requests in flight end within ShutdownTimeout, closes the
// rest, and returns. Serve closes ln. It returns nil after a shutdown
// caused by ctx, or the error that stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := make(chan struct{})
	srv := &http.Server{
		Handler:           s.handler(stop),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.logger().Handler(), slog.LevelDebug),
	}
	// Shutdown waits for handlers to return, and an event stream returns
	// only when told: end the streams as the shutdown begins.
	srv.RegisterOnShutdown(sync.OnceFunc(func() { close(stop) }))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin: serving on %s: %w", ln.Addr(), err)
	}
	return nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func paths() []string {
	out := make([]string, 0, len(routes)+len(mutatingPaths))
	for p := range routes {
		out = append(out, p)
	}
	for p := range mutatingPaths {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// writeError writes {"error": msg} with status.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": "encoding the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// promLogger adapts slog to promhttp's Println-style logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error("metrics scrape", "error", fmt.Sprint(v...)) }
