package etcd

import (
	"errors"
	"strings"
	"testing"

	"github.com/attache/attache/internal/backend"
)

func TestParseValue(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    backend.Endpoint
		wantErr string // substring; "" means success
	}{
		{name: "ipv4", in: "10.0.0.1:6379", want: backend.Endpoint{Addr: "10.0.0.1:6379"}},
		{name: "spaces trimmed", in: "  10.0.0.1:6379\n", want: backend.Endpoint{Addr: "10.0.0.1:6379"}},
		{name: "hostname", in: "redis-1.internal:6379", want: backend.Endpoint{Addr: "redis-1.internal:6379"}},
		{name: "srv style label", in: "_redis._tcp.example.:6379", want: backend.Endpoint{Addr: "_redis._tcp.example.:6379"}},
		{name: "ipv6 canonical", in: "[2001:DB8:0::1]:080", want: backend.Endpoint{Addr: "[2001:db8::1]:80"}},
		{name: "ipv6 zone", in: "[fe80::1%eth0]:80", want: backend.Endpoint{Addr: "[fe80::1%eth0]:80"}},
		{name: "port max", in: "h:65535", want: backend.Endpoint{Addr: "h:65535"}},
		{name: "json full", in: `{"addr":"10.0.0.2:80","weight":2,"priority":1}`, want: backend.Endpoint{Addr: "10.0.0.2:80", Weight: 2, Priority: 1}},
		{name: "json addr only", in: ` {"addr":"[::1]:80"} `, want: backend.Endpoint{Addr: "[::1]:80"}},

		{name: "empty", in: "  ", wantErr: "empty value"},
		{name: "no port", in: "10.0.0.1", wantErr: "want host:port"},
		{name: "empty port", in: "10.0.0.1:", wantErr: "empty port"},
		{name: "port zero", in: "10.0.0.1:0", wantErr: "out of range 1-65535"},
		{name: "port too big", in: "10.0.0.1:65536", wantErr: "out of range 1-65535"},
		{name: "port signed", in: "10.0.0.1:+80", wantErr: `port "+80"`},
		{name: "port name", in: "10.0.0.1:http", wantErr: `port "http"`},
		{name: "ipv6 unbracketed", in: "2001:db8::1:80", wantErr: "want host:port"},
		{name: "brackets around a name", in: "[redis]:80", wantErr: "not an IPv6 address"},
		{name: "empty host", in: ":80", wantErr: "empty host"},
		{name: "space in host", in: "red is:80", wantErr: "not allowed in a DNS name"},
		{name: "slash in host", in: "a/b:80", wantErr: "not allowed in a DNS name"},
		{name: "empty label", in: "a..b:80", wantErr: "label"},
		{name: "bad zone", in: "[fe80::1%a b]:80", wantErr: "zone"},
		{name: "url not address", in: "tcp://10.0.0.1:80", wantErr: "want host:port"},
		{name: "json unknown field", in: `{"addr":"10.0.0.1:80","wieght":2}`, wantErr: `unknown field "wieght"`},
		{name: "json missing addr", in: `{"weight":2}`, wantErr: `"addr" is missing`},
		{name: "json bad addr", in: `{"addr":"10.0.0.1"}`, wantErr: "addr: address"},
		{name: "json negative weight", in: `{"addr":"h:1","weight":-1}`, wantErr: "weight -1 out of range"},
		{name: "json big priority", in: `{"addr":"h:1","priority":70000}`, wantErr: "priority 70000 out of range"},
		{name: "json trailing data", in: `{"addr":"h:1"} x`, wantErr: "unexpected data after the object"},
		{name: "json two objects", in: `{"addr":"h:1"}{"addr":"h:2"}`, wantErr: "unexpected data after the object"},
		{name: "json truncated", in: `{"addr":"h:1"`, wantErr: "JSON endpoint"},
		{name: "json wrong type", in: `{"addr":"h:1","weight":"2"}`, wantErr: "JSON endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseValue(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseValue(%q) = %+v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseValue(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     []string // addresses, in order
		wantErrs []string // one substring per expected error
	}{
		{name: "empty", in: "", want: nil},
		{name: "one", in: "a:1", want: []string{"a:1"}},
		{name: "several with spaces and trailing comma", in: " a:1 , [::1]:2,b:3, ", want: []string{"a:1", "[::1]:2", "b:3"}},
		{name: "bad entries skipped", in: "a:1,nonsense,b:2,c:0", want: []string{"a:1", "b:2"}, wantErrs: []string{"entry 2", "entry 4"}},
		{name: "json object", in: `{"addr":"a:1","weight":3}`, want: []string{"a:1"}},
		{name: "bad json object", in: `{"addr":"a:1","x":1}`, want: nil, wantErrs: []string{"unknown field"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps, errs := ParseList(tt.in)
			var got []string
			for _, ep := range eps {
				got = append(got, ep.Addr)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("ParseList(%q) addresses = %q, want %q", tt.in, got, tt.want)
			}
			if len(errs) != len(tt.wantErrs) {
				t.Fatalf("ParseList(%q) errors = %v, want %d", tt.in, errs, len(tt.wantErrs))
			}
			for i, sub := range tt.wantErrs {
				if !strings.Contains(errs[i].Error(), sub) {
					t.Errorf("ParseList(%q) error %d = %v, want it to contain %q", tt.in, i, errs[i], sub)
				}
			}
		})
	}
}

// FuzzParseValue checks that no value, however broken, panics the parser,
// and that what it accepts is canonical: the address it returns parses back
// to itself, and weight and priority are within range. Seeds are in
// testdata/fuzz/FuzzParseValue.
func FuzzParseValue(f *testing.F) {
	f.Fuzz(func(t *testing.T, v string) {
		ep, err := ParseValue(v)
		if err != nil {
			if ep != (backend.Endpoint{}) {
				t.Fatalf("ParseValue(%q) returned %+v with error %v", v, ep, err)
			}
			return
		}
		if ep.Weight < 0 || ep.Weight > maxTier || ep.Priority < 0 || ep.Priority > maxTier {
			t.Fatalf("ParseValue(%q) = %+v: weight or priority out of range", v, ep)
		}
		again, err := ParseValue(ep.Addr)
		if err != nil {
			t.Fatalf("ParseValue(%q) = %+v, but its address does not parse again: %v", v, ep, err)
		}
		if again.Addr != ep.Addr {
			t.Fatalf("ParseValue(%q) address %q is not canonical: it parses to %q", v, ep.Addr, again.Addr)
		}
		// The list form must agree with the single form on a lone address.
		if !strings.HasPrefix(strings.TrimSpace(v), "{") && !strings.Contains(v, ",") {
			eps, errs := ParseList(v)
			if len(errs) != 0 || len(eps) != 1 || eps[0] != ep {
				t.Fatalf("ParseList(%q) = %+v, %v; ParseValue gave %+v", v, eps, errors.Join(errs...), ep)
			}
		}
	})
}
