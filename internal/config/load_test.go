package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestLoadPrecedence pins the order settings win in: builtin < file
// defaults < flags set explicitly < the service's own setting in the file.
func TestLoadPrecedence(t *testing.T) {
	const file = `defaults:
  connect_timeout: 2s
  idle_timeout: 1h
  keepalive: 20s
  max_connections: 100
services:
  - name: plain
    listen: 1
    backends: [x:1]
  - name: own
    listen: 2
    backends: [x:2]
    connect_timeout: 7s
    idle_timeout: off
    keepalive: off
    max_connections: 0
`
	type tuning struct {
		connect, idle, keepalive time.Duration
		maxConns                 int
	}
	tests := []struct {
		name  string
		file  string
		flags Defaults
		want  map[string]tuning // service name → settings
	}{
		{
			name: "builtin only",
			want: map[string]tuning{"forward-9": {5 * time.Second, 0, 30 * time.Second, 0}},
		},
		{
			name:  "flags beat builtin",
			flags: Defaults{ConnectTimeout: time.Second, IdleTimeout: time.Minute, KeepAlive: -1, MaxConnections: 5},
			want:  map[string]tuning{"forward-9": {time.Second, time.Minute, -1, 5}},
		},
		{
			name: "file defaults beat builtin, own settings beat file defaults",
			file: file,
			want: map[string]tuning{
				"plain":     {2 * time.Second, time.Hour, 20 * time.Second, 100},
				"own":       {7 * time.Second, -1, -1, 0},
				"forward-9": {2 * time.Second, time.Hour, 20 * time.Second, 100},
			},
		},
		{
			name:  "flags beat file defaults but not a service's own setting",
			file:  file,
			flags: Defaults{ConnectTimeout: 3 * time.Second, IdleTimeout: -1, KeepAlive: 10 * time.Second, MaxConnections: 50},
			want: map[string]tuning{
				"plain":     {3 * time.Second, -1, 10 * time.Second, 50},
				"own":       {7 * time.Second, -1, -1, 0},
				"forward-9": {3 * time.Second, -1, 10 * time.Second, 50},
			},
		},
		{
			name:  "a flag that is not set leaves the file default",
			file:  file,
			flags: Defaults{KeepAlive: 10 * time.Second},
			want: map[string]tuning{
				"plain":     {2 * time.Second, time.Hour, 10 * time.Second, 100},
				"own":       {7 * time.Second, -1, -1, 0},
				"forward-9": {2 * time.Second, time.Hour, 10 * time.Second, 100},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := Sources{Forwards: []string{"9=x:9"}, Flags: tt.flags}
			if tt.file != "" {
				src.File, src.FileData = "a.yaml", []byte(tt.file)
			}
			cfg, err := Load(src)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]tuning{}
			for _, s := range cfg.Services {
				got[s.Name] = tuning{s.ConnectTimeout, s.IdleTimeout, s.KeepAlive, s.MaxConnections}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseForward(t *testing.T) {
	tests := []struct {
		in       string
		name     string
		listen   string
		backends []string
		err      string
	}{
		{in: "6379=redis:6379", name: "forward-6379", listen: ":6379", backends: []string{"redis:6379"}},
		{in: "127.0.0.1:5432=db:5432", name: "forward-5432", listen: "127.0.0.1:5432", backends: []string{"db:5432"}},
		{in: "[::1]:80=[2001:DB8::1]:8080", name: "forward-80", listen: "[::1]:80", backends: []string{"[2001:db8::1]:8080"}},
		{in: "0=x:1", name: "forward-0", listen: ":0", backends: []string{"x:1"}},
		{in: ":7000=a:1,b:2,10.0.0.3:3", name: "forward-7000", listen: ":7000", backends: []string{"a:1", "b:2", "10.0.0.3:3"}},
		{in: "redis:6379", err: `want [LISTEN_HOST:]PORT=HOST:PORT, got "redis:6379"`},
		{in: "", err: `want [LISTEN_HOST:]PORT=HOST:PORT, got ""`},
		{in: "=x:1", err: "listen side: want [host:]port, got an empty value"},
		{in: "x=y:1", err: `listen side: want a port number 0-65535 (0: any free port), got "x"`},
		{in: "70000=y:1", err: `listen side: want a port number 0-65535 (0: any free port), got "70000"`},
		{in: "1=", err: `target side: want host:port, a DNS SRV name or a discovery URL, got an empty value`},
		{in: "1=10.0.0.1", err: `target side: want host:port, got "10.0.0.1", an IP address without a port`},
		{in: "1=6379", err: `target side: want host:port, got "6379", a port without a host`},
		{in: "1=y:0", err: `target side: want a port number 1-65535, got "0"`},
		{in: "1=a:1,", err: `target side: want host:port, a DNS SRV name or a discovery URL, got an empty value`},
		{in: "1=a:1,tcp://b:2", err: `target side: want host:port without tcp://, got "tcp://b:2"`},
		{in: "1=a b", err: `target side: want host:port, a DNS SRV name or a discovery URL, got "a b": want a DNS name (letters, digits, '-', '_'), got "a b"`},
		{in: "1=a:1, b:2", err: `target side: want a host name or IP address, got " b"`},
		{in: "1=a:1=b:2", err: `target side: want host:port (IPv6 in brackets), got "a:1=b:2"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseForward(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseForward(%q) error = %v, want %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var backends []string
			for _, b := range s.Backends {
				backends = append(backends, b.Addr)
			}
			if s.Name != tt.name || s.Listen != tt.listen || !reflect.DeepEqual(backends, tt.backends) || s.Origin != "--forward "+tt.in {
				t.Errorf("got %+v", s)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name string
		src  Sources
		want []svc
		warn []string
	}{
		{
			name: "HOST PORT arguments listen on PORT and forward to HOST:PORT",
			src:  Sources{Args: []string{"192.168.1.52", "6379"}},
			want: []svc{{"forward-6379", ":6379", "192.168.1.52:6379", "arguments 192.168.1.52 6379"}},
		},
		{
			name: "HOST may be a bare or bracketed IPv6 literal",
			src:  Sources{Args: []string{"2001:db8::1", "6379"}, Forwards: []string{"1=x:1"}},
			want: []svc{
				{"forward-1", ":1", "x:1", "--forward 1=x:1"},
				{"forward-6379", ":6379", "[2001:db8::1]:6379", "arguments 2001:db8::1 6379"},
			},
		},
		{
			name: "bracketed",
			src:  Sources{Args: []string{"[2001:db8::1]", "06379"}},
			want: []svc{{"forward-6379", ":6379", "[2001:db8::1]:6379", "arguments [2001:db8::1] 06379"}},
		},
		{
			name: "every source at once, in order file, flags, arguments, env",
			src: Sources{
				FileData: []byte("services:\n  - {name: web, listen: 80, backends: [web:8080]}\n"),
				Forwards: []string{"127.0.0.1:5432=db:5432"},
				Args:     []string{"cache", "11211"},
				Env:      []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379", "DNS_PORT_53_UDP=udp://d:53"},
			},
			want: []svc{
				{"web", ":80", "web:8080", "config:2"},
				{"forward-5432", "127.0.0.1:5432", "db:5432", "--forward 127.0.0.1:5432=db:5432"},
				{"forward-11211", ":11211", "cache:11211", "arguments cache 11211"},
				{"dns-53-udp", "0.0.0.0:53", "d:53", "env DNS_PORT_53_UDP"},
				{"redis-6379", "0.0.0.0:6379", "10.0.0.5:6379", "env REDIS_PORT_6379_TCP"},
			},
		},
		{
			name: "generated names are made unique; file names are kept",
			src: Sources{
				FileData: []byte("services:\n  - {name: forward-80, listen: 127.0.0.9:80, backends: [f:1]}\n"),
				Forwards: []string{"127.0.0.1:80=a:1", "127.0.0.2:80=b:1", "0=c:1", "0=d:1"},
				Env:      []string{"FORWARD_PORT_1_TCP=tcp://e:1"},
			},
			want: []svc{
				{"forward-80", "127.0.0.9:80", "f:1", "config:2"},
				{"forward-80-2", "127.0.0.1:80", "a:1", "--forward 127.0.0.1:80=a:1"},
				{"forward-80-3", "127.0.0.2:80", "b:1", "--forward 127.0.0.2:80=b:1"},
				{"forward-0", ":0", "c:1", "--forward 0=c:1"},
				{"forward-0-2", ":0", "d:1", "--forward 0=d:1"},
				{"forward-1", "0.0.0.0:1", "e:1", "env FORWARD_PORT_1_TCP"},
			},
		},
		{
			name: "an empty environment is fine when another source has services",
			src:  Sources{Env: []string{}, Forwards: []string{"1=x:1"}},
			want: []svc{{"forward-1", ":1", "x:1", "--forward 1=x:1"}},
		},
		{
			name: "the file is read from disk",
			src:  Sources{File: "testdata/load/simple.yaml"},
			want: []svc{{"redis", ":6379", "redis:6379", "testdata/load/simple.yaml:2"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(tt.src)
			if err != nil {
				t.Fatal(err)
			}
			var got []svc
			for _, s := range cfg.Services {
				got = append(got, svc{s.Name, s.Listen, s.Backends[0].Addr, s.Origin})
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("services:\n got %q\nwant %q", got, tt.want)
			}
			if len(cfg.Warnings) != len(tt.warn) {
				t.Fatalf("warnings %q, want %q", cfg.Warnings, tt.warn)
			}
			for i, w := range tt.warn {
				if !strings.Contains(cfg.Warnings[i], w) {
					t.Errorf("warning %q, want %q", cfg.Warnings[i], w)
				}
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		src  Sources
		errs []string
	}{
		{
			name: "nothing at all",
			src:  Sources{},
			errs: []string{"no services to forward: give a config file (-c), --forward [LISTEN_HOST:]PORT=HOST:PORT, HOST PORT arguments, or Docker link variables such as REDIS_PORT_6379_TCP=tcp://host:6379"},
		},
		{
			name: "an empty file",
			src:  Sources{File: "empty.yaml", FileData: []byte("# nothing\n")},
			errs: []string{"no services to forward"},
		},
		{
			// Docker sets port variables only for exposed ports: a link to
			// a container that exposes none gives its names alone, on any
			// engine. Docker 29's change cannot be the cause (it drops the
			// names too), so it is not the explanation given.
			name: "link names without port variables: the linked container exposes no port",
			src:  Sources{Env: []string{"PATH=/bin", "REDIS_NAME=/amb/redis", "REDIS_ENV_REDIS_VERSION=7"}},
			errs: []string{"the environment has link names (REDIS_NAME) but no <ALIAS>_PORT_<port>_TCP variables: " +
				"Docker sets those only for the ports a linked container exposes, and this one exposes none " +
				"(no EXPOSE in its image, no --expose or -p when it was started): start it with --expose PORT, " +
				"or pass the target explicitly, e.g. -e REDIS_PORT_6379_TCP=tcp://redis:6379 " +
				"(Docker Engine 29 and later, unless the daemon runs with DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1, " +
				"set no link variables at all, these names included)"},
		},
		{
			// What a --link looks like on Docker Engine 29 and later.
			name: "an environment without link variables: the Docker 29 hint",
			src:  Sources{Env: []string{"PATH=/bin", "HOSTNAME=f00"}},
			errs: []string{"no services to forward: give a config file (-c), --forward [LISTEN_HOST:]PORT=HOST:PORT, HOST PORT arguments, " +
				"or Docker link variables such as REDIS_PORT_6379_TCP=tcp://host:6379; if this container was started with --link: " +
				"Docker Engine 29 and later set no link variables unless the daemon runs with DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1; " +
				"pass the target explicitly instead, e.g. -e REDIS_PORT_6379_TCP=tcp://redis:6379 or attache redis 6379"},
		},
		{
			name: "only SCTP link variables: the error says why they did not count",
			src:  Sources{Env: []string{"SIG_PORT_2905_SCTP=sctp://10.0.0.2:2905"}},
			errs: []string{"no services to forward: give a config file (-c), --forward [LISTEN_HOST:]PORT=HOST:PORT, HOST PORT arguments, or Docker link variables such as REDIS_PORT_6379_TCP=tcp://host:6379 (env SIG_PORT_2905_SCTP: SCTP link variables are recognised but not supported; port 2905 is not forwarded)"},
		},
		{
			name: "one argument",
			src:  Sources{Args: []string{"redis"}},
			errs: []string{`arguments "redis": want none, or HOST PORT (listen on PORT, forward to HOST:PORT)`},
		},
		{
			name: "one argument that looks like host:port gets a hint",
			src:  Sources{Args: []string{"redis:6379"}},
			errs: []string{`arguments "redis:6379": want none, or HOST PORT (listen on PORT, forward to HOST:PORT); did you mean redis 6379, or --forward 6379=redis:6379?`},
		},
		{
			name: "an IPv6 host:port argument",
			src:  Sources{Args: []string{"[::1]:6379"}},
			errs: []string{`did you mean ::1 6379, or --forward 6379=[::1]:6379?`},
		},
		{
			name: "three arguments",
			src:  Sources{Args: []string{"redis", "6379", "extra"}},
			errs: []string{`arguments "redis 6379 extra": want none, or HOST PORT`},
		},
		{
			name: "bad PORT argument",
			src:  Sources{Args: []string{"redis", "0"}},
			errs: []string{`argument PORT "0": want a port number 1-65535, got "0"`},
		},
		{
			name: "bad HOST argument",
			src:  Sources{Args: []string{"redis:1", "6379"}},
			errs: []string{`argument HOST "redis:1": want a host name or IP address, got "redis:1"`},
		},
		{
			name: "empty HOST argument",
			src:  Sources{Args: []string{"", "6379"}},
			errs: []string{`argument HOST: want a host name or IP address, got an empty value`},
		},
		{
			name: "a bad --forward names the flag",
			src:  Sources{Forwards: []string{"6379"}},
			errs: []string{`--forward 6379: want [LISTEN_HOST:]PORT=HOST:PORT, got "6379"`},
		},
		{
			name: "port clash between env and --forward names both origins",
			src: Sources{
				Forwards: []string{"6379=a:1"},
				Env:      []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379"},
			},
			errs: []string{"--forward 6379=a:1 and env REDIS_PORT_6379_TCP: both listen on port 6379 (:6379 and 0.0.0.0:6379)"},
		},
		{
			name: "port clash between the file and the arguments",
			src: Sources{
				File: "a.yaml", FileData: []byte("services:\n  - {name: r, listen: 127.0.0.1:6379, backends: [x:1]}\n"),
				Args: []string{"redis", "6379"},
			},
			errs: []string{"a.yaml:2 and arguments redis 6379: both listen on port 6379 (127.0.0.1:6379 and :6379)"},
		},
		{
			name: "port clash between two file services",
			src: Sources{
				File: "a.yaml", FileData: []byte("services:\n  - {name: a, listen: '[::]:1', backends: [x:1]}\n  - {name: b, listen: '[::1]:1', backends: [x:1]}\n"),
			},
			errs: []string{"a.yaml:2 and a.yaml:3: both listen on port 1 ([::]:1 and [::1]:1)"},
		},
		{
			name: "duplicate service names in the file",
			src: Sources{
				File: "a.yaml", FileData: []byte("services:\n  - {name: a, listen: 1, backends: [x:1]}\n  - {name: a, listen: 2, backends: [x:1]}\n"),
			},
			errs: []string{`a.yaml:2 and a.yaml:3: both define service "a"`},
		},
		{
			name: "a backend listed twice",
			src:  Sources{Forwards: []string{"1=x:1,y:1,x:01"}},
			errs: []string{`--forward 1=x:1,y:1,x:01: service "forward-1" lists backend x:1 twice`},
		},
		{
			name: "a file that cannot be read does not hide the other errors",
			src:  Sources{File: "testdata/load/does-not-exist.yaml", Forwards: []string{"bad"}},
			errs: []string{
				"config file: open testdata/load/does-not-exist.yaml: no such file or directory",
				`--forward bad: want [LISTEN_HOST:]PORT=HOST:PORT`,
			},
		},
		{
			name: "errors from every source are reported together, in source order",
			src: Sources{
				File:     "a.yaml",
				FileData: []byte("services:\n  - {name: a, listen: 1, backends: [x:0]}\n"),
				Forwards: []string{"2=10.0.0.1"},
				Args:     []string{"h", "x"},
				Env:      []string{"A_PORT_3_TCP=nope", "B_PORT_4_TCP=tcp://b:4", "C_PORT_4_TCP=tcp://c:4"},
			},
			errs: []string{
				`a.yaml:2: backend: want a port number 1-65535, got "0"`,
				`--forward 2=10.0.0.1: target side: want host:port, got "10.0.0.1", an IP address without a port`,
				`argument PORT "x": want a port number 1-65535, got "x"`,
				`env A_PORT_3_TCP: want tcp://host:port, got "nope"`,
				`env B_PORT_4_TCP and env C_PORT_4_TCP: both ask for port 4, with different targets b:4 and c:4`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(tt.src)
			if cfg == nil {
				t.Fatal("Load returned a nil Config")
			}
			checkErrors(t, err, tt.errs)
		})
	}
}

func TestAppendErrs(t *testing.T) {
	one := errors.New("one")
	got := appendErrs(Errors{one}, nil)
	got = appendErrs(got, one)
	got = appendErrs(got, Errors{one, one})
	if len(got) != 4 {
		t.Errorf("appendErrs flattened to %d errors, want 4", len(got))
	}
}

func TestLoadFileFromDisk(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "attache.yaml")
	if err := os.WriteFile(path, []byte("services:\n  - name: r\n    listen: 1\n    backends: [x:0]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(Sources{File: path})
	checkErrors(t, err, []string{path + `:4: backend: want a port number 1-65535, got "0"`})
}

func TestValidate(t *testing.T) {
	ok := func(name, listen string, backends ...string) Service {
		s := Service{Name: name, Listen: listen, Origin: "o-" + name}
		for _, b := range backends {
			s.Backends = append(s.Backends, Backend{Addr: b})
		}
		return s
	}
	tests := []struct {
		name     string
		services []Service
		errs     []string
	}{
		{
			name:     "distinct hosts on one port do not clash",
			services: []Service{ok("a", "127.0.0.1:80", "x:1"), ok("b", "127.0.0.2:80", "x:1"), ok("c", "[::1]:80", "x:1")},
		},
		{
			name:     "port 0 never clashes",
			services: []Service{ok("a", ":0", "x:1"), ok("b", ":0", "x:1"), ok("c", "0.0.0.0:0", "x:1")},
		},
		{
			name:     "a wildcard clashes with any host",
			services: []Service{ok("a", "127.0.0.1:80", "x:1"), ok("b", "0.0.0.0:80", "x:1"), ok("c", "[::]:80", "x:1")},
			errs: []string{
				"o-a and o-b: both listen on port 80 (127.0.0.1:80 and 0.0.0.0:80)",
				"o-a and o-c: both listen on port 80 (127.0.0.1:80 and [::]:80)",
			},
		},
		{
			name:     "the same host clashes",
			services: []Service{ok("a", "localhost:80", "x:1"), ok("b", "localhost:80", "x:1")},
			errs:     []string{"o-a and o-b: both listen on port 80"},
		},
		{
			name:     "a Config built by hand is checked too",
			services: []Service{{Origin: "code", Listen: "nope"}, ok("b", "1", "x", "y:1", "y:1")},
			errs: []string{
				"code: service has no name",
				`code: service "" has no backends`,
				`code: listen: want a port number 0-65535 (0: any free port), got "nope"`,
				`o-b: service "b": backend: want host:port (IPv6 in brackets), got "x"`,
				`o-b: service "b" lists backend y:1 twice`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := Validate(&Config{Services: tt.services})
			var err error
			if len(errs) > 0 {
				err = errs
			}
			checkErrors(t, err, tt.errs)
		})
	}
}
