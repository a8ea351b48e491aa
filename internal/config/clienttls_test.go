package config

import (
	"reflect"
	"testing"
)

func TestParseFileDockerTLS(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want DockerDiscovery
	}{
		{
			name: "every key",
			in: `discovery:
  docker:
    host: tcp://docker.internal:2376
    tls: {ca: /etc/docker/ca.pem, cert: /etc/docker/cert.pem, key: /etc/docker/key.pem, server_name: docker.internal}
`,
			want: DockerDiscovery{Host: "tcp://docker.internal:2376", TLS: &ClientTLS{
				CA: "/etc/docker/ca.pem", Cert: "/etc/docker/cert.pem", Key: "/etc/docker/key.pem", ServerName: "docker.internal"}},
		},
		{
			name: "an empty section: TLS checked against the system's CAs",
			in:   "discovery:\n  docker: {host: 'tcp://10.0.0.1:2376', tls: {}}\n",
			want: DockerDiscovery{Host: "tcp://10.0.0.1:2376", TLS: &ClientTLS{}},
		},
		{
			name: "an IP address as the server name; the host from DOCKER_HOST",
			in:   "discovery:\n  docker: {tls: {ca: ca.pem, server_name: 10.0.0.1}}\n",
			want: DockerDiscovery{TLS: &ClientTLS{CA: "ca.pem", ServerName: "10.0.0.1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile("f.yaml", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(f.Discovery.Docker, tt.want) {
				t.Errorf("got  %+v (TLS %+v)\nwant %+v (TLS %+v)", f.Discovery.Docker, f.Discovery.Docker.TLS, tt.want, tt.want.TLS)
			}
		})
	}
}

func TestParseFileDockerTLSErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		errs []string
	}{
		{"unknown key", "discovery:\n  docker:\n    tls: {ca_file: ca.pem}\n",
			[]string{"f.yaml:3: ca_file: unknown key in discovery.docker.tls (want one of: ca, cert, key, server_name)"}},
		{"not a mapping", "discovery:\n  docker: {tls: true}\n",
			[]string{"f.yaml:2: discovery.docker.tls: want a mapping of keys"}},
		{"cert without key", "discovery:\n  docker:\n    tls:\n      cert: cert.pem\n",
			[]string{"f.yaml:4: discovery.docker.tls: cert and key go together"}},
		{"key without cert", "discovery:\n  docker:\n    tls: {key: key.pem}\n",
			[]string{"f.yaml:3: discovery.docker.tls: cert and key go together"}},
		{"an empty path", "discovery:\n  docker:\n    tls: {ca: ''}\n",
			[]string{`f.yaml:3: ca: want the path of a PEM file, got ""`}},
		{"a bad server name", "discovery:\n  docker:\n    tls: {server_name: 'docker internal'}\n",
			[]string{`f.yaml:3: server_name: want the DNS name or IP address the server's certificate carries, got "docker internal"`}},
		{"a unix socket with tls", "discovery:\n  docker:\n    host: unix:///var/run/docker.sock\n    tls: {}\n",
			[]string{"f.yaml:4: tls: the engine at unix:///var/run/docker.sock is a unix socket: TLS is for tcp:// hosts"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile("f.yaml", []byte(tt.in))
			checkErrors(t, err, tt.errs)
		})
	}
}

func TestParseFileEtcdConsulTLS(t *testing.T) {
	in := `discovery:
  etcd:
    endpoints: ["https://etcd-1:2379", "etcd-2:2379"]
    tls: {ca: /etc/etcd/ca.pem, cert: /etc/etcd/client.pem, key: /etc/etcd/client-key.pem, server_name: etcd.internal}
  consul:
    address: consul.internal:8501
    tls: {ca: /etc/consul/ca.pem}
`
	f, err := ParseFile("f.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	wantEtcd := EtcdDiscovery{Endpoints: []string{"https://etcd-1:2379", "etcd-2:2379"}, TLS: &ClientTLS{
		CA: "/etc/etcd/ca.pem", Cert: "/etc/etcd/client.pem", Key: "/etc/etcd/client-key.pem", ServerName: "etcd.internal"}}
	if !reflect.DeepEqual(f.Discovery.Etcd, wantEtcd) {
		t.Errorf("etcd: got %+v (TLS %+v), want %+v", f.Discovery.Etcd, f.Discovery.Etcd.TLS, wantEtcd)
	}
	wantConsul := ConsulDiscovery{Address: "consul.internal:8501", TLS: &ClientTLS{CA: "/etc/consul/ca.pem"}}
	if !reflect.DeepEqual(f.Discovery.Consul, wantConsul) {
		t.Errorf("consul: got %+v (TLS %+v), want %+v", f.Discovery.Consul, f.Discovery.Consul.TLS, wantConsul)
	}
}

func TestParseFileEtcdConsulTLSErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		errs []string
	}{
		{"etcd: unknown key", "discovery:\n  etcd:\n    tls: {cacert: ca.pem}\n",
			[]string{"f.yaml:3: cacert: unknown key in discovery.etcd.tls (want one of: ca, cert, key, server_name)"}},
		{"etcd: cert without key", "discovery:\n  etcd:\n    tls: {cert: c.pem}\n",
			[]string{"f.yaml:3: discovery.etcd.tls: cert and key go together"}},
		{"etcd: a plain http endpoint", "discovery:\n  etcd:\n    endpoints: ['http://etcd:2379']\n    tls: {}\n",
			[]string{"f.yaml:4: tls: endpoint http://etcd:2379 is plain http://: write https:// or host:port"}},
		{"consul: key without cert", "discovery:\n  consul:\n    tls: {key: k.pem}\n",
			[]string{"f.yaml:3: discovery.consul.tls: cert and key go together"}},
		{"consul: a plain http address", "discovery:\n  consul:\n    address: 'http://consul:8500'\n    tls: {ca: ca.pem}\n",
			[]string{"f.yaml:4: tls: the agent at http://consul:8500 is plain http://: write https:// or host:port"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile("f.yaml", []byte(tt.in))
			checkErrors(t, err, tt.errs)
		})
	}
}
