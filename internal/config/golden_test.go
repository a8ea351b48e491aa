package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the want sections of testdata/golden/*.txtar from the current output")

// TestGolden loads each testdata/golden/*.txtar case through Load and
// compares the normalized result with the case's want section:
//
//	-- env --        KEY=value per line (the process environment)
//	-- attache.yaml --  the config file, loaded as attache.yaml
//	-- forward --    one --forward value per line
//	-- args --       one positional argument per line
//	-- flags --      connect-timeout=, idle-timeout=, keepalive=, max-connections=,
//	                 retries=, retry-timeout=, eject-time= per line
//	-- want.json --  the Config as JSON, when Load succeeds
//	-- want.errors -- one error per line, when it fails
//
// go test ./internal/config -run TestGolden -update rewrites the want
// sections; review the diff before committing it.
func TestGolden(t *testing.T) {
	paths, err := filepath.Glob("testdata/golden/*.txtar")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 10 {
		t.Fatalf("found %d golden cases, want at least 10", len(paths))
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txtar"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ar := parseArchive(data)
			src, err := goldenSources(ar)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(src)
			name, got := "want.json", ""
			if err != nil {
				name, got = "want.errors", err.Error()+"\n"
			} else {
				got = goldenJSON(t, cfg)
			}
			if *update {
				ar.set(name, got)
				ar.remove(map[string]string{"want.json": "want.errors", "want.errors": "want.json"}[name])
				if err := os.WriteFile(path, ar.format(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, ok := ar.get(name)
			if !ok {
				t.Fatalf("Load gave %s, but the case has no %s section:\n%s", name, name, got)
			}
			if got != want {
				t.Errorf("%s differs (run with -update to accept):\n--- got\n%s--- want\n%s", name, got, want)
			}
		})
	}
}

func goldenSources(ar *archive) (Sources, error) {
	var src Sources
	if env, ok := ar.get("env"); ok {
		src.Env = lines(env)
		if src.Env == nil {
			src.Env = []string{}
		}
	}
	if file, ok := ar.get("attache.yaml"); ok {
		src.File, src.FileData = "attache.yaml", []byte(file)
	}
	if fwd, ok := ar.get("forward"); ok {
		src.Forwards = lines(fwd)
	}
	if args, ok := ar.get("args"); ok {
		src.Args = lines(args)
	}
	if flags, ok := ar.get("flags"); ok {
		for _, l := range lines(flags) {
			k, v, _ := strings.Cut(l, "=")
			var err error
			switch k {
			case "connect-timeout":
				src.Flags.ConnectTimeout, err = ParseDuration(v, false)
			case "idle-timeout":
				src.Flags.IdleTimeout, err = ParseDuration(v, true)
			case "keepalive":
				src.Flags.KeepAlive, err = ParseDuration(v, true)
			case "max-connections":
				src.Flags.MaxConnections, err = strconv.Atoi(v)
			case "retries":
				src.Flags.Retries, err = strconv.Atoi(v)
			case "retry-timeout":
				src.Flags.RetryTimeout, err = ParseDuration(v, false)
			case "eject-time":
				src.Flags.EjectTime, err = ParseDuration(v, true)
			default:
				err = errors.New("unknown flag " + k)
			}
			if err != nil {
				return src, err
			}
		}
	}
	return src, nil
}

func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// goldenJSON is the Config in a stable, readable JSON form: durations as
// Go duration strings, negative ones as "off"; backends as Backend.String
// prints them. The discovery section, a health check and close_on_remove
// appear only when set.
func goldenJSON(t *testing.T, cfg *Config) string {
	t.Helper()
	type healthCheck struct {
		Interval string `json:"interval"`
		Timeout  string `json:"timeout"`
		Rise     int    `json:"rise"`
		Fall     int    `json:"fall"`
		Send     string `json:"send,omitempty"`
		Expect   string `json:"expect,omitempty"`
	}
	type service struct {
		Name           string       `json:"name"`
		Protocol       string       `json:"protocol,omitempty"`
		Listen         string       `json:"listen"`
		Backends       []string     `json:"backends"`
		Balance        string       `json:"balance"`
		HealthCheck    *healthCheck `json:"health_check,omitempty"`
		Retries        int          `json:"retries"`
		RetryTimeout   string       `json:"retry_timeout"`
		EjectTime      string       `json:"eject_time"`
		CloseOnRemove  bool         `json:"close_on_remove,omitempty"`
		AcceptProxy    any          `json:"accept_proxy,omitempty"`
		SendProxy      int          `json:"send_proxy,omitempty"`
		ConnectTimeout string       `json:"connect_timeout"`
		IdleTimeout    string       `json:"idle_timeout"`
		KeepAlive      string       `json:"keepalive"`
		MaxConnections int          `json:"max_connections"`
		UDPIdleTimeout string       `json:"udp_idle_timeout,omitempty"`
		MaxSessions    int          `json:"max_sessions,omitempty"`
		Origin         string       `json:"origin"`
	}
	dur := func(d time.Duration) string {
		if d < 0 {
			return "off"
		}
		return d.String()
	}
	out := struct {
		Discovery map[string]map[string]any `json:"discovery,omitempty"`
		Services  []service                 `json:"services"`
		Warnings  []string                  `json:"warnings,omitempty"`
	}{Discovery: goldenDiscovery(cfg.Discovery), Services: []service{}, Warnings: cfg.Warnings}
	for _, s := range cfg.Services {
		js := service{
			Name: s.Name, Listen: s.Listen, Balance: s.Balance, Retries: s.Retries, RetryTimeout: dur(s.RetryTimeout),
			EjectTime: dur(s.EjectTime), CloseOnRemove: s.CloseOnRemove, ConnectTimeout: dur(s.ConnectTimeout),
			IdleTimeout: dur(s.IdleTimeout), KeepAlive: dur(s.KeepAlive), MaxConnections: s.MaxConnections, Origin: s.Origin,
		}
		if s.IsUDP() {
			js.Protocol, js.UDPIdleTimeout, js.MaxSessions = s.Protocol, dur(s.UDPIdleTimeout), s.MaxSessions
		}
		if ap := s.AcceptProxy; ap != nil {
			js.AcceptProxy = map[string]any{"trusted": ap.Trusted, "required": ap.Required, "timeout": dur(ap.Timeout)}
		}
		js.SendProxy = s.SendProxy
		if hc := s.HealthCheck; hc != nil {
			js.HealthCheck = &healthCheck{dur(hc.Interval), dur(hc.Timeout), hc.Rise, hc.Fall, hc.Send, hc.Expect}
		}
		for _, b := range s.Backends {
			js.Backends = append(js.Backends, b.String())
		}
		out.Services = append(out.Services, js)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// goldenDiscovery is the discovery section under the file's own key names,
// leaving out what is not set; nil when nothing is.
func goldenDiscovery(d Discovery) map[string]map[string]any {
	out := map[string]map[string]any{}
	set := func(section, key string, v any) {
		switch v := v.(type) {
		case string:
			if v == "" {
				return
			}
		case []string:
			if len(v) == 0 {
				return
			}
		}
		if out[section] == nil {
			out[section] = map[string]any{}
		}
		out[section][key] = v
	}
	dur := func(v time.Duration) string { // "" when unset, so set skips it
		if v == 0 {
			return ""
		}
		return v.String()
	}
	set("dns", "server", d.DNS.Server)
	set("dns", "min_ttl", dur(d.DNS.MinTTL))
	set("dns", "max_ttl", dur(d.DNS.MaxTTL))
	set("dns", "timeout", dur(d.DNS.Timeout))
	set("etcd", "endpoints", d.Etcd.Endpoints)
	set("etcd", "username", d.Etcd.Username)
	set("etcd", "password", d.Etcd.Password)
	set("etcd", "dial_timeout", dur(d.Etcd.DialTimeout))
	set("consul", "address", d.Consul.Address)
	set("consul", "token", d.Consul.Token)
	set("consul", "datacenter", d.Consul.Datacenter)
	set("docker", "host", d.Docker.Host)
	set("docker", "label", d.Docker.Label)
	set("docker", "port_label", d.Docker.PortLabel)
	set("docker", "network", d.Docker.Network)
	if len(out) == 0 {
		return nil
	}
	return out
}

// archive is a txtar archive (golang.org/x/tools/txtar's format: a comment,
// then files each introduced by a "-- name --" line). It is written out here
// in a few lines rather than adding x/tools to go.mod for a test.
type archive struct {
	comment string
	files   []archiveFile
}

type archiveFile struct{ name, data string }

func parseArchive(data []byte) *archive {
	ar := &archive{}
	cur := &ar.comment
	for line := range strings.SplitAfterSeq(string(data), "\n") {
		if name, ok := markerName(line); ok {
			ar.files = append(ar.files, archiveFile{name: name})
			cur = &ar.files[len(ar.files)-1].data
			continue
		}
		*cur += line
	}
	return ar
}

func markerName(line string) (string, bool) {
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, "-- ") || !strings.HasSuffix(line, " --") || len(line) < 7 {
		return "", false
	}
	return strings.TrimSpace(line[3 : len(line)-3]), true
}

func (ar *archive) get(name string) (string, bool) {
	for _, f := range ar.files {
		if f.name == name {
			return f.data, true
		}
	}
	return "", false
}

func (ar *archive) set(name, data string) {
	for i := range ar.files {
		if ar.files[i].name == name {
			ar.files[i].data = data
			return
		}
	}
	ar.files = append(ar.files, archiveFile{name, data})
}

func (ar *archive) remove(name string) {
	for i := range ar.files {
		if ar.files[i].name == name {
			ar.files = append(ar.files[:i], ar.files[i+1:]...)
			return
		}
	}
}

func (ar *archive) format() []byte {
	var b strings.Builder
	b.WriteString(ar.comment)
	for _, f := range ar.files {
		b.WriteString("-- " + f.name + " --\n")
		b.WriteString(f.data)
		if f.data != "" && !strings.HasSuffix(f.data, "\n") {
			b.WriteString("\n")
		}
	}
	return []byte(b.String())
}

func TestArchiveRoundTrip(t *testing.T) {
	in := "comment\n-- a --\nx\n-- b --\n-- not a marker\n--  --\n"
	ar := parseArchive([]byte(in))
	if ar.comment != "comment\n" || len(ar.files) != 2 || ar.files[1].data != "-- not a marker\n--  --\n" {
		t.Fatalf("parsed %+v", ar)
	}
	if got := string(ar.format()); got != in {
		t.Errorf("format = %q, want %q", got, in)
	}
}
