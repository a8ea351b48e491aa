package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// fixed is a State with set answers; the daemon's tests cover the real one.
type fixed struct{ notReady error }

func (f fixed) Ready() error        { return f.notReady }
func (fixed) Services() []Service   { return nil }
func (fixed) Discovery() []Provider { return nil }

func serve(t *testing.T, st State) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{State: st}).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
			t.Error("admin port still open after Serve returned")
		}
	})
	return "http://" + ln.Addr().String()
}

func TestEndpoints(t *testing.T) {
	url := serve(t, fixed{notReady: errors.New("listeners are not open")})
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/healthz", http.StatusOK, `"status": "ok"`},
		{"/readyz", http.StatusServiceUnavailable, `"error": "listeners are not open"`},
		{"/v1/services", http.StatusOK, `"services": []`},
		{"/v1/discovery", http.StatusOK, `"providers": []`},
		{"/metrics", http.StatusOK, ""},
		{"/v2/services", http.StatusNotFound, `"error": "no such endpoint: /v2/services`},
	} {
		resp, err := http.Get(url + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("GET %s = %d %s, want %d with %s", tc.path, resp.StatusCode, b, tc.code, tc.want)
		}
		if tc.path != "/metrics" && (resp.Header.Get("Content-Type") != "application/json" || !json.Valid(b)) {
			t.Errorf("GET %s: not a JSON answer: %q %s", tc.path, resp.Header.Get("Content-Type"), b)
		}
	}
}

func TestReadyWhenStateSaysSo(t *testing.T) {
	url := serve(t, fixed{})
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d, want 200", resp.StatusCode)
	}
}
