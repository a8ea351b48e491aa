package config

import (
	"errors"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
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
			if !strings.HasPrefix(s.Listen, "0.0.0.0:") || ports[s.Listen] {
				t.Errorf("listen %q: want 0.0.0.0:<port>, once", s.Listen)
			}
			ports[s.Listen] = true
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
			checkTuning(t, s.ConnectTimeout, s.IdleTimeout, s.KeepAlive, s.MaxConnections)
		}
		d := file.Defaults
		checkTuning(t, d.ConnectTimeout, d.IdleTimeout, d.KeepAlive, d.MaxConnections)
		if err != nil {
			checkErrorLines(t, err, name)
			return
		}
		if verrs := Validate(&Config{Services: file.Services}); len(verrs) > 0 {
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
				if s.ConnectTimeout <= 0 || s.MaxConnections < 0 {
					t.Errorf("service %q after Load: connect_timeout %v, max_connections %d", s.Name, s.ConnectTimeout, s.MaxConnections)
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
		if s.Name != "forward-"+port || s.Origin != "--forward "+v {
			t.Errorf("service %+v: want name forward-%s and origin --forward %s", s, port, v)
		}
		// The canonical form parses to the same service.
		addrs := make([]string, len(s.Backends))
		for i, b := range s.Backends {
			addrs[i] = b.Addr
		}
		canon := s.Listen + "=" + strings.Join(addrs, ",")
		s2, err := ParseForward(canon)
		if err != nil || s2.Listen != s.Listen || !reflect.DeepEqual(s2.Backends, s.Backends) {
			t.Errorf("canonical form %q parses to %+v, %v; want %+v", canon, s2, err, s)
		}
	})
}

// checkServices checks what every parser promises about what it returns:
// a listen address ParseListen accepts unchanged, at least one backend,
// each one ParseHostPort accepts unchanged, and a name.
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
			if got, err := ParseHostPort(b.Addr); err != nil || got != b.Addr {
				t.Errorf("service %q: backend %q is not canonical: ParseHostPort gives %q, %v", s.Name, b.Addr, got, err)
			}
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

// checkTuning checks the encoding of settings: 0 unset, -1 off or no limit.
func checkTuning(t *testing.T, connect, idle, keepalive time.Duration, maxConns int) {
	t.Helper()
	if connect < 0 || idle < -1 || keepalive < -1 || maxConns < -1 {
		t.Errorf("settings out of range: connect %v idle %v keepalive %v max %d", connect, idle, keepalive, maxConns)
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
