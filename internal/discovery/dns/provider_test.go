package dns

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/testenv"
)

// wait is how long a test waits for a condition before giving up. It is a
// deadline, not a measurement: conditions are expected far sooner.
const wait = 20 * time.Second

func newLog() (*testenv.LogBuffer, *slog.Logger) {
	lb := &testenv.LogBuffer{}
	return lb, slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// run starts p.Run and returns the channel it sends on (unbuffered, so a
// snapshot the test has not read yet holds the provider, and a duplicate
// would be seen). Cleanup cancels Run and checks it returned nil.
func run(t *testing.T, p *Provider) <-chan discovery.Snapshot {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan discovery.Snapshot)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil after cancel", err)
			}
		case <-time.After(wait):
			t.Errorf("Run did not return within %s of cancel", wait)
		}
	})
	return out
}

func mustNew(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// next returns the next snapshot.
func next(t *testing.T, ch <-chan discovery.Snapshot) discovery.Snapshot {
	t.Helper()
	select {
	case s := <-ch:
		if s.Provider != "dns" {
			t.Errorf("snapshot Provider = %q, want dns", s.Provider)
		}
		return s
	case <-time.After(wait):
		t.Fatalf("no snapshot within %s", wait)
		return discovery.Snapshot{}
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func eps(addrs ...string) []backend.Endpoint {
	out := []backend.Endpoint{}
	for _, a := range addrs {
		out = append(out, backend.Endpoint{Addr: a})
	}
	return out
}

func checkService(t *testing.T, s discovery.Snapshot, svc string, want []backend.Endpoint) {
	t.Helper()
	got, ok := s.Services[svc]
	if !ok {
		t.Fatalf("snapshot has no service %q: %v", svc, s.Services)
	}
	if got == nil || !slices.Equal(got, want) {
		t.Fatalf("service %q = %#v, want %#v", svc, got, want)
	}
}

func TestAAndAAAAFollowChanges(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetA("web.test", "127.0.0.3", "127.0.0.2")
	d.SetAAAA("web.test", "::1")
	p := mustNew(t, Config{
		Server: d.Addr, MinTTL: 10 * time.Millisecond,
		Queries: []Query{{Service: "web", Name: "web.test", Type: A, Port: 8080}},
	})
	ch := run(t, p)

	checkService(t, next(t, ch), "web", eps("127.0.0.2:8080", "127.0.0.3:8080", "[::1]:8080"))

	d.SetA("web.test", "127.0.0.4")
	checkService(t, next(t, ch), "web", eps("127.0.0.4:8080", "[::1]:8080"))

	d.SetAAAA("web.test")
	checkService(t, next(t, ch), "web", eps("127.0.0.4:8080"))
}

// An answer that did not change must not produce a snapshot: after many
// re-queries with the same answer, the next snapshot read is the changed
// one, not a repeat.
func TestUnchangedAnswerSendsNothing(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetA("web.test", "127.0.0.2")
	p := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond,
		Queries: []Query{{Service: "web", Name: "web.test", Port: 80}},
	})
	ch := run(t, p)
	checkService(t, next(t, ch), "web", eps("127.0.0.2:80"))

	base := d.Queries("web.test")
	eventually(t, "10 more query cycles", func() bool { return d.Queries("web.test") >= base+20 })
	d.SetA("web.test", "127.0.0.5")
	checkService(t, next(t, ch), "web", eps("127.0.0.5:80"))
}

// Queries of one service are unioned; a name that does not exist is an
// authoritative answer that empties its query (logged once), and a service
// with no endpoints is present with an empty slice.
func TestQueriesUnionAndNegativeAnswers(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetA("a.test", "127.0.0.2")
	d.SetA("b.test", "127.0.0.3", "127.0.0.2")
	d.SetA("empty.test") // exists, no records: NODATA
	lb, log := newLog()
	p := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond, Logger: log,
		Queries: []Query{
			{Service: "web", Name: "a.test", Port: 80},
			{Service: "web", Name: "b.test", Port: 80},
			{Service: "web", Name: "b.test", Port: 81},
			{Service: "gone", Name: "missing.test", Port: 80},
			{Service: "none", Name: "empty.test", Port: 80},
		},
	})
	ch := run(t, p)
	s := next(t, ch)
	checkService(t, s, "web", eps("127.0.0.2:80", "127.0.0.2:81", "127.0.0.3:80", "127.0.0.3:81"))
	checkService(t, s, "gone", eps())
	checkService(t, s, "none", eps())
	if len(s.Services) != 3 {
		t.Errorf("snapshot has %d services, want 3: %v", len(s.Services), s.Services)
	}

	base := d.Queries("missing.test")
	eventually(t, "missing.test asked 5 more times", func() bool { return d.Queries("missing.test") >= base+5 })
	st := p.Status()
	if st[3].Negative != "NXDOMAIN" || st[4].Negative != "NODATA" || st[3].LastError != "" || st[3].LastSuccess.IsZero() {
		t.Errorf("status of negative queries = %+v, %+v", st[3], st[4])
	}
	if n := len(lb.Lines("level=WARN", "no usable records", "name=missing.test.", "answer=NXDOMAIN")); n != 1 {
		t.Errorf("NXDOMAIN logged %d times, want once per streak:\n%s", n, lb.Lines())
	}
	if n := len(lb.Lines("level=WARN", "no usable records", "name=empty.test.", "answer=NODATA")); n != 1 {
		t.Errorf("NODATA logged %d times, want once", n)
	}

	d.SetA("missing.test", "127.0.0.9")
	s = next(t, ch)
	checkService(t, s, "gone", eps("127.0.0.9:80"))
	checkService(t, s, "web", eps("127.0.0.2:80", "127.0.0.2:81", "127.0.0.3:80", "127.0.0.3:81"))
}

func TestSRV(t *testing.T) {
	for _, glue := range []bool{true, false} {
		t.Run(map[bool]string{true: "additional section", false: "target lookup"}[glue], func(t *testing.T) {
			d := testenv.StartDNS(t)
			d.SetGlue(glue)
			d.SetSRV("_db._tcp.test",
				testenv.SRV{Priority: 20, Weight: 1, Port: 5433, Target: "db2.test"},
				testenv.SRV{Priority: 10, Weight: 5, Port: 5432, Target: "db1.test"},
			)
			d.SetA("db1.test", "127.0.0.11")
			d.SetAAAA("db1.test", "::1")
			d.SetA("db2.test", "127.0.0.12")
			p := mustNew(t, Config{
				Server: d.Addr, MinTTL: 10 * time.Millisecond,
				Queries: []Query{{Service: "db", Name: "_db._tcp.test", Type: "srv"}},
			})
			ch := run(t, p)
			want := []backend.Endpoint{
				{Addr: "127.0.0.11:5432", Weight: 5, Priority: 10},
				{Addr: "127.0.0.12:5433", Weight: 1, Priority: 20},
				{Addr: "[::1]:5432", Weight: 5, Priority: 10},
			}
			checkService(t, next(t, ch), "db", want)
			if asked := d.Queries("db1.test"); glue && asked != 0 {
				t.Errorf("db1.test was asked %d times although the SRV answer carried its addresses", asked)
			} else if !glue && asked == 0 {
				t.Errorf("db1.test was never asked although the SRV answer did not carry its addresses")
			}

			// A new weight and a moved target both show.
			d.SetSRV("_db._tcp.test",
				testenv.SRV{Priority: 10, Weight: 7, Port: 5432, Target: "db1.test"},
				testenv.SRV{Priority: 20, Weight: 1, Port: 5433, Target: "db2.test"},
			)
			d.SetA("db2.test", "127.0.0.13")
			eventually(t, "the new SRV answer", func() bool {
				s := next(t, ch)
				return slices.Equal(s.Services["db"], []backend.Endpoint{
					{Addr: "127.0.0.11:5432", Weight: 7, Priority: 10},
					{Addr: "127.0.0.13:5433", Weight: 1, Priority: 20},
					{Addr: "[::1]:5432", Weight: 7, Priority: 10},
				})
			})
		})
	}
}

// Broken SRV records are skipped and logged once each, naming the record;
// the good ones are still used.
func TestBrokenSRVRecordsSkipped(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetGlue(false)
	d.SetSRV("_x._tcp.test",
		testenv.SRV{Priority: 1, Weight: 1, Port: 0, Target: "good.test"},
		testenv.SRV{Priority: 1, Weight: 1, Port: 9000, Target: "."},
		testenv.SRV{Priority: 1, Weight: 1, Port: 9001, Target: "missing.test"},
		testenv.SRV{Priority: 1, Weight: 2, Port: 9002, Target: "good.test"},
	)
	d.SetA("good.test", "127.0.0.20")
	lb, log := newLog()
	p := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond, Logger: log,
		Queries: []Query{{Service: "x", Name: "_x._tcp.test", Type: SRV}},
	})
	ch := run(t, p)
	checkService(t, next(t, ch), "x", []backend.Endpoint{{Addr: "127.0.0.20:9002", Weight: 2, Priority: 1}})

	base := d.Queries("_x._tcp.test")
	eventually(t, "5 more SRV queries", func() bool { return d.Queries("_x._tcp.test") >= base+5 })
	for _, want := range [][]string{
		{"_x._tcp.test. SRV 1 1 0 good.test.", "port is 0"},
		{"_x._tcp.test. SRV 1 1 9000 .", `target is \".\"`},
		{"_x._tcp.test. SRV 1 1 9001 missing.test.", "does not resolve (NXDOMAIN)"},
	} {
		if n := len(lb.Lines(append([]string{"level=WARN", "skipping bad SRV record"}, want...)...)); n != 1 {
			t.Errorf("record %q logged %d times, want once:\n%s", want[0], n, lb.Lines("skipping"))
		}
	}
	if n := len(lb.Lines("skipping")); n != 3 {
		t.Errorf("%d skipped-record lines, want 3:\n%s", n, lb.Lines("skipping"))
	}
	if st := p.Status()[0]; st.Endpoints != 1 || st.LastError != "" || st.Negative != "" {
		t.Errorf("status = %+v, want 1 endpoint and no error", st)
	}
}

// The re-query interval is the lowest TTL clamped to [MinTTL, MaxTTL]. The
// proofs count queries against a witness query that re-asks every few
// milliseconds: a name that must not be asked again before an hour passes
// stays at its first count however many times the witness asked.
func TestTTL(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetA("tick.test", "127.0.0.2") // TTL 0
	d.SetA("zero.test", "127.0.0.3") // TTL 0
	d.SetA("long.test", "127.0.0.4")
	d.SetNameTTL("long.test", 3600)
	d.SetA("mid.test", "127.0.0.5")
	d.SetNameTTL("mid.test", 7)
	d.SetSRV("_s._tcp.test", testenv.SRV{Port: 1, Target: "short.test"})
	d.SetNameTTL("_s._tcp.test", 3600)
	d.SetA("short.test", "127.0.0.6")
	d.SetNameTTL("short.test", 3)
	d.SetGlue(false)

	// The witness: TTL 0 with a 5ms floor.
	witness := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond,
		Queries: []Query{{Service: "tick", Name: "tick.test", Port: 1}},
	})
	// floor: TTL 0 under a 1h floor. honoured: TTL 3600 under a 2h ceiling.
	slow := mustNew(t, Config{
		Server: d.Addr, MinTTL: time.Hour, MaxTTL: 2 * time.Hour,
		Queries: []Query{{Service: "floor", Name: "zero.test", Port: 1}},
	})
	honoured := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond, MaxTTL: 2 * time.Hour,
		Queries: []Query{
			{Service: "long", Name: "long.test", Port: 1},
			{Service: "mid", Name: "mid.test", Port: 1},
			{Service: "srv", Name: "_s._tcp.test", Type: SRV},
		},
	})
	// ceiling: TTL 3600 under a 20ms ceiling.
	ceiling := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond, MaxTTL: 20 * time.Millisecond,
		Queries: []Query{{Service: "long", Name: "long.test", Port: 1}},
	})
	for _, p := range []*Provider{witness, slow, honoured} {
		next(t, run(t, p))
	}
	eventually(t, "the witness to ask 20 times", func() bool { return d.Queries("tick.test") >= 40 })
	if n := d.Queries("zero.test"); n != 2 {
		t.Errorf("zero.test (TTL 0, MinTTL 1h) asked %d times, want 2 (A and AAAA once)", n)
	}
	if n := d.Queries("long.test"); n != 2 {
		t.Errorf("long.test (TTL 3600) asked %d times, want 2 (A and AAAA once)", n)
	}
	for _, c := range []struct {
		p    *Provider
		i    int
		want time.Duration
	}{
		{witness, 0, 5 * time.Millisecond},
		{slow, 0, time.Hour},
		{honoured, 0, time.Hour},
		{honoured, 1, 7 * time.Second},
		{honoured, 2, 3 * time.Second}, // the target's TTL is the lowest
	} {
		if got := c.p.Status()[c.i].Interval; got != c.want {
			t.Errorf("%s interval = %s, want %s", c.p.Status()[c.i].Name, got, c.want)
		}
	}

	// The ceiling makes a TTL of an hour come back within milliseconds.
	base := d.Queries("long.test")
	next(t, run(t, ceiling))
	eventually(t, "long.test re-asked under a 20ms ceiling", func() bool { return d.Queries("long.test") >= base+6 })
	if got := ceiling.Status()[0].Interval; got != 20*time.Millisecond {
		t.Errorf("ceiling interval = %s, want 20ms", got)
	}
}

// A failing server never empties a service: the last good answer stays,
// the failure is logged once, the query is retried with back-off, and the
// new answer shows as soon as the server is back.
func TestServerFailureKeepsLastAnswer(t *testing.T) {
	for _, c := range []struct {
		name    string
		failure testenv.Failure
		errText string
	}{
		{"servfail", testenv.FailServFail, "server answered SERVFAIL"},
		{"refused", testenv.FailRefused, "server answered REFUSED"},
		{"timeout", testenv.FailDrop, "no reply in time"},
		{"garbled", testenv.FailGarbage, "bad question name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := testenv.StartDNS(t)
			d.SetA("web.test", "127.0.0.2")
			d.SetA("other.test", "127.0.0.7")
			lb, log := newLog()
			p := mustNew(t, Config{
				Server: d.Addr, MinTTL: 5 * time.Millisecond, MaxTTL: 20 * time.Millisecond,
				Timeout: 50 * time.Millisecond, Logger: log,
				Queries: []Query{
					{Service: "web", Name: "web.test", Port: 80},
					{Service: "other", Name: "other.test", Port: 80},
				},
			})
			ch := run(t, p)
			checkService(t, next(t, ch), "web", eps("127.0.0.2:80"))

			d.Fail("web.test", c.failure)
			d.SetA("web.test", "127.0.0.3") // not visible while failing
			eventually(t, "4 failures in a row", func() bool { return p.Status()[0].Failures >= 4 })
			st := p.Status()[0]
			if !strings.Contains(st.LastError, c.errText) || st.Endpoints != 1 {
				t.Errorf("status while failing = %+v, want error containing %q and the old endpoint", st, c.errText)
			}
			if st.Interval != 20*time.Millisecond {
				t.Errorf("back-off after %d failures = %s, want the 20ms ceiling", st.Failures, st.Interval)
			}
			// Another query's change still goes out, with web's last good answer.
			d.SetA("other.test", "127.0.0.8")
			s := next(t, ch)
			checkService(t, s, "other", eps("127.0.0.8:80"))
			checkService(t, s, "web", eps("127.0.0.2:80"))

			d.Fail("web.test", testenv.FailNone)
			s = next(t, ch)
			checkService(t, s, "web", eps("127.0.0.3:80"))
			if st := p.Status()[0]; st.Failures != 0 || st.LastError != "" || st.Endpoints != 1 {
				t.Errorf("status after recovery = %+v", st)
			}
			if n := len(lb.Lines("level=WARN", "dns query failed", "name=web.test.", c.errText)); n != 1 {
				t.Errorf("failure logged %d times, want once per streak:\n%s", n, lb.Lines())
			}
			if n := len(lb.Lines("level=INFO", "dns query recovered", "name=web.test.")); n != 1 {
				t.Errorf("recovery logged %d times, want once:\n%s", n, lb.Lines())
			}
		})
	}
}

// A server that fails from the start still lets the first snapshot out
// (with the service empty), and the endpoints follow once it answers.
func TestFailingFromTheStart(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetA("web.test", "127.0.0.2")
	d.Fail("", testenv.FailServFail)
	p := mustNew(t, Config{
		Server: d.Addr, MinTTL: 5 * time.Millisecond, MaxTTL: 20 * time.Millisecond,
		Queries: []Query{{Service: "web", Name: "web.test", Port: 80}},
	})
	ch := run(t, p)
	checkService(t, next(t, ch), "web", eps())
	if st := p.Status()[0]; st.Failures == 0 || !st.LastSuccess.IsZero() {
		t.Errorf("status = %+v, want failing and never answered", st)
	}
	d.Fail("", testenv.FailNone)
	checkService(t, next(t, ch), "web", eps("127.0.0.2:80"))
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	d := testenv.StartDNS(t)
	d.SetA("web.test", "127.0.0.2")
	d.SetTruncateUDP(true)
	p := mustNew(t, Config{
		Server: d.Addr, MinTTL: time.Hour, MaxTTL: time.Hour,
		Queries: []Query{{Service: "web", Name: "web.test", Port: 80}},
	})
	checkService(t, next(t, run(t, p)), "web", eps("127.0.0.2:80"))
	if udp, tcp := d.Queries("web.test")-d.TCPQueries("web.test"), d.TCPQueries("web.test"); udp != 2 || tcp != 2 {
		t.Errorf("web.test asked %d times over UDP and %d over TCP, want 2 and 2", udp, tcp)
	}
}

// Cancelling ctx ends Run even while an exchange waits on a server that
// never answers and a timeout far in the future.
func TestRunReturnsOnCancelDuringExchange(t *testing.T) {
	d := testenv.StartDNS(t)
	d.Fail("", testenv.FailDrop)
	p := mustNew(t, Config{
		Server: d.Addr, Timeout: time.Hour,
		Queries: []Query{{Service: "web", Name: "web.test", Port: 80}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, make(chan discovery.Snapshot)) }()
	eventually(t, "the query to reach the server", func() bool { return d.Queries("web.test") > 0 })

	if err := p.Run(ctx, make(chan discovery.Snapshot)); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second concurrent Run = %v, want an already-running error", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return after cancel while an exchange was in flight")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := Query{Service: "web", Name: "web.test", Port: 80}
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no queries", Config{Server: "127.0.0.1:53"}, "no queries"},
		{"empty service", Config{Queries: []Query{{Name: "a.test", Port: 1}}}, "queries[0] (service \"\", name \"a.test\"): service is empty"},
		{"empty name", Config{Queries: []Query{ok, {Service: "web", Port: 1}}}, "queries[1] (service \"web\", name \"\"): name is empty"},
		{"bad name", Config{Queries: []Query{{Service: "web", Name: "a..test", Port: 1}}}, `name "a..test." is not a valid domain name`},
		{"no port", Config{Queries: []Query{{Service: "web", Name: "a.test"}}}, "port is required for an A query"},
		{"port too big", Config{Queries: []Query{{Service: "web", Name: "a.test", Port: 65536}}}, "port 65536 is out of range (want 1-65535)"},
		{"negative port", Config{Queries: []Query{{Service: "web", Name: "a.test", Port: -1}}}, "port -1 is out of range"},
		{"port on SRV", Config{Queries: []Query{{Service: "web", Name: "_a._tcp.test", Type: SRV, Port: 80}}}, "port 80 is set on an SRV query"},
		{"unknown type", Config{Queries: []Query{{Service: "web", Name: "a.test", Type: "MX", Port: 1}}}, `unknown type "MX" (want A or SRV)`},
		{"duplicate", Config{Queries: []Query{ok, {Service: "web", Name: "WEB.test.", Type: "a", Port: 80}}}, "queries[1] (service \"web\", name \"WEB.test.\"): same as queries[0]"},
		{"min above max", Config{MinTTL: time.Minute, MaxTTL: time.Second, Queries: []Query{ok}}, "MinTTL 1m0s is above MaxTTL 1s"},
		{"min above default max", Config{MinTTL: time.Hour, Queries: []Query{ok}}, "MinTTL 1h0m0s is above MaxTTL 5m0s"},
		{"negative min", Config{MinTTL: -time.Second, Queries: []Query{ok}}, "MinTTL -1s is negative"},
		{"negative timeout", Config{Timeout: -time.Second, Queries: []Query{ok}}, "Timeout -1s is negative"},
		{"bad server", Config{Server: "dns.test", Queries: []Query{ok}}, `Server "dns.test": want host:port or an IP address`},
		{"bad server port", Config{Server: "127.0.0.1:0", Queries: []Query{ok}}, `Server "127.0.0.1:0": port "0" is not 1-65535`},
		{"server without host", Config{Server: ":53", Queries: []Query{ok}}, `Server ":53" has no host`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.cfg.Server == "" {
				c.cfg.Server = "127.0.0.1:53"
			}
			p, err := New(c.cfg)
			if err == nil {
				t.Fatalf("New accepted %+v (provider %v)", c.cfg, p)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New error = %q, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestNewNormalizes(t *testing.T) {
	p := mustNew(t, Config{Server: "::1", Queries: []Query{
		{Service: "web", Name: "web.test", Port: 80},
		{Service: "db", Name: "_db._tcp.test", Type: "srv"},
	}})
	if p.Server() != "[::1]:53" {
		t.Errorf("Server() = %q, want [::1]:53", p.Server())
	}
	if p.Name() != "dns" {
		t.Errorf("Name() = %q", p.Name())
	}
	st := p.Status()
	if st[0].Name != "web.test." || st[0].Type != A || st[1].Type != SRV {
		t.Errorf("status = %+v, want absolute names and types A, SRV", st)
	}
	if p.minTTL != DefaultMinTTL || p.maxTTL != DefaultMaxTTL || p.res.timeout != DefaultTimeout {
		t.Errorf("defaults = %s %s %s", p.minTTL, p.maxTTL, p.res.timeout)
	}
}

func TestServerFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(good, []byte("search example.test\nnameserver 127.0.0.9\nnameserver 127.0.0.10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte("search example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := serverAddr("", good); err != nil || got != "127.0.0.9:53" {
		t.Errorf("serverAddr from %s = %q, %v; want 127.0.0.9:53", good, got, err)
	}
	if _, err := serverAddr("", empty); err == nil || !strings.Contains(err.Error(), "lists no nameserver") {
		t.Errorf("serverAddr from a file without nameserver: %v", err)
	}
	if _, err := serverAddr("", filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "is unusable") {
		t.Errorf("serverAddr from a missing file: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	p := &Provider{minTTL: 10 * time.Millisecond, maxTTL: 70 * time.Millisecond}
	var got []time.Duration
	for n := 1; n <= 5; n++ {
		got = append(got, p.backoff(n))
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 70 * time.Millisecond, 70 * time.Millisecond}
	if !slices.Equal(got, want) {
		t.Errorf("backoff = %v, want %v", got, want)
	}
	p = &Provider{minTTL: time.Second, maxTTL: time.Duration(1<<63 - 1)}
	if d := p.backoff(200); d <= 0 {
		t.Errorf("backoff(200) = %s, overflowed", d)
	}
}
