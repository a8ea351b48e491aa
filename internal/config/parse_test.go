package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFile(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		defaults Defaults
		want     []Service
	}{
		{
			name: "empty file",
			in:   "",
		},
		{
			name: "only comments",
			in:   "# nothing yet\n\n# still nothing\n",
		},
		{
			name: "an empty document",
			in:   "---\n",
		},
		{
			name: "the README example",
			in: `defaults:
  connect_timeout: 5s
  idle_timeout: 1h
  keepalive: 30s
  max_connections: 10000
services:
  - name: redis
    listen: 0.0.0.0:6379
    backends:
      - 10.0.0.5:6379
      - addr: redis-2.internal:6379
    idle_timeout: off
  - name: postgres
    listen: 127.0.0.1:5432
    backends: [db.internal:5432]
`,
			defaults: Defaults{ConnectTimeout: 5 * time.Second, IdleTimeout: time.Hour, KeepAlive: 30 * time.Second, MaxConnections: 10000},
			want: []Service{
				{Name: "redis", Listen: "0.0.0.0:6379", Backends: []Backend{{Addr: "10.0.0.5:6379"}, {Addr: "redis-2.internal:6379"}}, IdleTimeout: -1, Origin: "f.yaml:7"},
				{Name: "postgres", Listen: "127.0.0.1:5432", Backends: []Backend{{Addr: "db.internal:5432"}}, Origin: "f.yaml:13"},
			},
		},
		{
			name: "listen forms and canonical addresses",
			in: `services:
  - {name: a, listen: 6379, backends: ["[2001:DB8::5]:06379"]}
  - {name: b, listen: ":6380", backends: ["[10.0.0.1]:1"]}
  - {name: c, listen: "[::]:6381", backends: [x:1]}
  - {name: d, listen: "0", backends: [x:2]}
  - {name: e, listen: "[::1]:6382", backends: [x:3]}
`,
			want: []Service{
				{Name: "a", Listen: ":6379", Backends: []Backend{{Addr: "[2001:db8::5]:6379"}}, Origin: "f.yaml:2"},
				{Name: "b", Listen: ":6380", Backends: []Backend{{Addr: "10.0.0.1:1"}}, Origin: "f.yaml:3"},
				{Name: "c", Listen: "[::]:6381", Backends: []Backend{{Addr: "x:1"}}, Origin: "f.yaml:4"},
				{Name: "d", Listen: ":0", Backends: []Backend{{Addr: "x:2"}}, Origin: "f.yaml:5"},
				{Name: "e", Listen: "[::1]:6382", Backends: []Backend{{Addr: "x:3"}}, Origin: "f.yaml:6"},
			},
		},
		{
			name: "every tuning key per service; off and zero",
			in: `services:
  - name: s
    listen: 1
    backends: [x:1]
    connect_timeout: 250ms
    idle_timeout: 0s
    keepalive: "OFF"
    max_connections: 0
`,
			want: []Service{{Name: "s", Listen: ":1", Backends: []Backend{{Addr: "x:1"}},
				ConnectTimeout: 250 * time.Millisecond, IdleTimeout: -1, KeepAlive: -1, MaxConnections: -1, Origin: "f.yaml:2"}},
		},
		{
			name: "an explicit document start",
			in:   "---\nservices:\n  - {name: a, listen: 1, backends: [x:1]}\n...\n",
			want: []Service{{Name: "a", Listen: ":1", Backends: []Backend{{Addr: "x:1"}}, Origin: "f.yaml:3"}},
		},
		{
			name: "empty documents around the real one",
			in:   "---\n---\nservices: []\n---\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile("f.yaml", []byte(tt.in))
			if err != nil {
				t.Fatalf("ParseFile: %v", err)
			}
			if f.Defaults != tt.defaults {
				t.Errorf("defaults: got %+v, want %+v", f.Defaults, tt.defaults)
			}
			if !reflect.DeepEqual(f.Services, tt.want) {
				t.Errorf("services:\n got %+v\nwant %+v", f.Services, tt.want)
			}
		})
	}
}

func TestParseFileAliases(t *testing.T) {
	in := `defaults: &d
  keepalive: 10s
services:
  - &redis
    name: one
    listen: 1
    backends: &pool [a:1, {addr: b:1}]
  - name: two
    listen: 2
    backends: *pool
    keepalive: *d
`
	_, err := ParseFile("f.yaml", []byte(in))
	// An alias to a mapping where a duration is wanted reports the anchor's line.
	checkErrors(t, err, []string{`f.yaml:1: keepalive: want a single value, got a mapping`})

	in = `defaults: {keepalive: &k 10s}
services:
  - name: one
    listen: 1
    backends: &pool [a:1, {addr: b:1}]
  - name: two
    listen: 2
    backends: *pool
    keepalive: *k
`
	f, err := ParseFile("f.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Services) != 2 || !reflect.DeepEqual(f.Services[0].Backends, f.Services[1].Backends) || f.Services[1].KeepAlive != 10*time.Second {
		t.Errorf("aliases not followed: %+v", f.Services)
	}
}

const allowedService = "(want one of: accept_proxy, backends, balance, close_on_remove, connect_timeout, eject_time, health_check, idle_timeout, keepalive, listen, max_connections, max_sessions, name, protocol, retries, retry_timeout, send_proxy, udp_idle_timeout)"

func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		errs []string // one substring per error, in order
	}{
		{
			name: "unknown top-level key",
			in:   "services: []\nservice: []\n",
			errs: []string{"f.yaml:2: service: unknown key in top level (want one of: defaults, discovery, link, services, transparent)"},
		},
		{
			name: "unknown key in defaults",
			in:   "defaults:\n  connect_timeout: 1s\n  conect_timeout: 1s\n",
			errs: []string{"f.yaml:3: conect_timeout: unknown key in defaults (want one of: connect_timeout, eject_time, idle_timeout, keepalive, max_connections, max_sessions, retries, retry_timeout, udp_idle_timeout)"},
		},
		{
			name: "unknown key in a service (the README's bad.yaml)",
			in:   "services:\n  - name: redis\n    listn: 6379\n    backends:\n      - 10.0.0.5\n",
			errs: []string{
				"f.yaml:3: listn: unknown key in service " + allowedService,
				`f.yaml:5: backend: want host:port, got "10.0.0.5", an IP address without a port`,
				`f.yaml:2: listen: missing in service "redis": want [host:]port`,
			},
		},
		{
			name: "unknown key in a backend mapping",
			in:   "services:\n  - name: r\n    listen: 1\n    backends:\n      - addr: a:1\n        port: 2\n",
			errs: []string{"f.yaml:6: port: unknown key in backend (want one of: addr, consul, consul_kv, dns, docker, etcd, link, send_proxy, srv, tag, url, weight)"},
		},
		{
			name: "backend mapping without addr or a discovery key",
			in:   "services:\n  - name: r\n    listen: 1\n    backends:\n      - {}\n",
			errs: []string{"f.yaml:5: backend: want one of the keys addr, dns, srv, etcd, consul, consul_kv, docker, url"},
		},
		{
			name: "a key with a newline is quoted so the error stays on one line",
			in:   "\"a\\nb\": 1\n",
			errs: []string{`f.yaml:1: "a\nb": unknown key in top level`},
		},
		{
			name: "a non-scalar key",
			in:   "? [a]\n: 1\n",
			errs: []string{`f.yaml:1: a list: unknown key in top level`},
		},
		{
			name: "merge keys are not supported",
			in:   "services:\n  - <<: {name: a}\n    listen: 1\n    backends: [x:1]\n",
			errs: []string{
				"f.yaml:2: <<: unknown key in service",
				`f.yaml:2: name: missing: every service needs a name`,
			},
		},
		{
			name: "an alias as a key",
			in:   "defaults: &d {}\n*d : 1\n",
			errs: []string{`f.yaml:2: an alias: unknown key in top level`},
		},
		{
			name: "a backend addr that is a list",
			in:   "services:\n  - name: r\n    listen: 1\n    backends:\n      - addr: [a:1]\n",
			errs: []string{"f.yaml:5: addr: want a single value, got a list"},
		},
		{
			name: "max_connections that is a mapping",
			in:   "defaults:\n  max_connections: {n: 1}\n",
			errs: []string{"f.yaml:2: max_connections: want a single value, got a mapping"},
		},
		{
			name: "a duration that is a list",
			in:   "defaults:\n  idle_timeout: [1s]\n",
			errs: []string{"f.yaml:2: idle_timeout: want a single value, got a list"},
		},
		{
			name: "duplicate top-level key",
			in:   "services: []\ndefaults: {}\nservices: []\n",
			errs: []string{"f.yaml:3: services: duplicate key in top level (first set on line 1)"},
		},
		{
			name: "duplicate key in a service",
			in:   "services:\n  - name: a\n    listen: 1\n    backends: [x:1]\n    name: b\n",
			errs: []string{"f.yaml:5: name: duplicate key in service (first set on line 2)"},
		},
		{
			name: "duplicate key in defaults",
			in:   "defaults:\n  keepalive: 1s\n  keepalive: 2s\n",
			errs: []string{"f.yaml:3: keepalive: duplicate key in defaults (first set on line 2)"},
		},
		{
			name: "top level is a list",
			in:   "- name: a\n",
			errs: []string{"f.yaml:1: top level: want a mapping of keys, got a list"},
		},
		{
			name: "top level is a string",
			in:   "hello\n",
			errs: []string{`f.yaml:1: top level: want a mapping of keys, got "hello"`},
		},
		{
			name: "services is a mapping",
			in:   "services:\n  redis:\n    listen: 1\n",
			errs: []string{"f.yaml:2: services: want a list of services, got a mapping"},
		},
		{
			name: "services is empty",
			in:   "services:\n",
			errs: []string{"f.yaml:1: services: want a list of services, got nothing"},
		},
		{
			name: "a service is a string",
			in:   "services:\n  - redis\n",
			errs: []string{`f.yaml:2: service: want a mapping of keys, got "redis"`},
		},
		{
			name: "defaults is a list",
			in:   "defaults: [1s]\n",
			errs: []string{"f.yaml:1: defaults: want a mapping of keys, got a list"},
		},
		{
			name: "backends is a string",
			in:   "services:\n  - name: r\n    listen: 1\n    backends: a:1\n",
			errs: []string{`f.yaml:4: backends: want a list of host:port or discovery entries, got "a:1"`},
		},
		{
			name: "backends is empty",
			in:   "services:\n  - name: r\n    listen: 1\n    backends: []\n",
			errs: []string{"f.yaml:4: backends: empty: want at least one host:port or discovery entry"},
		},
		{
			name: "backends is null",
			in:   "services:\n  - name: r\n    listen: 1\n    backends:\n",
			errs: []string{"f.yaml:4: backends: want a list of host:port or discovery entries, got nothing"},
		},
		{
			name: "a backend is a list",
			in:   "services:\n  - name: r\n    listen: 1\n    backends: [[a:1]]\n",
			errs: []string{"f.yaml:4: backends: want host:port, a discovery URL or a mapping such as {addr: host:port, weight: 2} or {srv: name}, got a list"},
		},
		{
			name: "name is a list",
			in:   "services:\n  - name: [a]\n    listen: 1\n    backends: [x:1]\n",
			errs: []string{"f.yaml:2: name: want a single value, got a list"},
		},
		{
			name: "listen is a mapping",
			in:   "services:\n  - name: a\n    listen: {port: 1}\n    backends: [x:1]\n",
			errs: []string{"f.yaml:3: listen: want a single value, got a mapping"},
		},
		{
			name: "listen is null",
			in:   "services:\n  - name: a\n    listen: ~\n    backends: [x:1]\n",
			errs: []string{"f.yaml:3: listen: want a single value, got nothing"},
		},
		{
			name: "bad name",
			in:   "services:\n  - name: -redis\n    listen: 1\n    backends: [x:1]\n",
			errs: []string{`f.yaml:2: name: want letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit), got "-redis"`},
		},
		{
			name: "name too long",
			in:   "services:\n  - name: " + strings.Repeat("a", 64) + "\n    listen: 1\n    backends: [x:1]\n",
			errs: []string{`f.yaml:2: name: want letters, digits`},
		},
		{
			name: "bad port",
			in:   "services:\n  - name: a\n    listen: 65536\n    backends: [x:1]\n",
			errs: []string{`f.yaml:3: listen: want a port number 0-65535 (0: any free port), got "65536"`},
		},
		{
			name: "bad listen",
			in:   "services:\n  - name: a\n    listen: 10.0.0.1\n    backends: [x:1]\n",
			errs: []string{`f.yaml:3: listen: want a port number 0-65535 (0: any free port), got "10.0.0.1"`},
		},
		{
			name: "unbracketed IPv6 listen",
			in:   "services:\n  - name: a\n    listen: \"::1:80\"\n    backends: [x:1]\n",
			errs: []string{`f.yaml:3: listen: want [host:]port (IPv6 in brackets), got "::1:80"`},
		},
		{
			name: "empty listen",
			in:   "services:\n  - name: a\n    listen: \"\"\n    backends: [x:1]\n",
			errs: []string{`f.yaml:3: listen: want [host:]port, got an empty value`},
		},
		{
			name: "bad backend addrs, each reported",
			in:   "services:\n  - name: a\n    listen: 1\n    backends:\n      - x:0\n      - :80\n      - addr: \"[::1]\"\n      - 192.168.1.520:80\n",
			errs: []string{
				`f.yaml:5: backend: want a port number 1-65535, got "0"`,
				`f.yaml:6: backend: want host:port with a host, got ":80"`,
				`f.yaml:7: addr: want host:port (IPv6 in brackets), got "[::1]"`,
				`f.yaml:8: backend: want a host name or IP address, got "192.168.1.520", which is not a valid IPv4 address`,
			},
		},
		{
			name: "bad durations",
			in:   "defaults:\n  connect_timeout: 5\n  idle_timeout: forever\n  keepalive: -1s\n",
			errs: []string{
				`f.yaml:2: connect_timeout: want a duration such as 500ms, 10s or 1h, got "5"`,
				`f.yaml:3: idle_timeout: want a duration such as 500ms, 10s or 1h, or off, got "forever"`,
				`f.yaml:4: keepalive: want a duration such as 500ms, 10s or 1h, or off (greater than zero), got "-1s"`,
			},
		},
		{
			name: "connect_timeout cannot be off",
			in:   "defaults:\n  connect_timeout: off\n",
			errs: []string{`f.yaml:2: connect_timeout: want a duration such as 500ms, 10s or 1h, got "off"`},
		},
		{
			name: "connect_timeout cannot be zero",
			in:   "services:\n  - name: a\n    listen: 1\n    backends: [x:1]\n    connect_timeout: 0s\n",
			errs: []string{`f.yaml:5: connect_timeout: want a duration such as 500ms, 10s or 1h (greater than zero), got "0s"`},
		},
		{
			name: "bad max_connections",
			in:   "defaults:\n  max_connections: -1\nservices:\n  - {name: a, listen: 1, backends: [x:1], max_connections: lots}\n",
			errs: []string{
				`f.yaml:2: max_connections: want a whole number 0 or more (0: no limit), got "-1"`,
				`f.yaml:4: max_connections: want a whole number 0 or more (0: no limit), got "lots"`,
			},
		},
		{
			name: "missing name, listen and backends",
			in:   "services:\n  - connect_timeout: 1s\n",
			errs: []string{
				"f.yaml:2: name: missing: every service needs a name",
				`f.yaml:2: listen: missing in service "": want [host:]port`,
				`f.yaml:2: backends: missing in service "": want at least one host:port or discovery entry`,
			},
		},
		{
			name: "an empty service",
			in:   "services:\n  - {}\n",
			errs: []string{
				"f.yaml:2: name: missing",
				"f.yaml:2: listen: missing",
				"f.yaml:2: backends: missing",
			},
		},
		{
			name: "YAML syntax error carries the line",
			in:   "services:\n  - name: a\n    listen: [1\n",
			errs: []string{"f.yaml:3: invalid YAML: did not find expected ',' or ']'"},
		},
		{
			name: "a tab for indentation",
			in:   "services:\n\t- name: a\n",
			errs: []string{"f.yaml:2: invalid YAML: found character that cannot start any token"},
		},
		{
			name: "mapping values in the wrong place",
			in:   "services:\n  - name: a: b\n",
			errs: []string{"f.yaml:2: invalid YAML: mapping values are not allowed in this context"},
		},
		{
			name: "a syntax error on the first line",
			in:   "a: \"\\q\"\n",
			errs: []string{"f.yaml:1: invalid YAML: found unknown escape character"},
		},
		{
			name: "an unknown anchor",
			in:   "services: *nope\n",
			errs: []string{"f.yaml:1: invalid YAML: unknown anchor 'nope' referenced"},
		},
		{
			name: "control characters",
			in:   "\x01",
			errs: []string{"f.yaml:1: invalid YAML: control characters are not allowed"},
		},
		{
			name: "a second document",
			in:   "services: []\n---\nservices:\n  - name: a\n",
			errs: []string{"f.yaml:3: want one YAML document, found a second one here"},
		},
		{
			name: "several errors in several services are all reported, in file order",
			in: `defaults:
  keepalive: sometimes
services:
  - name: ok
    listen: 1
    backends: [x:1]
  - name: bad one
    listen: 2
    backends: [x:2]
  - name: c
    listen: 3
    backends: [x:0]
    idle: 1s
`,
			errs: []string{
				`f.yaml:2: keepalive: want a duration`,
				`f.yaml:7: name: want letters, digits`,
				`f.yaml:12: backend: want a port number 1-65535, got "0"`,
				`f.yaml:13: idle: unknown key in service ` + allowedService,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile("f.yaml", []byte(tt.in))
			checkErrors(t, err, tt.errs)
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "f.yaml") {
					t.Errorf("error line %q does not start with the file name", line)
				}
			}
		})
	}
}

// TestParseFileSyntaxLines pins the line of every kind of YAML syntax
// error. The YAML library reports parser errors one line early (a 0-based
// line) and some errors with no line at all; ParseFile corrects both.
func TestParseFileSyntaxLines(t *testing.T) {
	tests := []struct{ in, want string }{
		{"a: [1\n", "f.yaml:1: invalid YAML: did not find expected ',' or ']'"},
		{"a: 1\nb: [1\n", "f.yaml:2: invalid YAML: did not find expected ',' or ']'"},
		{"a: 1\nb: 2\nc: [1\n\n\n", "f.yaml:3: invalid YAML: did not find expected ',' or ']'"},
		{"a: 1\nb: {x: 1\n", "f.yaml:2: invalid YAML: did not find expected ',' or '}'"},
		{"a: 1\nb: 2\n  c: 3\n", "f.yaml:3: invalid YAML: mapping values are not allowed in this context"},
		{"a: 1\nb: 2\nc: 'x\n", "f.yaml:3: invalid YAML: found unexpected end of stream"},
		{"a: 1\n\tb: 2\n", "f.yaml:2: invalid YAML: found a tab character that violates indentation"},
		{"a: 1\nb: - 1\n", "f.yaml:2: invalid YAML: block sequence entries are not allowed in this context"},
		{"a: 1\n- b\n", "f.yaml:2: invalid YAML: did not find expected key"},
		// The library names the line of the list that line 4 breaks.
		{"a: 1\nb:\n  - x\n  y: 1\n", "f.yaml:3: invalid YAML: did not find expected '-' indicator"},
		{"a: 1\n%TAG x\n", "f.yaml:2: invalid YAML: did not find expected '!'"},
		{"a: 1\nb: 2\nc: *x\n", "f.yaml:3: invalid YAML: unknown anchor 'x' referenced"},
		{"a: 1\nb: \"\x01\"\n", "f.yaml:2: invalid YAML: control characters are not allowed"},
		{"a: 1\n\nb: \xff\n", "f.yaml:3: invalid YAML: invalid leading UTF-8 octet"},
		{"a: 1\nb: \xc3\n", "f.yaml:2: invalid YAML: invalid trailing UTF-8 octet"},
		{"a: 1\nb: \xc3", "f.yaml:2: invalid YAML: incomplete UTF-8 octet sequence"},
		{"a: [", "f.yaml:1: invalid YAML: did not find expected node content"},
		{"a: 1\n---\nb: [\n", "f.yaml:3: invalid YAML: did not find expected node content"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseFile("f.yaml", []byte(tt.in))
			checkErrors(t, err, []string{tt.want})
		})
	}
}

// TestParseFileKeepsGoodServices checks that a broken service does not take
// its neighbours with it: the good ones are still returned (for `attache
// check`), only the error decides.
func TestParseFileKeepsGoodServices(t *testing.T) {
	in := "services:\n  - {name: good, listen: 1, backends: [x:1]}\n  - {name: bad, listen: 2, backends: [x:0]}\n"
	f, err := ParseFile("f.yaml", []byte(in))
	if err == nil {
		t.Fatal("want an error")
	}
	if len(f.Services) != 1 || f.Services[0].Name != "good" {
		t.Errorf("services: %+v", f.Services)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in       string
		allowOff bool
		want     time.Duration
		err      string
	}{
		{in: "500ms", want: 500 * time.Millisecond},
		{in: "1m30s", want: 90 * time.Second},
		{in: "1h", allowOff: true, want: time.Hour},
		{in: "off", allowOff: true, want: -1},
		{in: "Off", allowOff: true, want: -1},
		{in: "0", allowOff: true, want: -1},
		{in: "0s", allowOff: true, want: -1},
		{in: "0", err: `want a duration such as 500ms, 10s or 1h (greater than zero), got "0"`},
		{in: "off", err: `want a duration such as 500ms, 10s or 1h, got "off"`},
		{in: "-5s", allowOff: true, err: `want a duration such as 500ms, 10s or 1h, or off (greater than zero), got "-5s"`},
		{in: "10", err: `want a duration such as 500ms, 10s or 1h, got "10"`},
		{in: "", err: `got ""`},
		{in: "9999999999h", err: `got "9999999999h"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in, tt.allowOff)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseDuration(%q) error = %v, want %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseHostPort(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "10.0.0.5:6379", want: "10.0.0.5:6379"},
		{in: "redis:6379", want: "redis:6379"},
		{in: "Redis.Internal.:1", want: "Redis.Internal.:1"},
		{in: "_srv.x:1", want: "_srv.x:1"},
		{in: "xn--bcher-kva.example:443", want: "xn--bcher-kva.example:443"},
		{in: "1234:80", want: "1234:80"}, // a container may be named with digits only
		{in: "[2001:DB8:0:0:0:0:0:1]:80", want: "[2001:db8::1]:80"},
		{in: "[::ffff:10.0.0.1]:80", want: "[::ffff:10.0.0.1]:80"},
		{in: "[fe80::1%eth0.100]:80", want: "[fe80::1%eth0.100]:80"},
		{in: "[10.0.0.5]:80", want: "10.0.0.5:80"},
		{in: "x:00080", want: "x:80"},
		{in: "x:65535", want: "x:65535"},
		{in: "", err: `want host:port (IPv6 in brackets), got ""`},
		{in: "x", err: `want host:port (IPv6 in brackets), got "x"`},
		{in: ":80", err: `want host:port with a host, got ":80"`},
		{in: "x:", err: `want a port number 1-65535, got an empty value`},
		{in: "x:0", err: `want a port number 1-65535, got "0"`},
		{in: "x:65536", err: `got "65536"`},
		{in: "x:+80", err: `got "+80"`},
		{in: "x:http", err: `got "http"`},
		{in: "a..b:1", err: `want a host name or IP address, got "a..b"`},
		{in: "a-:1", err: `got "a-"`},
		{in: "ä:1", err: `got "ä"`},
		{in: ".:1", err: `got "."`},
		{in: strings.Repeat("a", 64) + ":1", err: `want a host name or IP address`},
		{in: strings.Repeat("a.", 127) + "ab:1", err: `is longer than 253 characters`},
		{in: "10.0.1:1", err: `which is not a valid IPv4 address`},
		{in: "010.0.0.1:1", err: `which is not a valid IPv4 address`},
		{in: "[fe80::1%]:80", err: `want a host name or IP address, got "fe80::1%"`},
		{in: "[fe80::1%a/b]:80", err: `want an interface name after %`},
		{in: "[::1]:80:80", err: `want host:port (IPv6 in brackets)`},
		{in: "[a:b]:80", err: `want a host name or IP address, got "a:b"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseHostPort(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseHostPort(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseHostPort(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if again, err := ParseHostPort(got); err != nil || again != got {
				t.Errorf("ParseHostPort(%q) = %q, %v; the canonical form must come back unchanged", got, again, err)
			}
		})
	}
}

func TestParseListen(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "6379", want: ":6379"},
		{in: ":6379", want: ":6379"},
		{in: "0", want: ":0"},
		{in: "0.0.0.0:6379", want: "0.0.0.0:6379"},
		{in: "127.0.0.1:0", want: "127.0.0.1:0"},
		{in: "[::]:6379", want: "[::]:6379"},
		{in: "[0:0::0]:1", want: "[::]:1"},
		{in: "localhost:80", want: "localhost:80"},
		{in: "", err: "want [host:]port, got an empty value"},
		{in: "x", err: `want a port number 0-65535 (0: any free port), got "x"`},
		{in: "65536", err: `got "65536"`},
		{in: "-1", err: `got "-1"`},
		{in: "::1", err: `want [host:]port (IPv6 in brackets), got "::1"`},
		{in: "a b:1", err: `want a host name or IP address, got "a b"`},
		{in: "h:", err: `want a port number 0-65535 (0: any free port), got ""`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseListen(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseListen(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseListen(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if again, err := ParseListen(got); err != nil || again != got {
				t.Errorf("ParseListen(%q) = %q, %v; the canonical form must come back unchanged", got, again, err)
			}
		})
	}
}
