package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/testenv"
)

const testToken = "s3cret-token"

// call sends method path with body and the token (none when ""), and
// returns the status, the headers and the decoded {"error": ...} if any.
func (d *adminDaemon) call(t *testing.T, method, path, token, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, d.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func errorOf(t *testing.T, body []byte) string {
	t.Helper()
	var v struct{ Error string }
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("answer is not JSON (%v): %s", err, body)
	}
	return v.Error
}

func backendAddrs(s admin.Service) []string {
	var out []string
	for _, b := range s.Backends {
		out = append(out, b.Addr)
	}
	return slices.Sorted(slices.Values(out))
}

// mutations are one call of every mutating endpoint, each of which would
// change the running state if it were let through.
func mutations(backend string) []struct{ method, path, body string } {
	return []struct{ method, path, body string }{
		{http.MethodPost, "/v1/reload", ""},
		{http.MethodPut, "/v1/services/web/backends", `{"backends": ["127.0.0.1:1"]}`},
		{http.MethodPost, "/v1/services/web/backends/" + backend + "/drain", ""},
		{http.MethodDelete, "/v1/services/web/backends/" + backend + "/drain", ""},
	}
}

// TestAdminMutationsRefused: without a configured token every mutating
// call answers 403 pointing at --admin-token-file; with one, a missing or
// wrong token answers 401 with a Bearer challenge; nothing changes.
func TestAdminMutationsRefused(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	yaml := fmt.Sprintf("services: [{name: web, listen: 127.0.0.1:0, backends: [%q]}]\n", echo)
	other := fmt.Sprintf("services: [{name: other, listen: 127.0.0.1:0, backends: [%q]}]\n", echo)

	check := func(t *testing.T, d *adminDaemon, token string, want int, wantMsg string) {
		d.setNext(other) // what a reload that got through would load
		for _, m := range mutations(echo) {
			code, h, body := d.call(t, m.method, m.path, token, m.body)
			msg := errorOf(t, body)
			if code != want || !strings.Contains(msg, wantMsg) {
				t.Errorf("%s %s (token %q) = %d %q, want %d with %q", m.method, m.path, token, code, msg, want, wantMsg)
			}
			if want == http.StatusUnauthorized && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s: WWW-Authenticate %q, want a Bearer challenge", m.method, m.path, h.Get("WWW-Authenticate"))
			}
		}
		svcs := d.services(t)
		web, ok := svcs["web"]
		if len(svcs) != 1 || !ok || !slices.Equal(backendAddrs(web), []string{echo}) || web.Backends[0].Draining {
			t.Errorf("services changed after refused calls: %+v", svcs)
		}
		if got := value(d.scrape(t), "attache_reload_total", map[string]string{"result": "success"}); got != 0 {
			t.Errorf("attache_reload_total{success} = %v after refused reloads, want 0", got)
		}
	}
	t.Run("no token configured", func(t *testing.T) {
		d := startAdminDaemon(t, yaml)
		check(t, d, testToken, http.StatusForbidden, "--admin-token-file")
	})
	t.Run("no token sent", func(t *testing.T) {
		d := startAdminDaemonToken(t, yaml, testToken)
		check(t, d, "", http.StatusUnauthorized, "missing bearer token")
	})
	t.Run("wrong token", func(t *testing.T) {
		d := startAdminDaemonToken(t, yaml, testToken)
		check(t, d, "s3cret-tokeN", http.StatusUnauthorized, "wrong bearer token")
	})
}

// TestAdminReload: POST /v1/reload runs the reload transaction and says
// what changed; a bad configuration answers 422 with the config error and
// leaves the running one serving.
func TestAdminReload(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	d := startAdminDaemonToken(t, fmt.Sprintf("services: [{name: web, listen: 127.0.0.1:0, backends: [%q]}]\n", echo), testToken)

	d.setNext("services: [{name: bad, listen: 127.0.0.1:0, backends: [nowhere]}]\nbogus: 1\n")
	code, _, body := d.call(t, http.MethodPost, "/v1/reload", testToken, "")
	if msg := errorOf(t, body); code != http.StatusUnprocessableEntity || !strings.Contains(msg, "bogus") || !strings.Contains(msg, "keeps serving") {
		t.Errorf("reload of a bad config = %d %q, want 422 naming the bad key", code, msg)
	}
	if err := <-d.reloaded; err == nil {
		t.Error("Reloaded heard success for a bad config")
	}
	if svcs := d.services(t); len(svcs) != 1 || svcs["web"].Name != "web" {
		t.Errorf("services after a failed reload: %+v, want web unchanged", svcs)
	}

	d.setNext(fmt.Sprintf("services: [{name: web2, listen: 127.0.0.2:0, backends: [%q]}]\n", echo))
	code, _, body = d.call(t, http.MethodPost, "/v1/reload", testToken, "")
	var sum struct {
		Reloaded       bool
		Services       int
		Added, Removed []string
	}
	if err := json.Unmarshal(body, &sum); err != nil || code != http.StatusOK {
		t.Fatalf("reload = %d %s (%v)", code, body, err)
	}
	if !sum.Reloaded || sum.Services != 1 || !slices.Equal(sum.Added, []string{"web2"}) || !slices.Equal(sum.Removed, []string{"web"}) {
		t.Errorf("reload summary %+v, want web2 added and web removed", sum)
	}
	<-d.reloaded
	if svcs := d.services(t); len(svcs) != 1 || svcs["web2"].Name != "web2" {
		t.Errorf("services after reload: %+v, want web2 alone", svcs)
	}
	fams := d.scrape(t)
	if s, f := value(fams, "attache_reload_total", map[string]string{"result": "success"}),
		value(fams, "attache_reload_total", map[string]string{"result": "failure"}); s != 1 || f != 1 {
		t.Errorf("attache_reload_total: success %v failure %v, want 1 and 1", s, f)
	}
}

// TestAdminSetBackendsBadInput: every malformed body or unknown target is
// a 4xx that says what is wrong, and the backends stay as they were.
func TestAdminSetBackendsBadInput(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	d := startAdminDaemonToken(t, fmt.Sprintf("services: [{name: web, listen: 127.0.0.1:0, backends: [%q]}]\n", echo), testToken)
	for _, tc := range []struct {
		name, path, body string
		code             int
		want             string
	}{
		{"bad json", "/v1/services/web/backends", `{"backends": [`, 400, "request body"},
		{"not an object", "/v1/services/web/backends", `["127.0.0.1:1"]`, 400, "request body"},
		{"unknown field", "/v1/services/web/backends", `{"backends": [], "extra": 1}`, 400, `unknown field "extra"`},
		{"unknown backend field", "/v1/services/web/backends", `{"backends": [{"addr": "127.0.0.1:1", "wieght": 2}]}`, 400, `unknown field "wieght"`},
		{"missing backends", "/v1/services/web/backends", `{}`, 400, `missing "backends"`},
		{"trailing data", "/v1/services/web/backends", `{"backends": ["127.0.0.1:1"]} {}`, 400, "more after it"},
		{"bad address", "/v1/services/web/backends", `{"backends": ["127.0.0.1:1", "nohostport"]}`, 400, "backends[1]: want host:port"},
		{"bad port", "/v1/services/web/backends", `{"backends": ["127.0.0.1:70000"]}`, 400, "backends[0]"},
		{"weight too high", "/v1/services/web/backends", `{"backends": [{"addr": "127.0.0.1:1", "weight": 10001}]}`, 400, "weight: want 1 to 10000, got 10001"},
		{"negative weight", "/v1/services/web/backends", `{"backends": [{"addr": "127.0.0.1:1", "weight": -1}]}`, 400, "weight"},
		{"weight zero", "/v1/services/web/backends", `{"backends": ["127.0.0.1:2", {"addr": "127.0.0.1:1", "weight": 0}]}`, 400, "backends[1] (127.0.0.1:1): weight: want 1 to 10000, got 0"},
		{"duplicate", "/v1/services/web/backends", `{"backends": ["127.0.0.1:1", {"addr": "127.0.0.1:1"}]}`, 400, "listed twice"},
		{"empty static list", "/v1/services/web/backends", `{"backends": []}`, 400, "at least one backend"},
		{"too large", "/v1/services/web/backends", `{"backends": ["` + strings.Repeat("a", admin.MaxBodyBytes) + `"]}`, 413, "larger than"},
		{"unknown service", "/v1/services/nope/backends", `{"backends": ["127.0.0.1:1"]}`, 404, `no service "nope" (services: web)`},
	} {
		code, _, body := d.call(t, http.MethodPut, tc.path, testToken, tc.body)
		if msg := errorOf(t, body); code != tc.code || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, code, msg, tc.code, tc.want)
		}
	}
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{http.MethodPost, "/v1/services/web/backends/127.0.0.1:1/drain", 404, "has no backend 127.0.0.1:1 (it has " + echo + ")"},
		{http.MethodPost, "/v1/services/nope/backends/" + echo + "/drain", 404, `no service "nope"`},
		{http.MethodPost, "/v1/services/web/backends/nohostport/drain", 400, "want host:port"},
		{http.MethodGet, "/v1/services/web/backends", 405, "use PUT"},
		{http.MethodGet, "/v1/reload", 405, "use POST"},
	} {
		code, _, body := d.call(t, tc.method, tc.path, testToken, "")
		if msg := errorOf(t, body); code != tc.code || !strings.Contains(msg, tc.want) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, code, msg, tc.code, tc.want)
		}
	}
	if got := backendAddrs(d.services(t)["web"]); !slices.Equal(got, []string{echo}) {
		t.Errorf("backends after refused calls: %v, want [%s]", got, echo)
	}
}

// TestAdminSetBackendsUnderLoad rewires a service's static backends at
// runtime, many times, while traffic flows: no connection fails, no stream
// drops; a reload then ends the override.
func TestAdminSetBackendsUnderLoad(t *testing.T) {
	w := watchRoutes(t)
	pool := echoPool(t, 4)
	yaml := fmt.Sprintf("services: [{name: s, listen: 127.0.0.1:0, backends: [%s, %s]}]\n", pool[0], pool[1])
	d := startAdminDaemonToken(t, yaml, testToken)
	w.waitFor(t, "s", pool[0], pool[1])
	tr := testenv.StartTraffic(t, d.bound[0].Addr.String(), 4, 4)
	const changes = 30
	for i := 1; i <= changes; i++ {
		pair := pairAt(pool, i)
		body := fmt.Sprintf(`{"backends": [%q, {"addr": %q, "weight": %d}]}`, pair[0], pair[1], 1+i%3)
		code, _, resp := d.call(t, http.MethodPut, "/v1/services/s/backends", testToken, body)
		if code != http.StatusOK {
			t.Fatalf("change %d: %d %s", i, code, resp)
		}
		w.waitFor(t, "s", pair...)
		tr.AwaitProgress(4)
	}
	checkTraffic(t, tr.Stop())
	last := pairAt(pool, changes)
	s := d.services(t)["s"]
	if !slices.Equal(backendAddrs(s), slices.Sorted(slices.Values(last))) {
		t.Errorf("/v1/services shows %v, want %v", backendAddrs(s), last)
	}
	for _, b := range s.Backends {
		if b.Addr == last[1] && b.Weight != 1+changes%3 {
			t.Errorf("backend %s weight %d, want %d", b.Addr, b.Weight, 1+changes%3)
		}
	}
	// The override lasts until the next reload, which restores the file's backends.
	if err := d.reload(yaml); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "s", pool[0], pool[1])
}

// TestAdminDrain: a drained backend gets no new connections while one
// already open to it carries on; undraining brings it back.
func TestAdminDrain(t *testing.T) {
	a, b := testenv.Echo(t, "127.0.0.1:0"), testenv.Echo(t, "127.0.0.1:0")
	d := startAdminDaemonToken(t, fmt.Sprintf("services: [{name: web, listen: 127.0.0.1:0, balance: round_robin, backends: [%q, %q]}]\n", a, b), testToken)
	addr := d.bound[0].Addr.String()
	active := func() map[string]admin.Backend {
		out := map[string]admin.Backend{}
		for _, be := range d.services(t)["web"].Backends {
			out[be.Addr] = be
		}
		return out
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		echoOnce(t, c, "ping")
		return c
	}
	held := dial()
	var drained, other string
	testenv.WaitFor(t, "the held connection to count against a backend", func() bool {
		bs := active()
		switch {
		case bs[a].Active == 1:
			drained, other = a, b
		case bs[b].Active == 1:
			drained, other = b, a
		}
		return drained != ""
	})
	code, _, body := d.call(t, http.MethodPost, "/v1/services/web/backends/"+drained+"/drain", testToken, "")
	if code != http.StatusOK {
		t.Fatalf("drain: %d %s", code, body)
	}
	const n = 6
	for range n {
		dial()
	}
	testenv.WaitFor(t, "the new connections to be counted", func() bool { return active()[other].Active == n })
	bs := active()
	if be := bs[drained]; !be.Draining || be.Active != 1 {
		t.Errorf("drained backend %+v, want draining with its 1 open connection", be)
	}
	if bs[other].Draining {
		t.Errorf("backend %s shows draining", other)
	}
	echoOnce(t, held, "still here") // the open connection carries on

	code, _, body = d.call(t, http.MethodDelete, "/v1/services/web/backends/"+drained+"/drain", testToken, "")
	if code != http.StatusOK {
		t.Fatalf("undrain: %d %s", code, body)
	}
	// The same state comes back: the held connection still counts.
	if be := active()[drained]; be.Draining || be.Active != 1 {
		t.Errorf("undrained backend %+v, want in rotation with its 1 open connection", be)
	}
	before := active()[drained].Active
	for range 2 { // round robin: one of two new connections goes to it
		dial()
	}
	testenv.WaitFor(t, "the undrained backend to take a new connection", func() bool { return active()[drained].Active > before })
	echoOnce(t, held, "and still")
}

func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}
