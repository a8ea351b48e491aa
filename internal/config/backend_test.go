package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestParseBackend pins every form ParseBackend reads, what it makes of
// it, and that the printed form (Discover.String) reads back the same.
func TestParseBackend(t *testing.T) {
	d := func(kind, name string, port int, server, tag string) Backend {
		return Backend{Discover: &Discover{Kind: kind, Name: name, Port: port, Server: server, Tag: tag}}
	}
	tests := []struct {
		in     string
		want   Backend
		str    string // Backend.String(); "" means the input itself
		noTrip bool   // String() is not a form ParseBackend reads
	}{
		// Fixed addresses, in canonical form.
		{in: "10.0.0.5:6379", want: Backend{Addr: "10.0.0.5:6379"}},
		{in: "redis:06379", want: Backend{Addr: "redis:6379"}, str: "redis:6379"},
		{in: "[2001:DB8::1]:80", want: Backend{Addr: "[2001:db8::1]:80"}, str: "[2001:db8::1]:80"},
		{in: "1234:80", want: Backend{Addr: "1234:80"}},
		// dns://name:port
		{in: "dns://redis.internal:6379", want: d(KindDNS, "redis.internal", 6379, "", "")},
		{in: "DNS://redis.internal.:06379", want: d(KindDNS, "redis.internal", 6379, "", ""), str: "dns://redis.internal:6379"},
		{in: "dns://[redis]:1", want: d(KindDNS, "redis", 1, "", ""), str: "dns://redis:1"},
		// srv://name, and a bare name without a port (ambassadord's form).
		{in: "srv://_redis._tcp.example.com", want: d(KindSRV, "_redis._tcp.example.com", 0, "", "")},
		{in: "srv://example.com.", want: d(KindSRV, "example.com", 0, "", ""), str: "srv://example.com"},
		{in: "_redis._tcp.example.com", want: d(KindSRV, "_redis._tcp.example.com", 0, "", ""), str: "srv://_redis._tcp.example.com"},
		{in: "redis", want: d(KindSRV, "redis", 0, "", ""), str: "srv://redis"},
		{in: "1x", want: d(KindSRV, "1x", 0, "", ""), str: "srv://1x"},
		// etcd://host:port/key
		{in: "etcd://127.0.0.1:2379/backends/redis", want: d(KindEtcd, "/backends/redis", 0, "127.0.0.1:2379", "")},
		{in: "etcd://etcd:2379/backends/redis/", want: d(KindEtcd, "/backends/redis", 0, "etcd:2379", ""), str: "etcd://etcd:2379/backends/redis"},
		{in: "etcd://[::1]:2379/a%2Fb", want: d(KindEtcd, "/a/b", 0, "[::1]:2379", ""), str: "etcd://[::1]:2379/a/b"},
		{in: "etcd://[fe80::1%25eth0]:2379/k", want: d(KindEtcd, "/k", 0, "[fe80::1%eth0]:2379", "")},
		{in: "etcd://h:1//double", want: d(KindEtcd, "//double", 0, "h:1", "")},
		{in: "etcd://h:1/with space", want: d(KindEtcd, "/with space", 0, "h:1", "")},
		// consul://[host:port]/key is the Consul KV store.
		{in: "consul://consul:8500/attache/redis", want: d(KindConsulKV, "attache/redis", 0, "consul:8500", "")},
		{in: "consul:///attache/redis/", want: d(KindConsulKV, "attache/redis", 0, "", ""), str: "consul:///attache/redis"},
		// consul-service://[host:port]/name[?tag=t]
		{in: "consul-service:///redis", want: d(KindConsul, "redis", 0, "", "")},
		{in: "consul-service://10.0.0.2:8500/redis?tag=primary", want: d(KindConsul, "redis", 0, "10.0.0.2:8500", "primary")},
		{in: "consul-service:///redis?tag=a+b%26c", want: d(KindConsul, "redis", 0, "", "a b&c")},
		{in: "consul-service:///redis?tag=", want: d(KindConsul, "redis", 0, "", ""), str: "consul-service:///redis"},
		// docker://label-value
		{in: "docker://redis", want: d(KindDocker, "redis", 0, "", "")},
		{in: "Docker://my_app.redis-1", want: d(KindDocker, "my_app.redis-1", 0, "", ""), str: "docker://my_app.redis-1"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBackend(tt.in)
			if err != nil {
				t.Fatalf("ParseBackend(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseBackend(%q) = %s, want %s", tt.in, dump(got), dump(tt.want))
			}
			str := tt.str
			if str == "" {
				str = tt.in
			}
			if got.String() != str {
				t.Errorf("String() = %q, want %q", got.String(), str)
			}
			again, err := ParseBackend(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("ParseBackend(%q) = %s, %v; want the same backend back", got.String(), dump(again), err)
			}
		})
	}
}

// dump shows a Backend with its Discover, which %+v prints as a pointer.
func dump(b Backend) string {
	if b.Discover == nil {
		return fmt.Sprintf("%+v", b)
	}
	return fmt.Sprintf("{Addr:%q Weight:%d Discover:%+v}", b.Addr, b.Weight, *b.Discover)
}

func TestParseBackendErrors(t *testing.T) {
	long := strings.Repeat("a.", 127) + "ab"
	tests := []struct{ in, err string }{
		{"", `want host:port, a DNS SRV name or a discovery URL, got an empty value`},
		// Fixed addresses: ParseHostPort's errors.
		{"x:0", `want a port number 1-65535, got "0"`},
		{"x:65536", `want a port number 1-65535, got "65536"`},
		{":80", `want host:port with a host, got ":80"`},
		{"::1", `want host:port (IPv6 in brackets), got "::1"`},
		{"[::1]", `want host:port (IPv6 in brackets), got "[::1]"`},
		{" b:2", `want a host name or IP address, got " b"`},
		// No port: a number is a forgotten half of host:port, not an SRV name.
		{"10.0.0.5", `want host:port, got "10.0.0.5", an IP address without a port`},
		{"6379", `want host:port, got "6379", a port without a host`},
		{"a b", `want host:port, a DNS SRV name or a discovery URL, got "a b": want a DNS name (letters, digits, '-', '_'), got "a b"`},
		{"a..b", `got "a..b": want a DNS name (labels of 1-63 characters), got "a..b"`},
		{"ä", `want a DNS name (letters, digits, '-', '_')`},
		{".", `want a DNS name, got an empty one`},
		{long, `want a DNS name of at most 253 characters, got 256`},
		// Schemes.
		{"tcp://redis:6379", `want host:port without tcp://, got "tcp://redis:6379"`},
		{"TCP://redis:6379", `want host:port without tcp://`},
		{"http://redis:6379", `unknown backend scheme "http" in "http://redis:6379" (want dns, srv, etcd, consul, consul-service, docker or attache)`},
		{"://x", `unknown backend scheme "" in "://x"`},
		{"a:1://x", `unknown backend scheme "a:1"`},
		// dns://
		{"dns://redis", `want dns://name:port, got "dns://redis": the port is missing`},
		{"dns://a:b:c", `want dns://name:port, got "dns://a:b:c": not name:port`},
		{"dns://redis:0", `want dns://name:port, got "dns://redis:0": want a port number 1-65535, got "0"`},
		{"dns://redis:http", `want a port number 1-65535, got "http"`},
		{"dns://redis:6379/", `want a port number 1-65535, got "6379/"`},
		{"dns://:6379", `want a DNS name, got an empty one`},
		{"dns://10.0.0.1:6379", `want dns://name:port, got "dns://10.0.0.1:6379": want a DNS name, got "10.0.0.1", a number or IP address (a fixed address is written host:port)`},
		{"dns://[::1]:6379", `want a DNS name (letters, digits, '-', '_'), got "::1"`},
		// srv://
		{"srv://", `want srv://name, got "srv://": want a DNS name, got an empty one`},
		{"srv://redis:6379", `want srv://name, got "srv://redis:6379": want a DNS name (letters, digits, '-', '_'), got "redis:6379"`},
		{"srv://10.0.0.1", `a number or IP address`},
		// etcd://
		{"etcd://h:2379", `want etcd://host:port/key, got "etcd://h:2379": the key is missing`},
		{"etcd://h:2379/", `the key is missing`},
		{"etcd:///key", `want etcd://host:port/key, got "etcd:///key": the etcd server is missing (or write {etcd: key} in the file, with discovery.etcd.endpoints)`},
		{"etcd://h/key", `want etcd://host:port/key, got "etcd://h/key": server: want host:port (IPv6 in brackets), got "h"`},
		{"etcd://h:0/key", `server: want a port number 1-65535, got "0"`},
		{"etcd://u:p@h:1/key", `credentials in the URL are not supported; set them in the discovery section of the file`},
		{"etcd://h:1/key?x=1", `want etcd://host:port/key, got "etcd://h:1/key?x=1": a query (?) is not allowed`},
		{"etcd://h:1/key?", `a query (?) is not allowed`},
		{"etcd://h:1/key#frag", `a fragment (#) is not allowed`},
		{"etcd://h:1/a%25b", `want a key without '?', '#' or '%', got "/a%b"`},
		{"etcd://h:1/a%3Fb", `want a key without '?', '#' or '%', got "/a?b"`},
		{"etcd://h:1/a%0Ab", `key: want no control characters, got "/a\nb"`},
		{"etcd://h:1/%zz", `want etcd://host:port/key, got "etcd://h:1/%zz": not a valid URL`},
		{"etcd://[fe80::1%eth0]:1/k", `not a valid URL`},
		// consul:// (KV)
		{"consul://c:8500", `want consul://[host:port]/key, got "consul://c:8500": the key is missing`},
		{"consul:///", `the key is missing`},
		{"consul://attache/redis", `want consul://[host:port]/key, got "consul://attache/redis": server: want host:port (IPv6 in brackets), got "attache"`},
		{"consul://c:8500/k?recurse", `a query (?) is not allowed`},
		// consul-service://
		{"consul-service://redis", `want consul-service://[host:port]/name[?tag=t], got "consul-service://redis": server: want host:port (IPv6 in brackets), got "redis" (for the address in the discovery section, write consul-service:///redis)`},
		{"consul-service:///", `the service name is missing`},
		{"consul-service:///a/b", `want a Consul service name (no '/', '?', '#', '%', spaces or control characters), got "a/b"`},
		{"consul-service:///a%20b", `want a Consul service name`},
		{"consul-service:///redis?tags=x", `want at most one query parameter, tag, got "tags=x"`},
		{"consul-service:///redis?tag=a&tag=b", `want at most one query parameter, tag, got "tag=a&tag=b"`},
		{"consul-service:///redis?tag=%zz", `bad query "tag=%zz"`},
		{"consul-service:///redis?tag=a%0Ab", `tag: want no control characters, got "a\nb"`},
		// docker://
		{"docker://", `want docker://label-value, got "docker://": want a label value of letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit), got ""`},
		{"docker://-x", `got "-x"`},
		{"docker://a/b", `got "a/b"`},
		{"docker://" + strings.Repeat("a", 64), `want a label value`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBackend(tt.in)
			if err == nil {
				t.Fatalf("ParseBackend(%q) = %s, want error %q", tt.in, dump(got), tt.err)
			}
			if !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseBackend(%q) error:\n got %q\nwant it to contain %q", tt.in, err, tt.err)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Errorf("error %q is not a single line", err)
			}
		})
	}
}

// TestDiscoverString covers entries only the file or code can make: they
// print in a readable form even where ParseBackend cannot read it back.
func TestDiscoverString(t *testing.T) {
	tests := []struct {
		d    Discover
		want string
	}{
		{Discover{Kind: KindEtcd, Name: "/backends/redis"}, "etcd:/backends/redis"},
		{Discover{Kind: KindEtcd, Name: "backends", Server: "h:1"}, "etcd://h:1/backends"},
		{Discover{Kind: KindConsulKV, Name: "/k"}, "consul:///k"},
		{Discover{Kind: KindConsul, Name: "redis", Server: "[fe80::1%eth0]:8500", Tag: "a b"}, "consul-service://[fe80::1%25eth0]:8500/redis?tag=a+b"},
		{Discover{Kind: "zk", Name: "x"}, "zk:x"},
	}
	for _, tt := range tests {
		if got := tt.d.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.d, got, tt.want)
		}
	}
	if got := (Backend{Addr: "x:1", Weight: 3}).String(); got != "x:1 (weight 3)" {
		t.Errorf("weighted backend prints %q", got)
	}
	if got := (Backend{Addr: "x:1", Weight: 1}).String(); got != "x:1" {
		t.Errorf("weight 1 prints %q", got)
	}
}

// TestParseFileBackendForms covers every way a backend is written in the
// file: a string in any ParseBackend form, or a mapping with exactly one
// kind key.
func TestParseFileBackendForms(t *testing.T) {
	d := func(kind, name string, port int, server, tag string) Backend {
		return Backend{Discover: &Discover{Kind: kind, Name: name, Port: port, Server: server, Tag: tag}}
	}
	tests := []struct {
		name    string
		backend string // one entry of a block list, indented under "- "
		want    Backend
	}{
		{"a string host:port", "10.0.0.5:6379", Backend{Addr: "10.0.0.5:6379"}},
		{"a bare name is SRV", "_redis._tcp.example.com", d(KindSRV, "_redis._tcp.example.com", 0, "", "")},
		{"a string URL", "consul-service:///redis?tag=primary", d(KindConsul, "redis", 0, "", "primary")},
		{"addr", "{addr: redis:6379}", Backend{Addr: "redis:6379"}},
		{"addr with weight", "{addr: redis:06379, weight: 3}", Backend{Addr: "redis:6379", Weight: 3}},
		{"weight before addr", "{weight: 2, addr: x:1}", Backend{Addr: "x:1", Weight: 2}},
		{"dns", "{dns: redis.internal:6379}", d(KindDNS, "redis.internal", 6379, "", "")},
		{"srv", "{srv: _redis._tcp.example.com.}", d(KindSRV, "_redis._tcp.example.com", 0, "", "")},
		{"etcd", "{etcd: /backends/redis/}", d(KindEtcd, "/backends/redis", 0, "", "")},
		{"etcd without a leading slash", "{etcd: backends/redis}", d(KindEtcd, "backends/redis", 0, "", "")},
		{"consul", "{consul: redis}", d(KindConsul, "redis", 0, "", "")},
		{"consul with a tag", "{consul: redis, tag: primary}", d(KindConsul, "redis", 0, "", "primary")},
		{"tag before consul", "{tag: primary, consul: redis}", d(KindConsul, "redis", 0, "", "primary")},
		{"consul_kv", "{consul_kv: /attache/redis/}", d(KindConsulKV, "attache/redis", 0, "", "")},
		{"consul_kv with leading slashes and a space", "{consul_kv: '//attache/my redis'}", d(KindConsulKV, "attache/my redis", 0, "", "")},
		{"a tag that needs escaping in a URL", "{consul: redis, tag: 'a&b=c+d'}", d(KindConsul, "redis", 0, "", "a&b=c+d")},
		{"docker", "{docker: redis}", d(KindDocker, "redis", 0, "", "")},
		{"url with a discovery form", "{url: 'etcd://etcd:2379/backends/redis'}", d(KindEtcd, "/backends/redis", 0, "etcd:2379", "")},
		{"url with an address and a weight", "{url: '10.0.0.1:80', weight: 2}", Backend{Addr: "10.0.0.1:80", Weight: 2}},
		{"block mapping", "srv: redis\n        ", d(KindSRV, "redis", 0, "", "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "services:\n  - name: s\n    listen: 1\n    backends:\n      - " + tt.backend + "\n"
			f, err := ParseFile("f.yaml", []byte(in))
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Services) != 1 || len(f.Services[0].Backends) != 1 {
				t.Fatalf("services %+v", f.Services)
			}
			got := f.Services[0].Backends[0]
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %s, want %s", dump(got), dump(tt.want))
			}
			// What the file says, --forward can say too (but etcd without
			// a server).
			checkBackend(t, tt.name, got)
		})
	}
}

func TestParseFileBackendErrors(t *testing.T) {
	const kinds = "addr, dns, srv, etcd, consul, consul_kv, docker, url"
	tests := []struct {
		name    string
		backend string // the text after "      - " on line 5
		errs    []string
	}{
		{"two kind keys", "{addr: x:1, srv: y}", []string{"f.yaml:5: backend: want only one of " + kinds + ", got addr and srv"}},
		{"three kind keys", "{url: 'x:1', docker: d, dns: 'a:1'}", []string{"got dns and docker and url"}},
		{"only a weight", "{weight: 2}", []string{"f.yaml:5: backend: want one of the keys " + kinds}},
		{"a tag on srv", "{srv: x, tag: t}", []string{"f.yaml:5: tag: only a consul backend takes a tag (a consul-service:// url carries its own ?tag=)"}},
		{"a tag on a consul-service url", "{url: 'consul-service:///x', tag: t}", []string{"tag: only a consul backend takes a tag"}},
		{"a tag on consul_kv", "{consul_kv: k, tag: t}", []string{"tag: only a consul backend takes a tag"}},
		{"a tag alone", "{tag: t}", []string{"backend: want one of the keys", "tag: only a consul backend"}},
		{"a tag with a newline", `{consul: x, tag: "a\nb"}`, []string{`f.yaml:5: tag: want no control characters, got "a\nb"`}},
		{"weight on srv", "{srv: x, weight: 2}", []string{"f.yaml:5: weight: only a fixed addr takes a weight; discovered backends carry their own"}},
		{"weight on a discovery url", "{url: 'dns://x:1', weight: 2}", []string{"weight: only a fixed addr takes a weight"}},
		{"weight 0", "{addr: x:1, weight: 0}", []string{`f.yaml:5: weight: want a whole number 1 or more, got "0"`}},
		{"weight not a number", "{addr: x:1, weight: heavy}", []string{`weight: want a whole number 1 or more, got "heavy"`}},
		{"bad docker label value", "{docker: 'a b'}", []string{`f.yaml:5: docker: want a label value of letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit), got "a b"`}},
		{"docker label value starting with a dot", "{docker: .x}", []string{`docker: want a label value`}},
		{"dns without a port", "{dns: redis}", []string{`f.yaml:5: dns: want name:port, got "redis": the port is missing`}},
		{"dns with an IP", "{dns: '10.0.0.1:80'}", []string{`dns: want name:port, got "10.0.0.1:80": want a DNS name, got "10.0.0.1", a number or IP address`}},
		{"dns with a bad port", "{dns: 'x:99999'}", []string{`dns: want name:port, got "x:99999": want a port number 1-65535, got "99999"`}},
		{"srv with a port", "{srv: 'x:1'}", []string{`f.yaml:5: srv: want a DNS name (letters, digits, '-', '_'), got "x:1"`}},
		{"srv empty", "{srv: ''}", []string{`srv: want a DNS name, got an empty one`}},
		{"etcd empty", "{etcd: /}", []string{`f.yaml:5: etcd: want a non-empty key`}},
		{"etcd key with a query", "{etcd: 'a?b'}", []string{`etcd: want a key without '?', '#' or '%', got "a?b"`}},
		{"etcd key with a control character", `{etcd: "a\tb"}`, []string{`etcd: key: want no control characters, got "a\tb"`}},
		{"consul with a slash", "{consul: a/b}", []string{`f.yaml:5: consul: want a Consul service name (no '/', '?', '#', '%', spaces or control characters), got "a/b"`}},
		{"consul with a space", "{consul: 'a b'}", []string{`consul: want a Consul service name`}},
		{"consul_kv with a percent", "{consul_kv: 'a%b'}", []string{`consul_kv: want a key without '?', '#' or '%'`}},
		{"url tcp://", "{url: 'tcp://x:1'}", []string{`f.yaml:5: url: want host:port without tcp://, got "tcp://x:1"`}},
		{"url a list", "{url: [x:1]}", []string{`f.yaml:5: url: want a single value, got a list`}},
		{"addr a discovery URL", "{addr: 'srv://x'}", []string{`f.yaml:5: addr: want host:port or unix:///path, got "srv://x" (a discovery URL goes under url)`}},
		{"unknown key", "{srv: x, port: 1}", []string{`f.yaml:5: port: unknown key in backend (want one of: addr, consul, consul_kv, dns, docker, etcd, link, send_proxy, srv, tag, url, weight)`}},
		{"a bad string URL", "'etcd:///k'", []string{`f.yaml:5: backend: want etcd://host:port/key, got "etcd:///k": the etcd server is missing`}},
		{"an IP without a port", "10.0.0.5", []string{`f.yaml:5: backend: want host:port, got "10.0.0.5", an IP address without a port`}},
		{"a port without a host", "6379", []string{`f.yaml:5: backend: want host:port, got "6379", a port without a host`}},
		{"null", "~", []string{`f.yaml:5: backend: want a single value, got nothing`}},
		{"weight on srv, on its own line", "srv: x\n        weight: 2", []string{"f.yaml:6: weight: only a fixed addr takes a weight"}},
		{"tag on dns, on its own line", "dns: 'x:1'\n        tag: t", []string{"f.yaml:6: tag: only a consul backend takes a tag"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "services:\n  - name: s\n    listen: 1\n    backends:\n      - " + tt.backend + "\n"
			f, err := ParseFile("f.yaml", []byte(in))
			checkErrors(t, err, tt.errs)
			if len(f.Services) != 0 {
				t.Errorf("a service with a bad backend was kept: %+v", f.Services)
			}
		})
	}
}
