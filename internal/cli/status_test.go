package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/attache/attache/internal/testenv"
)

// startAttache runs the whole command in-process with extra args and
// returns the admin API's address; it stops when the test ends.
func startAttache(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	adminAddr := make(chan net.Addr, 1)
	done := make(chan int, 1)
	var errb bytes.Buffer
	go func() {
		done <- Main(ctx, Env{Args: args, Stdout: &bytes.Buffer{}, Stderr: &errb,
			AdminReady: func(a net.Addr) { adminAddr <- a }})
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != ExitOK {
			t.Errorf("attache exit %d", code)
		}
	})
	select {
	case a := <-adminAddr:
		return a.String()
	case code := <-done:
		t.Fatalf("attache exit %d before the admin API listened: %s", code, errb.String())
	}
	return ""
}

func TestStatus(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	admin := startAttache(t, "--admin", "127.0.0.1:0", "--forward", "127.0.0.1:0="+echo, "--env-links=false")

	code, out, errs := run(t, nil, "status", "--admin", admin)
	if code != ExitOK {
		t.Fatalf("status exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "SERVICE") || !strings.Contains(lines[0], "HEALTHY") {
		t.Fatalf("status table:\n%s\nwant a header and one backend row", out)
	}
	for _, want := range []string{"forward-", "127.0.0.1:", echo, " yes ", "0/0"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("status row %q lacks %q", lines[1], want)
		}
	}

	code, out, errs = run(t, nil, "status", "--admin", admin, "--json")
	var v struct {
		Services []struct {
			Name     string
			Backends []struct{ Addr string }
		}
	}
	if code != ExitOK || json.Unmarshal([]byte(out), &v) != nil || len(v.Services) != 1 || v.Services[0].Backends[0].Addr != echo {
		t.Errorf("status --json: exit %d, %s %s", code, out, errs)
	}
}

func TestStatusUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // a port nothing listens on
	code, _, errs := run(t, nil, "status", "--admin", addr)
	if code != ExitRuntime || !strings.Contains(errs, "cannot reach the admin API at "+addr) {
		t.Errorf("status of nothing: exit %d, stderr %q; want 1 saying it cannot reach %s", code, errs, addr)
	}
}

// TestAdminTokenFile: a missing or empty token file fails at start naming
// the flag and the path; a good one enables the mutating calls.
func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	good := filepath.Join(dir, "token")
	os.WriteFile(empty, []byte("  \n"), 0o600)
	os.WriteFile(good, []byte("tok-123\n"), 0o600)
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"missing", []string{"--admin", "127.0.0.1:0", "--admin-token-file", missing}, []string{"--admin-token-file", missing}},
		{"empty", []string{"--admin", "127.0.0.1:0", "--admin-token-file", empty}, []string{"--admin-token-file", empty, "empty"}},
		{"without --admin", []string{"--admin-token-file", good}, []string{"--admin-token-file", "needs --admin"}},
	} {
		code, _, errs := run(t, nil, append(tc.args, "--env-links=false", "--forward", "127.0.0.1:0=127.0.0.1:1")...)
		if code != ExitUsage {
			t.Errorf("%s: exit %d, want %d", tc.name, code, ExitUsage)
		}
		for _, w := range tc.want {
			if !strings.Contains(errs, w) {
				t.Errorf("%s: stderr %q lacks %q", tc.name, errs, w)
			}
		}
	}

	admin := startAttache(t, "--admin", "127.0.0.1:0", "--admin-token-file", good,
		"--forward", "127.0.0.1:0=127.0.0.1:1", "--env-links=false")
	for token, want := range map[string]int{"": http.StatusUnauthorized, "nope": http.StatusUnauthorized, "tok-123": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/v1/reload", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("reload with token %q: %d, want %d", token, resp.StatusCode, want)
		}
	}
}
