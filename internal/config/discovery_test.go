package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFileDiscovery(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Discovery
	}{
		{
			name: "every key",
			in: `discovery:
  dns: {server: "10.0.0.2:53", min_ttl: 1s, max_ttl: 1m, timeout: 2s}
  etcd:
    endpoints: [etcd-1:2379, "http://etcd-2:2379", "https://[::1]:2379"]
    username: attache
    password: secret
    dial_timeout: 3s
  consul: {address: "http://consul:8500", token: t0k3n, datacenter: dc1}
  docker: {host: "unix:///var/run/docker.sock", label: com.example.service, port_label: com.example.port, network: backend}
`,
			want: Discovery{
				DNS:    DNSDiscovery{Server: "10.0.0.2:53", MinTTL: time.Second, MaxTTL: time.Minute, Timeout: 2 * time.Second},
				Etcd:   EtcdDiscovery{Endpoints: []string{"etcd-1:2379", "http://etcd-2:2379", "https://[::1]:2379"}, Username: "attache", Password: "secret", DialTimeout: 3 * time.Second},
				Consul: ConsulDiscovery{Address: "http://consul:8500", Token: "t0k3n", Datacenter: "dc1"},
				Docker: DockerDiscovery{Host: "unix:///var/run/docker.sock", Label: "com.example.service", PortLabel: "com.example.port", Network: "backend"},
			},
		},
		{
			name: "empty sections",
			in:   "discovery: {dns: {}, etcd: {}, consul: {}, docker: {}}\n",
		},
		{
			name: "one etcd endpoint as a string; docker over tcp",
			in:   "discovery:\n  etcd: {endpoints: etcd:2379}\n  docker: {host: 'tcp://10.0.0.1:2375'}\n",
			want: Discovery{Etcd: EtcdDiscovery{Endpoints: []string{"etcd:2379"}}, Docker: DockerDiscovery{Host: "tcp://10.0.0.1:2375"}},
		},
		{
			name: "min_ttl equal to max_ttl",
			in:   "discovery:\n  dns: {min_ttl: 5s, max_ttl: 5s}\n",
			want: Discovery{DNS: DNSDiscovery{MinTTL: 5 * time.Second, MaxTTL: 5 * time.Second}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile("f.yaml", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(f.Discovery, tt.want) {
				t.Errorf("got  %+v\nwant %+v", f.Discovery, tt.want)
			}
		})
	}
}

func TestParseFileDiscoveryErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		errs []string
	}{
		{"not a mapping", "discovery: [dns]\n", []string{"f.yaml:1: discovery: want a mapping of keys, got a list"}},
		{"unknown section", "discovery:\n  zookeeper: {}\n", []string{"f.yaml:2: zookeeper: unknown key in discovery (want one of: consul, dns, docker, etcd)"}},
		{"unknown dns key", "discovery:\n  dns:\n    ttl: 1s\n", []string{"f.yaml:3: ttl: unknown key in discovery.dns (want one of: max_ttl, min_ttl, server, timeout)"}},
		{"unknown etcd key", "discovery:\n  etcd: {endpoint: x:1}\n", []string{"f.yaml:2: endpoint: unknown key in discovery.etcd (want one of: dial_timeout, endpoints, password, tls, username)"}},
		{"unknown consul key", "discovery:\n  consul: {addr: x:1}\n", []string{"f.yaml:2: addr: unknown key in discovery.consul (want one of: address, datacenter, tls, token)"}},
		{"unknown docker key", "discovery:\n  docker: {socket: /x}\n", []string{"f.yaml:2: socket: unknown key in discovery.docker (want one of: host, label, network, port_label, tls)"}},
		{"min_ttl more than max_ttl, on min_ttl's line", "discovery:\n  dns:\n    max_ttl: 1s\n    min_ttl: 1m\n", []string{"f.yaml:4: min_ttl: 1m0s is more than max_ttl 1s"}},
		{"a zero min_ttl", "discovery:\n  dns: {min_ttl: 0s}\n", []string{`f.yaml:2: min_ttl: want a duration such as 500ms, 10s or 1h (greater than zero), got "0s"`}},
		{"a dns server without a port", "discovery:\n  dns: {server: 10.0.0.2}\n", []string{`f.yaml:2: server: want host:port (IPv6 in brackets), got "10.0.0.2"`}},
		{"a bad dns timeout", "discovery:\n  dns: {timeout: off}\n", []string{`timeout: want a duration such as 500ms, 10s or 1h, got "off"`}},
		{"no etcd endpoints", "discovery:\n  etcd: {endpoints: []}\n", []string{"f.yaml:2: endpoints: empty: want at least one host:port"}},
		{"a bad etcd endpoint", "discovery:\n  etcd:\n    endpoints:\n      - etcd:2379\n      - etcd\n", []string{`f.yaml:5: endpoints: want host:port (IPv6 in brackets), got "etcd"`}},
		{"null etcd endpoints", "discovery:\n  etcd: {endpoints: ~}\n", []string{`endpoints: want a single value, got nothing`}},
		{"a bad etcd dial_timeout", "discovery:\n  etcd: {dial_timeout: soon}\n", []string{`dial_timeout: want a duration`}},
		{"a bad consul address", "discovery:\n  consul: {address: 'http://consul'}\n", []string{`f.yaml:2: address: want host:port (IPv6 in brackets), got "consul"`}},
		{"a docker host that is a path", "discovery:\n  docker: {host: /var/run/docker.sock}\n", []string{`f.yaml:2: host: want unix:///path/to/docker.sock or tcp://host:port, got "/var/run/docker.sock"`}},
		{"a relative unix socket", "discovery:\n  docker: {host: 'unix://docker.sock'}\n", []string{`host: want unix:///path/to/docker.sock or tcp://host:port, got "unix://docker.sock"`}},
		{"an empty unix socket", "discovery:\n  docker: {host: 'unix://'}\n", []string{`got "unix://"`}},
		{"a tcp docker host without a port", "discovery:\n  docker:\n    label: x\n    host: 'tcp://docker'\n", []string{`f.yaml:4: host: want unix:///path/to/docker.sock or tcp://host:port, got "tcp://docker": want host:port (IPv6 in brackets), got "docker"`}},
		{"an ssh docker host", "discovery:\n  docker: {host: 'ssh://me@docker'}\n", []string{`got "ssh://me@docker"`}},
		{"a docker label that is a list", "discovery:\n  docker: {label: [a]}\n", []string{`f.yaml:2: label: want a single value, got a list`}},
		{"discovery twice", "discovery: {}\ndiscovery: {}\n", []string{"f.yaml:2: discovery: duplicate key in top level (first set on line 1)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile("f.yaml", []byte(tt.in))
			checkErrors(t, err, tt.errs)
		})
	}
}

// service is a file with one service s, whose extra keys are given (each
// on its own line, indented by four spaces) after its name, listen and
// backends on lines 2-4.
func service(extra string) string {
	return "services:\n  - name: s\n    listen: 1\n    backends: [x:1]\n" + extra
}

func TestParseFileHealthCheck(t *testing.T) {
	def := DefaultHealthCheck
	tests := []struct {
		name  string
		extra string
		want  *HealthCheck
	}{
		{"none", "", nil},
		{"tcp", "    health_check: tcp\n", &def},
		{"an empty mapping takes every default", "    health_check: {}\n", &def},
		{"every key", "    health_check:\n      interval: 10s\n      timeout: 1s\n      rise: 1\n      fall: 5\n      send: \"PING\\r\\n\"\n      expect: \"+PONG\"\n",
			&HealthCheck{Interval: 10 * time.Second, Timeout: time.Second, Rise: 1, Fall: 5, Send: "PING\r\n", Expect: "+PONG"}},
		{"send and expect only: timings from the defaults", "    health_check: {send: hello, expect: world}\n",
			&HealthCheck{Interval: def.Interval, Timeout: def.Timeout, Rise: def.Rise, Fall: def.Fall, Send: "hello", Expect: "world"}},
		{"expect alone reads a banner", "    health_check: {expect: '220 '}\n",
			&HealthCheck{Interval: def.Interval, Timeout: def.Timeout, Rise: def.Rise, Fall: def.Fall, Expect: "220 "}},
		{"an interval shorter than the default timeout shortens the timeout", "    health_check: {interval: 500ms}\n",
			&HealthCheck{Interval: 500 * time.Millisecond, Timeout: 500 * time.Millisecond, Rise: def.Rise, Fall: def.Fall}},
		{"a timeout equal to the interval", "    health_check: {interval: 1s, timeout: 1s}\n",
			&HealthCheck{Interval: time.Second, Timeout: time.Second, Rise: def.Rise, Fall: def.Fall}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile("f.yaml", []byte(service(tt.extra)))
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Services[0].HealthCheck; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if DefaultHealthCheck != def {
		t.Errorf("parsing changed DefaultHealthCheck to %+v", DefaultHealthCheck)
	}
}

func TestParseFileServiceSettingsErrors(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		errs  []string
	}{
		{"health_check send without expect", "    health_check: {send: PING}\n",
			[]string{"f.yaml:5: expect: missing: send without expect checks nothing beyond a connect; give the reply to expect"}},
		{"health_check timeout longer than the interval", "    health_check:\n      interval: 1s\n      timeout: 2s\n",
			[]string{"f.yaml:7: timeout: 2s is longer than the interval 1s"}},
		{"health_check rise 0", "    health_check: {rise: 0}\n", []string{`f.yaml:5: rise: want a whole number 1 or more, got "0"`}},
		{"health_check fall negative", "    health_check: {fall: -1}\n", []string{`f.yaml:5: fall: want a whole number 1 or more, got "-1"`}},
		{"health_check interval off", "    health_check: {interval: off}\n", []string{`f.yaml:5: interval: want a duration such as 500ms, 10s or 1h, got "off"`}},
		{"health_check unknown key", "    health_check: {port: 80}\n", []string{"f.yaml:5: port: unknown key in health_check (want one of: expect, fall, interval, rise, send, timeout)"}},
		{"health_check http", "    health_check: http\n", []string{`f.yaml:5: health_check: want tcp or a mapping (interval, timeout, rise, fall, send, expect), got "http"`}},
		{"health_check null: one error", "    health_check:\n", []string{`f.yaml:5: health_check: want tcp or a mapping (interval, timeout, rise, fall, send, expect), got nothing`}},
		{"health_check a list", "    health_check: [tcp]\n", []string{`f.yaml:5: health_check: want a mapping of keys, got a list`}},
		{"unknown balance", "    balance: roundrobin\n", []string{`f.yaml:5: balance: want one of round_robin, least_conn, random, source_hash, weighted, first, got "roundrobin"`}},
		{"balance in upper case", "    balance: FIRST\n", []string{`balance: want one of`}},
		{"balance a list", "    balance: [first]\n", []string{`f.yaml:5: balance: want a single value, got a list`}},
		{"negative retries", "    retries: -1\n", []string{`f.yaml:5: retries: want a whole number 0 or more (0: none), got "-1"`}},
		{"retry_timeout off", "    retry_timeout: off\n", []string{`f.yaml:5: retry_timeout: want a duration such as 500ms, 10s or 1h, got "off"`}},
		{"retry_timeout 0", "    retry_timeout: 0s\n", []string{`retry_timeout: want a duration such as 500ms, 10s or 1h (greater than zero), got "0s"`}},
		{"eject_time negative", "    eject_time: -1s\n", []string{`f.yaml:5: eject_time: want a duration such as 500ms, 10s or 1h, or off (greater than zero), got "-1s"`}},
		{"close_on_remove maybe", "    close_on_remove: maybe\n", []string{`f.yaml:5: close_on_remove: want true or false, got "maybe"`}},
		{"close_on_remove a mapping", "    close_on_remove: {}\n", []string{`f.yaml:5: close_on_remove: want a single value, got a mapping`}},
		{"no settings at all is fine", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile("f.yaml", []byte(service(tt.extra)))
			checkErrors(t, err, tt.errs)
		})
	}
	// Only the tuning keys may be defaults; the rest are per service.
	for _, key := range []string{"balance: first", "health_check: tcp", "close_on_remove: true"} {
		_, err := ParseFile("f.yaml", []byte("defaults:\n  "+key+"\n"))
		checkErrors(t, err, []string{"f.yaml:2: " + strings.SplitN(key, ":", 2)[0] + ": unknown key in defaults"})
	}
}

func TestParseFileServiceSettings(t *testing.T) {
	for _, policy := range Policies {
		t.Run("balance "+policy, func(t *testing.T) {
			f, err := ParseFile("f.yaml", []byte(service("    balance: "+policy+"\n")))
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Services[0].Balance; got != policy {
				t.Errorf("balance %q, want %q", got, policy)
			}
		})
	}
	for in, want := range map[string]bool{"true": true, "yes": true, "On": true, "false": false, "no": false, "off": false} {
		t.Run("close_on_remove "+in, func(t *testing.T) {
			f, err := ParseFile("f.yaml", []byte(service("    close_on_remove: "+in+"\n")))
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Services[0].CloseOnRemove; got != want {
				t.Errorf("close_on_remove %v, want %v", got, want)
			}
		})
	}
}

// TestLoadRetryPrecedence pins where retries, retry_timeout and
// eject_time come from: builtin < file defaults < flags < the service's
// own setting, with retry_timeout falling back to the service's connect
// timeout and an explicit 0 / off beating every default.
func TestLoadRetryPrecedence(t *testing.T) {
	type retry struct {
		retries      int
		retryTimeout time.Duration
		eject        time.Duration
	}
	const services = `services:
  - name: plain
    listen: 1
    backends: [x:1]
  - name: slow
    listen: 2
    backends: [x:2]
    connect_timeout: 7s
  - name: own
    listen: 3
    backends: [x:3]
    retries: 0
    retry_timeout: 9s
    eject_time: off
`
	const defaults = "defaults:\n  retries: 5\n  retry_timeout: 4s\n  eject_time: 2s\n"
	tests := []struct {
		name  string
		file  string
		flags Defaults
		want  map[string]retry
	}{
		{
			name: "builtin: 3 retries, the connect timeout, 1s",
			file: services,
			want: map[string]retry{"plain": {3, 5 * time.Second, time.Second}, "slow": {3, 7 * time.Second, time.Second}, "own": {0, 9 * time.Second, -1}},
		},
		{
			name: "file defaults beat builtin, not a service's own",
			file: defaults + services,
			want: map[string]retry{"plain": {5, 4 * time.Second, 2 * time.Second}, "slow": {5, 4 * time.Second, 2 * time.Second}, "own": {0, 9 * time.Second, -1}},
		},
		{
			name:  "flags beat file defaults, not a service's own",
			file:  defaults + services,
			flags: Defaults{Retries: 1, RetryTimeout: 6 * time.Second, EjectTime: -1},
			want:  map[string]retry{"plain": {1, 6 * time.Second, -1}, "slow": {1, 6 * time.Second, -1}, "own": {0, 9 * time.Second, -1}},
		},
		{
			name:  "an explicit 0 in the flags",
			file:  services,
			flags: Defaults{Retries: -1},
			want:  map[string]retry{"plain": {0, 5 * time.Second, time.Second}, "slow": {0, 7 * time.Second, time.Second}, "own": {0, 9 * time.Second, -1}},
		},
		{
			name: "explicit 0 and off in the defaults",
			file: "defaults: {retries: 0, eject_time: 0}\n" + services,
			want: map[string]retry{"plain": {0, 5 * time.Second, -1}, "slow": {0, 7 * time.Second, -1}, "own": {0, 9 * time.Second, -1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(Sources{File: "a.yaml", FileData: []byte(tt.file), Flags: tt.flags})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]retry{}
			for _, s := range cfg.Services {
				got[s.Name] = retry{s.Retries, s.RetryTimeout, s.EjectTime}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLoadBalanceDefault(t *testing.T) {
	tests := []struct {
		name string
		src  Sources
		want string
	}{
		{"fixed addresses: round_robin", Sources{Forwards: []string{"1=a:1,b:1"}}, "round_robin"},
		{"an SRV backend: first", Sources{Forwards: []string{"1=a:1,srv://x"}}, "first"},
		{"a bare name is SRV: first", Sources{Forwards: []string{"1=redis"}}, "first"},
		{"a dns backend: round_robin", Sources{Forwards: []string{"1=dns://x:1"}}, "round_robin"},
		{"an explicit policy beats the SRV default", Sources{FileData: []byte("services:\n  - {name: s, listen: 1, backends: [srv://x], balance: least_conn}\n")}, "least_conn"},
		{"SRV in a file mapping", Sources{FileData: []byte("services:\n  - {name: s, listen: 1, backends: [{srv: x}]}\n")}, "first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(tt.src)
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Services[0].Balance; got != tt.want {
				t.Errorf("balance %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLoadForwardDiscovery feeds discovery entries through --forward, the
// way `attache --forward 6379=srv://x,dns://y:6379` does.
func TestLoadForwardDiscovery(t *testing.T) {
	cfg, err := Load(Sources{Forwards: []string{"6379=srv://x,dns://y:6379", "7000=consul-service:///redis?tag=primary,docker://redis"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{
		{
			Name: "forward-6379", Listen: ":6379", Origin: "--forward 6379=srv://x,dns://y:6379",
			Backends: []Backend{
				{Discover: &Discover{Kind: KindSRV, Name: "x"}},
				{Discover: &Discover{Kind: KindDNS, Name: "y", Port: 6379}},
			},
			Balance: "first",
		},
		{
			Name: "forward-7000", Listen: ":7000", Origin: "--forward 7000=consul-service:///redis?tag=primary,docker://redis",
			Backends: []Backend{
				{Discover: &Discover{Kind: KindConsul, Name: "redis", Tag: "primary"}},
				{Discover: &Discover{Kind: KindDocker, Name: "redis"}},
			},
			Balance: "round_robin",
		},
	}
	for i := range want {
		w := &want[i]
		w.ConnectTimeout, w.KeepAlive = BuiltinDefaults.ConnectTimeout, BuiltinDefaults.KeepAlive
		w.Retries, w.RetryTimeout, w.EjectTime = 3, BuiltinDefaults.ConnectTimeout, time.Second
	}
	if !reflect.DeepEqual(cfg.Services, want) {
		t.Errorf("services:\n got %+v\nwant %+v", cfg.Services, want)
	}

	_, err = Load(Sources{Forwards: []string{"6379=srv://x,tcp://y:1"}})
	checkErrors(t, err, []string{`--forward 6379=srv://x,tcp://y:1: target side: want host:port without tcp://, got "tcp://y:1"`})
}

func TestLoadDiscoveryErrors(t *testing.T) {
	tests := []struct {
		name string
		src  Sources
		errs []string
	}{
		{
			name: "an etcd key without endpoints anywhere names the service",
			src:  Sources{File: "a.yaml", FileData: []byte("services:\n  - {name: cache, listen: 1, backends: [{etcd: /backends/cache}]}\n")},
			errs: []string{`a.yaml:2: service "cache": etcd backend etcd:/backends/cache needs discovery.etcd.endpoints in the file, or an etcd://host:port/key URL`},
		},
		{
			name: "the same discovery entry twice, written two ways",
			src:  Sources{Forwards: []string{"1=srv://redis,redis"}},
			errs: []string{`--forward 1=srv://redis,redis: service "forward-1" lists backend srv://redis twice`},
		},
		{
			name: "the same consul service twice in the file",
			src:  Sources{File: "a.yaml", FileData: []byte("services:\n  - {name: s, listen: 1, backends: [{consul: r, tag: a}, 'consul-service:///r?tag=a']}\n")},
			errs: []string{`a.yaml:2: service "s" lists backend consul-service:///r?tag=a twice`},
		},
		{
			name: "a consul_kv mapping and its URL are the same entry",
			src:  Sources{Forwards: []string{"1=consul:///k,consul:///k/"}},
			errs: []string{`lists backend consul:///k twice`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(tt.src)
			checkErrors(t, err, tt.errs)
		})
	}

	// Endpoints in the discovery section, or a server in the URL, are enough;
	// and a consul service with another tag is another entry.
	for _, file := range []string{
		"discovery:\n  etcd: {endpoints: [etcd:2379]}\nservices:\n  - {name: s, listen: 1, backends: [{etcd: /k}]}\n",
		"services:\n  - {name: s, listen: 1, backends: ['etcd://etcd:2379/k', {etcd: /k2}]}\ndiscovery: {etcd: {endpoints: etcd:2379}}\n",
		"services:\n  - {name: s, listen: 1, backends: ['etcd://etcd:2379/k', 'etcd://etcd:2380/k']}\n",
		"services:\n  - {name: s, listen: 1, backends: [{consul: r, tag: a}, {consul: r, tag: b}, {consul: r}]}\n",
	} {
		cfg, err := Load(Sources{File: "a.yaml", FileData: []byte(file)})
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		if len(cfg.Services) != 1 {
			t.Errorf("%s: services %+v", file, cfg.Services)
		}
	}
}

func TestValidateDiscovery(t *testing.T) {
	svc := func(bs ...Backend) Service {
		return Service{Name: "s", Listen: ":1", Origin: "code", Backends: bs}
	}
	disc := func(d Discover) Backend { return Backend{Discover: &d} }
	tests := []struct {
		name string
		cfg  Config
		errs []string
	}{
		{
			name: "complete entries",
			cfg: Config{Services: []Service{svc(
				disc(Discover{Kind: KindDNS, Name: "x", Port: 1}), disc(Discover{Kind: KindSRV, Name: "x"}),
				disc(Discover{Kind: KindEtcd, Name: "/k", Server: "e:1"}), disc(Discover{Kind: KindConsul, Name: "x"}),
				disc(Discover{Kind: KindConsulKV, Name: "k"}), disc(Discover{Kind: KindDocker, Name: "x"}),
				Backend{Addr: "x:1"},
			)}},
		},
		{
			name: "an etcd entry with endpoints in the discovery section",
			cfg:  Config{Services: []Service{svc(disc(Discover{Kind: KindEtcd, Name: "/k"}))}, Discovery: Discovery{Etcd: EtcdDiscovery{Endpoints: []string{"e:1"}}}},
		},
		{
			name: "an etcd entry without endpoints",
			cfg:  Config{Services: []Service{svc(disc(Discover{Kind: KindEtcd, Name: "/k"}))}},
			errs: []string{`code: service "s": etcd backend etcd:/k needs discovery.etcd.endpoints in the file, or an etcd://host:port/key URL`},
		},
		{
			name: "incomplete entries",
			cfg:  Config{Services: []Service{svc(disc(Discover{Kind: KindDNS, Name: "x"}), disc(Discover{Kind: KindSRV}))}},
			errs: []string{`code: service "s": incomplete dns backend dns://x:0`, `code: service "s": incomplete srv backend srv://`},
		},
		{
			name: "an unknown kind",
			cfg:  Config{Services: []Service{svc(disc(Discover{Kind: "zookeeper", Name: "x"}))}},
			errs: []string{`code: service "s": unknown discovery kind "zookeeper" (want one of dns, srv, etcd, consul, consul_kv, docker)`},
		},
		{
			name: "the same entry twice",
			cfg:  Config{Services: []Service{svc(disc(Discover{Kind: KindDocker, Name: "x"}), Backend{Addr: "x:1"}, disc(Discover{Kind: KindDocker, Name: "x"}))}},
			errs: []string{`code: service "s" lists backend docker://x twice`},
		},
		{
			name: "an unknown balance policy",
			cfg:  Config{Services: []Service{{Name: "s", Listen: ":1", Origin: "code", Backends: []Backend{{Addr: "x:1"}}, Balance: "fastest"}}},
			errs: []string{`code: service "s": unknown balance policy "fastest" (want one of round_robin, least_conn, random, source_hash, weighted, first)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if errs := Validate(&tt.cfg); len(errs) > 0 {
				err = errs
			}
			checkErrors(t, err, tt.errs)
		})
	}
}
