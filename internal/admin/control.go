package admin

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/attache/attache/internal/config"
)

// Control is what the mutating endpoints ask the daemon to do. Like State
// it is supplied by the daemon, so admin never imports it. Errors that
// carry an HTTP status are *Error; any other error answers 500.
type Control interface {
	// Reload runs the same transaction as SIGHUP, serialized with it. On
	// error the running configuration is unchanged.
	Reload(ctx context.Context) (ReloadSummary, error)
	// SetBackends replaces service's static backends until the next
	// reload; discovered backends are kept.
	SetBackends(service string, backends []BackendSpec) error
	// Drain takes addr out of service's rotation (on) or puts it back;
	// open connections to it carry on either way.
	Drain(service, addr string, on bool) error
}

// ReloadSummary is what a successful reload changed.
type ReloadSummary struct {
	Services int      `json:"services"`
	Added    []string `json:"added"`
	Removed  []string `json:"removed"`
}

// BackendSpec is one backend of a PUT .../backends body: either a
// "host:port" string or {"addr": "host:port", "weight": N}.
type BackendSpec struct {
	Addr   string `json:"addr"`
	Weight int    `json:"weight,omitempty"` // 0: not given, which means 1
	// weightGiven tells an explicit "weight": 0, which is out of range,
	// from a weight left out.
	weightGiven bool
}

// UnmarshalJSON accepts the string and the object form; the object form
// refuses unknown fields, like the body around it.
func (b *BackendSpec) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		*b = BackendSpec{}
		return json.Unmarshal(data, &b.Addr)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p struct {
		Addr   string `json:"addr"`
		Weight *int   `json:"weight"`
	}
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("want \"host:port\" or {\"addr\": \"host:port\", \"weight\": N}: %w", err)
	}
	*b = BackendSpec{Addr: p.Addr, weightGiven: p.Weight != nil}
	if p.Weight != nil {
		b.Weight = *p.Weight
	}
	return nil
}

// Error is an error that carries the HTTP status it answers with
// (toxiproxy's ApiError).
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Errorf returns an *Error with status.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// MaxBodyBytes bounds a request body; larger ones answer 413.
const MaxBodyBytes = 1 << 20

// MaxWeight is the largest backend weight the API accepts.
const MaxWeight = 10000

// authorized reports whether r may change anything, answering the refusal
// itself when not: 403 when no token is configured (mutations are off),
// 401 with a Bearer challenge when the token is missing or wrong.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.Token == "" {
		writeError(w, http.StatusForbidden, fmt.Sprintf("%s %s: mutating calls are disabled; start attache with --admin-token-file to enable them", r.Method, r.URL.Path))
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	// ConstantTimeCompare: the answer must not leak how much of the
	// token a guess got right.
	if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.Token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="attache"`)
		msg := "missing bearer token: send Authorization: Bearer <token>"
		if ok {
			msg = "wrong bearer token"
		}
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, msg))
		return false
	}
	if s.Control == nil {
		writeError(w, http.StatusNotImplemented, "this server has no control over the daemon")
		return false
	}
	return true
}

// mutating wraps a handler of a changing call with the token check.
func (s *Server) mutating(h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(w, r) {
			return
		}
		if err := h(w, r); err != nil {
			status := http.StatusInternalServerError
			if e, ok := errors.AsType[*Error](err); ok {
				status = e.Status
			}
			s.logger().Warn("admin call refused", "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
			writeError(w, status, err.Error())
			return
		}
		s.logger().Info("admin call", "method", r.Method, "path", r.URL.Path)
	}
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) error {
	sum, err := s.Control.Reload(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"reloaded": true, "services": sum.Services,
		"added": nonNil(sum.Added), "removed": nonNil(sum.Removed)})
	return nil
}

func (s *Server) putBackends(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	specs, err := decodeBackends(w, r)
	if err != nil {
		return err
	}
	if err := s.Control.SetBackends(name, specs); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"service": name, "backends": specs,
		"note": "static backends overridden until the next reload"})
	return nil
}

func (s *Server) drain(on bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		name, addr := r.PathValue("name"), r.PathValue("addr")
		if err := s.Control.Drain(name, addr, on); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]any{"service": name, "backend": addr, "draining": on})
		return nil
	}
}

// decodeBackends reads and validates a {"backends": [...]} body.
func decodeBackends(w http.ResponseWriter, r *http.Request) ([]BackendSpec, error) {
	var body struct {
		Backends *[]BackendSpec `json:"backends"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, Errorf(http.StatusRequestEntityTooLarge, "request body: larger than %d bytes", MaxBodyBytes)
		}
		return nil, Errorf(http.StatusBadRequest, "request body: want {\"backends\": [\"host:port\", {\"addr\": \"host:port\", \"weight\": N}]}: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, Errorf(http.StatusBadRequest, "request body: want a single JSON object, found more after it")
	}
	if body.Backends == nil {
		return nil, Errorf(http.StatusBadRequest, "request body: missing \"backends\"")
	}
	specs := *body.Backends
	seen := map[string]int{}
	for i := range specs {
		b := &specs[i]
		addr, err := config.ParseHostPort(b.Addr)
		if err != nil {
			return nil, Errorf(http.StatusBadRequest, "backends[%d]: %v", i, err)
		}
		if (b.weightGiven && b.Weight < 1) || b.Weight < 0 || b.Weight > MaxWeight {
			return nil, Errorf(http.StatusBadRequest, "backends[%d] (%s): weight: want 1 to %d, got %d", i, addr, MaxWeight, b.Weight)
		}
		if j, dup := seen[addr]; dup {
			return nil, Errorf(http.StatusBadRequest, "backends[%d]: %s is listed twice (also backends[%d])", i, addr, j)
		}
		seen[addr] = i
		b.Addr = addr
	}
	return specs, nil
}
