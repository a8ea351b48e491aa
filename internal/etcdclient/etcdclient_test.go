package etcdclient

import (
	"strings"
	"testing"

	"github.com/attache/attache/internal/tlsclient"
)

// Check refuses settings that cannot work before anything connects, each
// error naming where the setting came from; etcdctl's variables count
// only without a tls section.
func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		env  map[string]string
		want string // "" means no error
	}{
		{"plain endpoints", Config{Endpoints: []string{"127.0.0.1:2379", "http://10.0.0.1:2379"}}, nil, ""},
		{"https endpoints, the system's CAs", Config{Endpoints: []string{"https://etcd:2379"}}, nil, ""},
		{"mixed schemes", Config{Endpoints: []string{"http://a:2379", "https://b:2379"}}, nil,
			"endpoints http://a:2379 are plain http:// and https://b:2379 are https://"},
		{"http with a tls section", Config{Endpoints: []string{"http://a:2379"}, TLS: &tlsclient.Files{}}, nil,
			"endpoints http://a:2379 are plain http://, but TLS is set by discovery.etcd.tls"},
		{"http with etcdctl's CA", Config{Endpoints: []string{"http://a:2379"}}, map[string]string{EnvCACert: "/x/ca.pem"},
			"but TLS is set by ETCDCTL_CACERT, ETCDCTL_CERT and ETCDCTL_KEY"},
		{"a missing CA file", Config{Endpoints: []string{"a:2379"}, TLS: &tlsclient.Files{CA: "/nonexistent/ca.pem"}}, nil,
			"TLS from discovery.etcd.tls: tls: CA file: open /nonexistent/ca.pem"},
		{"a missing client certificate from etcdctl's variables", Config{Endpoints: []string{"a:2379"}},
			map[string]string{EnvCert: "/nonexistent/c.pem", EnvKey: "/nonexistent/k.pem"},
			"TLS from ETCDCTL_CACERT, ETCDCTL_CERT and ETCDCTL_KEY: tls: client certificate /nonexistent/c.pem with key /nonexistent/k.pem"},
		{"the tls section wins over the variables", Config{Endpoints: []string{"a:2379"}, TLS: &tlsclient.Files{}},
			map[string]string{EnvCACert: "/nonexistent/ca.pem"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			_, err := tt.cfg.tlsConfig(getenv)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
