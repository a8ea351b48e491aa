package config

import (
	"errors"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The fuzz targets check properties that must hold for any input; their
// seed corpora (realistic and nasty inputs) are in testdata/fuzz/FuzzXxx/
// and run as ordinary tests. Run one for real with
//
//	go test -run='^$' -fuzz=FuzzParseLinkEnv -fuzztime=60s ./internal/config
//
// and commit any crasher it writes to testdata/fuzz as a new seed.

// FuzzParseLinkEnv feeds a newline-separated environment block.
func FuzzParseLinkEnv(f *testing.F) {
	f.Fuzz(func(t *testing.T, block string) {
		env := strings.Split(block, "\n")
		le, err := ParseLinkEnv(env)
		// The good services are returned even beside errors, and must be
		// as good as on success.
		checkServices(t, le.Services)
		ports := map[string]bool{}
		for _, s := range le.Services {
			if !strings.HasPrefix(s.Listen, "0.0.0.0:") || ports[s.Protocol+s.Listen] {
				t.Errorf("listen %q: want 0.0.0.0:<port>, once per protocol", s.Listen)
			}
			ports[s.Protocol+s.Listen] = true
			if !strings.HasPrefix(s.Origin, "env ") || len(s.Backends) != 1 {
				t.Errorf("service %+v: want one backend and an env origin", s)
			}
		}
		for _, w := range le.Warnings {
			if !strings.HasPrefix(w, "env ") {
				t.Errorf("warning %q does not name its variable", w)
			}
		}
		if err != nil {
			checkErrorLines(t, err, "env ")
		}

		// Order does not matter.
		rev := slices.Clone(env)
		slices.Reverse(rev)
		le2, err2 := ParseLinkEnv(rev)
		if !reflect.DeepEqual(le, le2) || (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Errorf("the result depends on the order of the variables:\n%+v %v\n%+v %v", le, err, le2, err2)
		}
	})
}

// FuzzParseFile feeds YAML bytes.
func FuzzParseFile(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "fuzz.yaml"
		file, err := ParseFile(name, data)
		checkServices(t, file.Services)
		for _, s := range file.Services {
			if !strings.HasPrefix(s.Origin, name+":") {
				t.Errorf("origin %q does not name the file and line", s.Origin)
			}
			if !serviceNameRE.MatchString(s.Name) {
				t.Errorf("name %q passed the file parser but breaks its rule", s.Name)
			}
			checkTuning(t, Defaults{Retries: s.Retries, RetryTimeout: s.RetryTimeout, EjectTime: s.EjectTime, ConnectTimeout: s.ConnectTimeout,
				IdleTimeout: s.IdleTimeout, KeepAlive: s.KeepAlive, MaxConnections: s.MaxConnections})
			if s.Balance != "" && !slices.Contains(Policies, s.Balance) {
				t.Errorf("service %q: balance %q passed the file parser", s.Name, s.Balance)
			}
			if hc := s.HealthCheck; hc != nil {
				if hc.Interval <= 0 || hc.Timeout <= 0 || hc.Timeout > hc.Interval || hc.Rise < 1 || hc.Fall < 1 || hc.Send != "" && hc.Expect == "" {
					t.Errorf("service %q: health check %+v passed the file parser", s.Name, *hc)
				}
			}
		}
		checkTuning(t, file.Defaults)
		if err != nil {
			checkErrorLines(t, err, name)
			return
		}
		if verrs := Validate(&Config{Services: file.Services, Discovery: file.Discovery}); len(verrs) > 0 {
			checkErrorLines(t, verrs, name)
		} else {
			checkUniqueNames(t, file.Services)
		}
		// Load must agree, and apply defaults without panicking.
		cfg, err := Load(Sources{File: name, FileData: data})
		if cfg == nil {
			t.Fatal("Load returned a nil Config")
		}
		if err == nil {
			checkServices(t, cfg.Services)
			checkUniqueNames(t, cfg.Services)
			for _, s := range cfg.Services {
				if s.ConnectTimeout <= 0 || s.MaxConnections < 0 || s.Retries < 0 || s.RetryTimeout <= 0 || s.EjectTime == 0 ||
					!slices.Contains(Policies, s.Balance) {
					t.Errorf("service %q after Load: connect_timeout %v, max_connections %d, retries %d, retry_timeout %v, eject_time %v, balance %q",
						s.Name, s.ConnectTimeout, s.MaxConnections, s.Retries, s.RetryTimeout, s.EjectTime, s.Balance)
				}
			}
		}
	})
}

// FuzzParseForward feeds one --forward value.
func FuzzParseForward(f *testing.F) {
	f.Fuzz(func(t *testing.T, v string) {
		s, err := ParseForward(v)
		if err != nil {
			if err.Error() == "" || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one non-empty line", err)
			}
			return
		}
		checkServices(t, []Service{s})
		_, port, _ := net.SplitHostPort(s.Listen)
		if _, unix := UnixPath(s.Listen); unix {
			port = "unix"
		}
		suffix := ""
		if s.IsUDP() {
			port += "-udp"
			suffix = "/udp"
			if _, unix := UnixPath(s.Listen); unix {
				t.Errorf("service %+v: a udp service on a Unix socket", s)
			}
		}
		if s.Name != "forward-"+port || s.Origin != "--forward "+v {
			t.Errorf("service %+v: want name forward-%s and origin --forward %s", s, port, v)
		}
		// The canonical form parses to the same service.
		addrs := make([]string, len(s.Backends))
		for i, b := range s.Backends {
			addrs[i] = b.String()
		}
		canon := s.Listen + suffix + "=" + strings.Join(addrs, ",")
		s2, err := ParseForward(canon)
		if err != nil || s2.Listen != s.Listen || s2.Protocol != s.Protocol || !reflect.DeepEqual(s2.Backends, s.Backends) {
			t.Errorf("canonical form %q parses to %+v, %v; want %+v", canon, s2, err, s)
		}
	})
}

// FuzzParseBackend feeds one backend as --forward and the file's strings
// give it.
func FuzzParseBackend(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBackend(s)
		if err != nil {
			if err.Error() == "" || strings.ContainsAny(err.Error(), "\n\r") {
				t.Errorf("error %q: want one non-empty line", err)
			}
			if !reflect.DeepEqual(b, Backend{}) {
				t.Errorf("error %v with a backend %+v", err, b)
			}
			return
		}
		if addr, err := ParseHostPort(s); err == nil && b.Addr != addr {
			t.Errorf("%q is host:port %q, but ParseBackend made %s of it", s, addr, dump(b))
		}
		if b.Weight != 0 {
			t.Errorf("%q: weight %d from a string", s, b.Weight)
		}
		checkBackend(t, "ParseBackend", b)
		// The printed form reads back the same, and prints the same.
		again, err := ParseBackend(b.String())
		if err != nil || !reflect.DeepEqual(again, b) || again.String() != b.String() {
			t.Errorf("%q parses to %s, printed %q, which parses to %s, %v", s, dump(b), b.String(), dump(again), err)
		}
	})
}

// checkBackend checks what the parsers promise about a backend: a
// canonical host:port, or a discovery entry of a known kind that is
// complete, prints on one line, and reads back through ParseBackend (but an
// etcd key without a server, which has no URL form).
func checkBackend(t *testing.T, where string, b Backend) {
	t.Helper()
	if b.Weight < 0 {
		t.Errorf("%s: backend %s has a negative weight", where, dump(b))
	}
	d := b.Discover
	if d == nil {
		if got, err := ParseBackendAddr(b.Addr); err != nil || got != b.Addr {
			t.Errorf("%s: backend %q is not canonical: ParseBackendAddr gives %q, %v", where, b.Addr, got, err)
		}
		return
	}
	if b.Addr != "" || b.Weight != 0 {
		t.Errorf("%s: discovery backend %s with an address or a weight", where, dump(b))
	}
	if !slices.Contains(discoverKinds, d.Kind) || d.Name == "" || (d.Kind == KindDNS) != (d.Port != 0) ||
		d.Port < 0 || d.Port > 65535 || d.Tag != "" && d.Kind != KindConsul {
		t.Errorf("%s: discovery entry %+v is incomplete or inconsistent", where, *d)
	}
	if d.Server != "" {
		if got, err := ParseHostPort(d.Server); err != nil || got != d.Server {
			t.Errorf("%s: server %q of %+v is not canonical: %q, %v", where, d.Server, *d, got, err)
		}
	}
	str := d.String()
	if checkText(str) != nil {
		t.Errorf("%s: %+v prints as %q, with control characters", where, *d, str)
	}
	if d.Kind == KindEtcd && d.Server == "" {
		return
	}
	if again, err := ParseBackend(str); err != nil || !reflect.DeepEqual(again, Backend{Discover: d}) {
		t.Errorf("%s: %+v prints as %q, which parses to %s, %v", where, *d, str, dump(again), err)
	}
}

// checkServices checks what every parser promises about what it returns:
// a listen address ParseListen accepts unchanged, at least one backend,
// each one as checkBackend wants it, and a name.
func checkServices(t *testing.T, services []Service) {
	t.Helper()
	for _, s := range services {
		if s.Name == "" {
			t.Errorf("service %+v has no name", s)
		}
		if got, err := ParseListen(s.Listen); err != nil || got != s.Listen {
			t.Errorf("service %q: listen %q is not canonical: ParseListen gives %q, %v", s.Name, s.Listen, got, err)
		}
		if len(s.Backends) == 0 {
			t.Errorf("service %q has no backends", s.Name)
		}
		for _, b := range s.Backends {
			checkBackend(t, "service "+strconv.Quote(s.Name), b)
		}
		if s.Origin == "" {
			t.Errorf("service %q has no origin", s.Name)
		}
	}
}

func checkUniqueNames(t *testing.T, services []Service) {
	t.Helper()
	seen := map[string]bool{}
	for _, s := range services {
		if seen[s.Name] {
			t.Errorf("service name %q twice", s.Name)
		}
		seen[s.Name] = true
	}
}

// checkTuning checks the encoding of settings: 0 unset, -1 off, no limit
// or none.
func checkTuning(t *testing.T, d Defaults) {
	t.Helper()
	if d.ConnectTimeout < 0 || d.IdleTimeout < -1 || d.KeepAlive < -1 || d.MaxConnections < -1 ||
		d.Retries < -1 || d.RetryTimeout < 0 || d.EjectTime < -1 {
		t.Errorf("settings out of range: %+v", d)
	}
}

// checkErrorLines checks that err is a non-empty Errors whose every line
// starts with prefix.
func checkErrorLines(t *testing.T, err error, prefix string) {
	t.Helper()
	var list Errors
	if !errors.As(err, &list) || len(list) == 0 {
		t.Fatalf("error %v (%T): want a non-empty Errors", err, err)
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.HasPrefix(line, prefix) || len(line) == len(prefix) {
			t.Errorf("error line %q does not start with %q", line, prefix)
		}
	}
}
