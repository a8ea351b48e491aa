package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// svc is the part of a Service the link tests pin.
type svc struct{ name, listen, backend, origin string }

func linkServices(le LinkEnv) []svc {
	var out []svc
	for _, s := range le.Services {
		b := ""
		if len(s.Backends) == 1 {
			b = s.Backends[0].Addr
		} else {
			for _, x := range s.Backends {
				b += x.Addr + ";"
			}
		}
		name := s.Name
		if s.IsUDP() {
			name += "/udp" // so that a test pins the protocol too
		}
		out = append(out, svc{name, s.Listen, b, s.Origin})
	}
	return out
}

func TestParseLinkEnv(t *testing.T) {
	tests := []struct {
		name     string
		env      []string
		want     []svc
		warnings []string // substrings, one per warning, in order
		names    []string // LinkNames
	}{
		{
			name: "docs example: listen port from the name, target from the value",
			env:  []string{"REDIS_PORT_1234_TCP=tcp://192.168.1.52:6379"},
			want: []svc{{"redis-1234", "0.0.0.0:1234", "192.168.1.52:6379", "env REDIS_PORT_1234_TCP"}},
		},
		{
			name: "what docker run --link sets for a redis",
			env: []string{
				"HOME=/root", "PATH=/usr/bin",
				"REDIS_PORT=tcp://172.17.0.2:6379",
				"REDIS_PORT_6379_TCP=tcp://172.17.0.2:6379",
				"REDIS_PORT_6379_TCP_ADDR=172.17.0.2",
				"REDIS_PORT_6379_TCP_PORT=6379",
				"REDIS_PORT_6379_TCP_PROTO=tcp",
				"REDIS_NAME=/amb/redis",
				"REDIS_ENV_REDIS_VERSION=7.2.4",
				"REDIS_ENV_GOSU_VERSION=1.17",
			},
			want:  []svc{{"redis-6379", "0.0.0.0:6379", "172.17.0.2:6379", "env REDIS_PORT_6379_TCP"}},
			names: []string{"REDIS_NAME"},
		},
		{
			name: "hostname target",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://redis.internal:6379"},
			want: []svc{{"redis-6379", "0.0.0.0:6379", "redis.internal:6379", "env REDIS_PORT_6379_TCP"}},
		},
		{
			name: "hostname with a trailing dot and underscores",
			env:  []string{"DB_PORT_5432_TCP=tcp://my_db.svc.local.:5432"},
			want: []svc{{"db-5432", "0.0.0.0:5432", "my_db.svc.local.:5432", "env DB_PORT_5432_TCP"}},
		},
		{
			name: "bracketed IPv6 literal, canonicalised",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://[2001:DB8:0::1]:6379"},
			want: []svc{{"redis-6379", "0.0.0.0:6379", "[2001:db8::1]:6379", "env REDIS_PORT_6379_TCP"}},
		},
		{
			name: "IPv6 with a zone",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://[fe80::1%eth0]:6379"},
			want: []svc{{"redis-6379", "0.0.0.0:6379", "[fe80::1%eth0]:6379", "env REDIS_PORT_6379_TCP"}},
		},
		{
			name: "scheme in upper case and a trailing slash are tolerated",
			env:  []string{"REDIS_PORT_6379_TCP=TCP://10.0.0.5:6379/"},
			want: []svc{{"redis-6379", "0.0.0.0:6379", "10.0.0.5:6379", "env REDIS_PORT_6379_TCP"}},
		},
		{
			name: "leading zeros in the value port are dropped",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:06379"},
			want: []svc{{"redis-6379", "0.0.0.0:6379", "10.0.0.5:6379", "env REDIS_PORT_6379_TCP"}},
		},
		{
			name: "several aliases and several ports, in port order",
			env: []string{
				"WEB_PORT_8080_TCP=tcp://172.17.0.4:8080",
				"DB_PORT_5432_TCP=tcp://172.17.0.3:5432",
				"WEB_PORT_80_TCP=tcp://172.17.0.4:80",
				"CACHE_PORT_11211_TCP=tcp://172.17.0.5:11211",
			},
			want: []svc{
				{"web-80", "0.0.0.0:80", "172.17.0.4:80", "env WEB_PORT_80_TCP"},
				{"db-5432", "0.0.0.0:5432", "172.17.0.3:5432", "env DB_PORT_5432_TCP"},
				{"web-8080", "0.0.0.0:8080", "172.17.0.4:8080", "env WEB_PORT_8080_TCP"},
				{"cache-11211", "0.0.0.0:11211", "172.17.0.5:11211", "env CACHE_PORT_11211_TCP"},
			},
		},
		{
			name: "companions and <ALIAS>_PORT are ignored, including range variables",
			env: []string{
				"APP_PORT=tcp://172.17.0.2:7000",
				"APP_PORT_7000_TCP=tcp://172.17.0.2:7000",
				"APP_PORT_7000_TCP_ADDR=172.17.0.2",
				"APP_PORT_7000_TCP_PORT=7000",
				"APP_PORT_7000_TCP_PROTO=tcp",
				"APP_PORT_7000_TCP_START=tcp://172.17.0.2:7000",
				"APP_PORT_7000_TCP_PORT_START=7000",
				"APP_PORT_7001_TCP=tcp://172.17.0.2:7001",
				"APP_PORT_7000_TCP_END=tcp://172.17.0.2:7001",
				"APP_PORT_7000_TCP_PORT_END=7001",
			},
			want: []svc{
				{"app-7000", "0.0.0.0:7000", "172.17.0.2:7000", "env APP_PORT_7000_TCP"},
				{"app-7001", "0.0.0.0:7001", "172.17.0.2:7001", "env APP_PORT_7001_TCP"},
			},
		},
		{
			name: "a linked ambassador's own link variables (<ALIAS>_ENV_*) open no port",
			env: []string{
				"AMB_NAME=/client/amb",
				"AMB_PORT_6379_TCP=tcp://172.17.0.9:6379",
				"AMB_ENV_REDIS_PORT_6379_TCP=tcp://x:6379",
				"AMB_ENV_REDIS_PORT_7000_TCP=tcp://x:7000",
				"AMB_ENV_REDIS_PORT_53_UDP=udp://x:53",
				"AMB_ENV_REDIS_NAME=/amb/redis",
				"AMB_ENV_BAD_PORT_1_TCP=garbage",
			},
			want:  []svc{{"amb-6379", "0.0.0.0:6379", "172.17.0.9:6379", "env AMB_PORT_6379_TCP"}},
			names: []string{"AMB_NAME"},
		},
		{
			name: "an _ENV_ variable nested two links deep is ignored",
			env: []string{
				"A_NAME=/c/a",
				"A_ENV_B_ENV_C_PORT_80_TCP=tcp://x:80",
			},
			names: []string{"A_NAME"},
		},
		{
			name: "an _ENV_ variable without its link's _NAME is ignored with a warning",
			env:  []string{"AMB_ENV_REDIS_PORT_6379_TCP=tcp://x:6379"},
			warnings: []string{
				"env AMB_ENV_REDIS_PORT_6379_TCP: ignored: <ALIAS>_ENV_* variables are a linked container's own environment",
			},
		},
		{
			name: "an alias that itself contains _ENV_ is a link when its _NAME says so",
			env: []string{
				"MY_ENV_DB_NAME=/web/my_env_db",
				"MY_ENV_DB_PORT_5432_TCP=tcp://172.17.0.3:5432",
			},
			want:  []svc{{"my-env-db-5432", "0.0.0.0:5432", "172.17.0.3:5432", "env MY_ENV_DB_PORT_5432_TCP"}},
			names: []string{"MY_ENV_DB_NAME"},
		},
		{
			name: "an alias that merely starts with ENV_ is an ordinary link",
			env:  []string{"ENV_DB_PORT_5432_TCP=tcp://172.17.0.3:5432"},
			want: []svc{{"env-db-5432", "0.0.0.0:5432", "172.17.0.3:5432", "env ENV_DB_PORT_5432_TCP"}},
		},
		{
			name: "an alias that contains _PORT_ splits at the last one",
			env:  []string{"MY_PORT_APP_PORT_9000_TCP=tcp://10.0.0.1:9000"},
			want: []svc{{"my-port-app-9000", "0.0.0.0:9000", "10.0.0.1:9000", "env MY_PORT_APP_PORT_9000_TCP"}},
		},
		{
			name: "compose v1: three aliases, one target, one service named by the shortest",
			env: []string{
				"DB_PORT_5432_TCP=tcp://172.17.0.3:5432",
				"MYAPP_DB_1_PORT_5432_TCP=tcp://172.17.0.3:5432",
				"DB_1_PORT_5432_TCP=tcp://172.17.0.3:5432",
				"DB_NAME=/myapp_web_1/db",
				"DB_1_NAME=/myapp_web_1/db_1",
				"MYAPP_DB_1_NAME=/myapp_web_1/myapp_db_1",
			},
			want:  []svc{{"db-5432", "0.0.0.0:5432", "172.17.0.3:5432", "env DB_PORT_5432_TCP"}},
			names: []string{"DB_1_NAME", "DB_NAME", "MYAPP_DB_1_NAME"},
		},
		{
			name: "compose v1 aliases written differently for one IPv6 target are one service",
			env: []string{
				"DB_PORT_5432_TCP=tcp://[2001:db8::1]:5432",
				"DB_1_PORT_5432_TCP=tcp://[2001:DB8:0:0::1]:5432",
			},
			want: []svc{{"db-5432", "0.0.0.0:5432", "[2001:db8::1]:5432", "env DB_PORT_5432_TCP"}},
		},
		{
			name: "UDP is a service of its own beside TCP on the same port; SCTP is a warning",
			env: []string{
				"DNS_PORT_53_UDP=udp://172.17.0.5:53",
				"DNS_PORT_53_UDP_ADDR=172.17.0.5",
				"DNS_PORT_53_TCP=tcp://172.17.0.5:53",
				"DNS_1_PORT_53_UDP=udp://172.17.0.5:53",
				"SIG_PORT_2905_SCTP=sctp://172.17.0.6:2905",
				"SIG_1_PORT_2905_SCTP=sctp://172.17.0.6:2905",
			},
			want: []svc{
				{"dns-53", "0.0.0.0:53", "172.17.0.5:53", "env DNS_PORT_53_TCP"},
				{"dns-53-udp/udp", "0.0.0.0:53", "172.17.0.5:53", "env DNS_PORT_53_UDP"},
			},
			warnings: []string{
				"env SIG_1_PORT_2905_SCTP (and SIG_PORT_2905_SCTP): SCTP link variables are recognised but not supported; port 2905 is not forwarded",
			},
		},
		{
			name: "UDP only, in port order",
			env:  []string{"X_PORT_9_UDP=udp://x:9", "X_PORT_9_SCTP=sctp://x:9", "X_PORT_8_UDP=UDP://x:8"},
			want: []svc{
				{"x-8-udp/udp", "0.0.0.0:8", "x:8", "env X_PORT_8_UDP"},
				{"x-9-udp/udp", "0.0.0.0:9", "x:9", "env X_PORT_9_UDP"},
			},
			warnings: []string{"env X_PORT_9_SCTP: SCTP link variables"},
		},
		{
			name: "a UDP and a TCP variable of one port may name different targets",
			env:  []string{"A_PORT_53_UDP=udp://10.0.0.1:53", "A_PORT_53_TCP=tcp://10.0.0.2:53"},
			want: []svc{
				{"a-53", "0.0.0.0:53", "10.0.0.2:53", "env A_PORT_53_TCP"},
				{"a-53-udp/udp", "0.0.0.0:53", "10.0.0.1:53", "env A_PORT_53_UDP"},
			},
		},
		{
			name: "odd alias characters make a tidy service name",
			env:  []string{"My.App--X_PORT_80_TCP=tcp://10.0.0.1:80", "_LEAD_PORT_81_TCP=tcp://10.0.0.1:81", "!!_PORT_82_TCP=tcp://10.0.0.1:82"},
			want: []svc{
				{"my.app-x-80", "0.0.0.0:80", "10.0.0.1:80", "env My.App--X_PORT_80_TCP"},
				{"lead-81", "0.0.0.0:81", "10.0.0.1:81", "env _LEAD_PORT_81_TCP"},
				{"link-82", "0.0.0.0:82", "10.0.0.1:82", "env !!_PORT_82_TCP"},
			},
		},
		{
			name: "a very long alias is cut so the name fits 63 characters",
			env:  []string{strings.Repeat("A", 80) + "_PORT_65535_TCP=tcp://10.0.0.1:1"},
			want: []svc{{strings.Repeat("a", 57) + "-65535", "0.0.0.0:65535", "10.0.0.1:1", "env " + strings.Repeat("A", 80) + "_PORT_65535_TCP"}},
		},
		{
			name: "variables that only look alike are not link variables",
			env: []string{
				"_PORT_80_TCP=tcp://x:80",        // no alias
				"X_PORT__TCP=tcp://x:80",         // no port
				"X_PORT_8O_TCP=tcp://x:80",       // letter O
				"X_PORT_80_TCPX=tcp://x:80",      // other suffix
				"X_PORT_80_tcp=tcp://x:80",       // Docker upper-cases
				"SOME_TCP=1",                     // no _PORT_
				"NOEQUALS",                       // not KEY=value
				"FOO_NAME=bar",                   // _NAME not starting with /
				"=C:=C:\\",                       // Windows oddity
				"X_PORT_80_TCP_ADDR=tcp://x:80",  // companion
				"X_PORT=tcp://should-not:1",      // <ALIAS>_PORT
				"X_PORT_80_TCP_PROTO=tcp://x:80", // companion
			},
		},
		{
			name: "no environment at all",
		},
		{
			name:  "link names alone are collected for the exposed-ports hint",
			env:   []string{"REDIS_NAME=/web/redis", "DB_NAME=/web/db", "AMB_ENV_X_NAME=/amb/x", "AMB_NAME=/web/amb"},
			names: []string{"AMB_NAME", "DB_NAME", "REDIS_NAME"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			le, err := ParseLinkEnv(tt.env)
			if err != nil {
				t.Fatalf("ParseLinkEnv: %v", err)
			}
			if got := linkServices(le); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("services:\n got %q\nwant %q", got, tt.want)
			}
			if len(le.Warnings) != len(tt.warnings) {
				t.Fatalf("warnings: got %q, want %d matching %q", le.Warnings, len(tt.warnings), tt.warnings)
			}
			for i, w := range tt.warnings {
				if !strings.Contains(le.Warnings[i], w) {
					t.Errorf("warning %d: got %q, want it to contain %q", i, le.Warnings[i], w)
				}
			}
			if !reflect.DeepEqual(le.LinkNames, tt.names) {
				t.Errorf("LinkNames: got %q, want %q", le.LinkNames, tt.names)
			}
		})
	}
}

func TestParseLinkEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		errs []string // substrings, one per error, in order
		want []svc    // the services that were fine
	}{
		{
			name: "no scheme",
			env:  []string{"REDIS_PORT_6379_TCP=10.0.0.5:6379"},
			errs: []string{`env REDIS_PORT_6379_TCP: want tcp://host:port, got "10.0.0.5:6379"`},
		},
		{
			name: "udp:// in a _TCP variable",
			env:  []string{"REDIS_PORT_6379_TCP=udp://10.0.0.5:6379"},
			errs: []string{`env REDIS_PORT_6379_TCP: want tcp://host:port, got "udp://10.0.0.5:6379"`},
		},
		{
			name: "tcp:// in a _UDP variable",
			env:  []string{"DNS_PORT_53_UDP=tcp://10.0.0.5:53"},
			errs: []string{`env DNS_PORT_53_UDP: want udp://host:port, got "tcp://10.0.0.5:53"`},
		},
		{
			name: "two targets for one UDP port",
			env:  []string{"A_PORT_53_UDP=udp://10.0.0.1:53", "B_PORT_53_UDP=udp://10.0.0.2:53"},
			errs: []string{`env A_PORT_53_UDP and env B_PORT_53_UDP: both ask for port 53, with different targets 10.0.0.1:53 and 10.0.0.2:53`},
			want: []svc{{"a-53-udp/udp", "0.0.0.0:53", "10.0.0.1:53", "env A_PORT_53_UDP"}},
		},
		{
			name: "a UDP value with a path",
			env:  []string{"DNS_PORT_53_UDP=udp://d:53/x"},
			errs: []string{`env DNS_PORT_53_UDP: want udp://host:port with no user, path or query, got "udp://d:53/x"`},
		},
		{
			name: "http:// in a _TCP variable",
			env:  []string{"WEB_PORT_80_TCP=http://web:80"},
			errs: []string{`env WEB_PORT_80_TCP: want tcp://host:port, got "http://web:80"`},
		},
		{
			name: "missing port",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://10.0.0.5": want host:port (IPv6 in brackets), got "10.0.0.5"`},
		},
		{
			name: "empty port",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://10.0.0.5:": want a port number 1-65535, got an empty value`},
		},
		{
			name: "port 0 in the value",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:0"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://10.0.0.5:0": want a port number 1-65535, got "0"`},
		},
		{
			name: "port 65536 in the value",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:65536"},
			errs: []string{`want a port number 1-65535, got "65536"`},
		},
		{
			name: "port abc in the value",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:abc"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://10.0.0.5:abc": want a port number 1-65535, got "abc"`},
		},
		{
			name: "negative port in the value",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:-1"},
			errs: []string{`want a port number 1-65535, got "-1"`},
		},
		{
			name: "port 0 in the name",
			env:  []string{"REDIS_PORT_0_TCP=tcp://10.0.0.5:6379"},
			errs: []string{`env REDIS_PORT_0_TCP: port in the variable name: want a port number 1-65535, got "0"`},
		},
		{
			name: "port 65536 in the name",
			env:  []string{"REDIS_PORT_65536_TCP=tcp://10.0.0.5:6379"},
			errs: []string{`env REDIS_PORT_65536_TCP: port in the variable name: want a port number 1-65535, got "65536"`},
		},
		{
			name: "huge port in the name",
			env:  []string{"REDIS_PORT_99999999999999999999999_TCP=tcp://10.0.0.5:6379"},
			errs: []string{`env REDIS_PORT_99999999999999999999999_TCP: port in the variable name: want a port number 1-65535`},
		},
		{
			name: "port 0 in the name of a UDP variable is an error too",
			env:  []string{"DNS_PORT_0_UDP=udp://10.0.0.5:53"},
			errs: []string{`env DNS_PORT_0_UDP: port in the variable name: want a port number 1-65535, got "0"`},
		},
		{
			name: "empty host",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://:6379"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://:6379": want host:port with a host, got ":6379"`},
		},
		{
			name: "empty value",
			env:  []string{"REDIS_PORT_6379_TCP="},
			errs: []string{`env REDIS_PORT_6379_TCP: want tcp://host:port, got ""`},
		},
		{
			name: "path after the port",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379/db/0"},
			errs: []string{`env REDIS_PORT_6379_TCP: want tcp://host:port with no user, path or query, got "tcp://10.0.0.5:6379/db/0"`},
		},
		{
			name: "two trailing slashes",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379//"},
			errs: []string{`with no user, path or query`},
		},
		{
			name: "query",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379?x=1"},
			errs: []string{`with no user, path or query`},
		},
		{
			name: "user info",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://user:pw@10.0.0.5:6379"},
			errs: []string{`with no user, path or query`},
		},
		{
			name: "space inside",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5 :6379"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://10.0.0.5 :6379": want a host name or IP address, got "10.0.0.5 "`},
		},
		{
			name: "trailing space",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.5:6379 "},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://10.0.0.5:6379 ": want a port number 1-65535, got "6379 "`},
		},
		{
			name: "leading space",
			env:  []string{"REDIS_PORT_6379_TCP= tcp://10.0.0.5:6379"},
			errs: []string{`env REDIS_PORT_6379_TCP: want tcp://host:port, got " tcp://10.0.0.5:6379"`},
		},
		{
			name: "IPv6 without brackets",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://2001:db8::1:6379"},
			errs: []string{`env REDIS_PORT_6379_TCP: in "tcp://2001:db8::1:6379": want host:port (IPv6 in brackets), got "2001:db8::1:6379"`},
		},
		{
			name: "mistyped IPv4 address",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://192.168.1.520:6379"},
			errs: []string{`want a host name or IP address, got "192.168.1.520", which is not a valid IPv4 address`},
		},
		{
			name: "IPv4 with a zone",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://[10.0.0.5%eth0]:6379"},
			errs: []string{`want a host name or IP address, got "10.0.0.5%eth0"`},
		},
		{
			name: "zone that is no interface name",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://[fe80::1%a b]:6379"},
			errs: []string{`want an interface name after % in "fe80::1%a b"`},
		},
		{
			name: "hostname with a bad character",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://red!s:6379"},
			errs: []string{`want a host name or IP address, got "red!s"`},
		},
		{
			name: "hostname label starting with a hyphen",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://-redis:6379"},
			errs: []string{`want a host name or IP address, got "-redis"`},
		},
		{
			name: "two different targets for one port name both variables",
			env: []string{
				"DB_PORT_5432_TCP=tcp://172.17.0.3:5432",
				"CACHE_PORT_5432_TCP=tcp://172.17.0.4:5432",
			},
			errs: []string{
				"env CACHE_PORT_5432_TCP and env DB_PORT_5432_TCP: both ask for port 5432, with different targets 172.17.0.4:5432 and 172.17.0.3:5432",
			},
			want: []svc{{"cache-5432", "0.0.0.0:5432", "172.17.0.4:5432", "env CACHE_PORT_5432_TCP"}},
		},
		{
			name: "every error is reported, in variable order, beside the good services",
			env: []string{
				"C_PORT_3_TCP=tcp://c",
				"A_PORT_1_TCP=nope",
				"GOOD_PORT_80_TCP=tcp://10.0.0.1:80",
				"B_PORT_0_TCP=tcp://b:2",
				"D_PORT_4_UDP=udp://d:4",
				"E_PORT_5_UDP=udp://e",
			},
			errs: []string{
				`env A_PORT_1_TCP: want tcp://host:port, got "nope"`,
				`env B_PORT_0_TCP: port in the variable name`,
				`env C_PORT_3_TCP: in "tcp://c": want host:port`,
				`env E_PORT_5_UDP: in "udp://e": want host:port`,
			},
			want: []svc{{"d-4-udp/udp", "0.0.0.0:4", "d:4", "env D_PORT_4_UDP"}, {"good-80", "0.0.0.0:80", "10.0.0.1:80", "env GOOD_PORT_80_TCP"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			le, err := ParseLinkEnv(tt.env)
			checkErrors(t, err, tt.errs)
			if got := linkServices(le); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("services:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// checkErrors checks that err is an Errors with one entry per want, in
// order, each containing its substring.
func checkErrors(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error; want %d: %q", len(want), want)
	}
	var list Errors
	if !errors.As(err, &list) {
		t.Fatalf("error is %T, not Errors: %v", err, err)
	}
	if len(list) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v\nwant substrings:\n%s", len(list), len(want), err, strings.Join(want, "\n"))
	}
	for i, w := range want {
		if !strings.Contains(list[i].Error(), w) {
			t.Errorf("error %d:\n got %q\nwant it to contain %q", i, list[i].Error(), w)
		}
	}
}

// TestParseLinkEnvDeterministic feeds the same variables in every rotation:
// services, warnings, names and errors must not depend on the order.
func TestParseLinkEnvDeterministic(t *testing.T) {
	env := []string{
		"DB_PORT_5432_TCP=tcp://172.17.0.3:5432",
		"MYAPP_DB_1_PORT_5432_TCP=tcp://172.17.0.3:5432",
		"DB_1_PORT_5432_TCP=tcp://172.17.0.3:5432",
		"X_PORT_5432_TCP=tcp://172.17.0.9:5432",
		"WEB_PORT_80_TCP=tcp://web:80",
		"DNS_PORT_53_UDP=udp://d:53",
		"BAD_PORT_1_TCP=tcp://",
		"DB_NAME=/web/db",
		"WEB_NAME=/web/web",
	}
	first, firstErr := ParseLinkEnv(env)
	if firstErr == nil {
		t.Fatal("want errors")
	}
	for i := 1; i < len(env); i++ {
		rotated := append(append([]string(nil), env[i:]...), env[:i]...)
		got, err := ParseLinkEnv(rotated)
		if !reflect.DeepEqual(got, first) {
			t.Errorf("rotation %d: got %+v, want %+v", i, got, first)
		}
		if err == nil || err.Error() != firstErr.Error() {
			t.Errorf("rotation %d: error\n%v\nwant\n%v", i, err, firstErr)
		}
	}
	if env[0] != "DB_PORT_5432_TCP=tcp://172.17.0.3:5432" {
		t.Error("ParseLinkEnv modified its input")
	}
}

func TestErrorsUnwrap(t *testing.T) {
	sentinel := errors.New("sentinel")
	errs := Errors{errors.New("a"), sentinel}
	if !errors.Is(errs, sentinel) {
		t.Error("errors.Is does not see inside Errors")
	}
	if got := errs.Error(); got != "a\nsentinel" {
		t.Errorf("Error() = %q", got)
	}
}
