package config

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// File is a parsed configuration file.
type File struct {
	Defaults Defaults
	Services []Service
}

// ParseFile decodes a YAML configuration strictly: an unknown key, a value of
// the wrong kind, a bad port or a service without backends is an error that
// names the file, the line and the key. Every problem is reported.
//
//	defaults:
//	  connect_timeout: 5s
//	  idle_timeout: 1h        # or off
//	  keepalive: 30s          # or off
//	  max_connections: 10000  # 0: no limit
//	services:
//	  - name: redis
//	    listen: 0.0.0.0:6379
//	    backends: [10.0.0.5:6379, redis-2.internal:6379]
func ParseFile(name string, data []byte) (File, error) {
	p := fileParser{name: name}
	var f File
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if err.Error() == "EOF" { // an empty file: no services
			return f, nil
		}
		return f, Errors{p.syntaxError(err)}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind == yaml.ScalarNode && doc.Tag == "!!null" {
		return f, nil
	}
	p.fields(doc, "top level", map[string]func(*yaml.Node){
		"defaults": func(n *yaml.Node) { f.Defaults = p.defaults(n) },
		"services": func(n *yaml.Node) { f.Services = p.services(n) },
	})
	if len(p.errs) > 0 {
		return f, p.errs
	}
	return f, nil
}

type fileParser struct {
	name string
	errs Errors
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *fileParser) syntaxError(err error) error {
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("%s:%s: invalid YAML: %s", p.name, m[1], m[2])
	}
	return fmt.Errorf("%s: invalid YAML: %s", p.name, strings.TrimPrefix(err.Error(), "yaml: "))
}

func (p *fileParser) errorf(n *yaml.Node, key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: %s", p.name, n.Line, key, fmt.Sprintf(format, args...)))
}

// fields walks a mapping, calling the handler of each known key and
// reporting unknown and duplicate keys.
func (p *fileParser) fields(n *yaml.Node, where string, handlers map[string]func(*yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, where, "want a mapping of keys, got %s", describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		h, ok := handlers[key]
		if !ok {
			p.errorf(k, key, "unknown key in %s (want one of: %s)", where, keyList(handlers))
			continue
		}
		if line, dup := seen[key]; dup {
			p.errorf(k, key, "duplicate key in %s (first set on line %d)", where, line)
			continue
		}
		seen[key] = k.Line
		h(v)
	}
}

func keyList(h map[string]func(*yaml.Node)) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

func (p *fileParser) defaults(n *yaml.Node) Defaults {
	var d Defaults
	p.fields(n, "defaults", p.tuningFields(&d.ConnectTimeout, &d.IdleTimeout, &d.KeepAlive, &d.MaxConnections))
	return d
}

// tuningFields are the settings a service shares with the defaults block.
func (p *fileParser) tuningFields(connect, idle, keepalive *time.Duration, maxConns *int) map[string]func(*yaml.Node) {
	return map[string]func(*yaml.Node){
		"connect_timeout": func(v *yaml.Node) { *connect = p.duration(v, "connect_timeout", false) },
		"idle_timeout":    func(v *yaml.Node) { *idle = p.duration(v, "idle_timeout", true) },
		"keepalive":       func(v *yaml.Node) { *keepalive = p.duration(v, "keepalive", true) },
		"max_connections": func(v *yaml.Node) { *maxConns = p.count(v, "max_connections") },
	}
}

func (p *fileParser) services(n *yaml.Node) []Service {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "services", "want a list of services, got %s", describe(n))
		return nil
	}
	var out []Service
	for _, sn := range n.Content {
		s := Service{Origin: fmt.Sprintf("%s:%d", p.name, sn.Line)}
		handlers := p.tuningFields(&s.ConnectTimeout, &s.IdleTimeout, &s.KeepAlive, &s.MaxConnections)
		handlers["name"] = func(v *yaml.Node) { s.Name = p.name_(v) }
		handlers["listen"] = func(v *yaml.Node) { s.Listen = p.listen(v) }
		handlers["backends"] = func(v *yaml.Node) { s.Backends = p.backends(v) }
		before := len(p.errs)
		p.fields(sn, "service", handlers)
		if sn.Kind != yaml.MappingNode {
			continue
		}
		if !hasKey(sn, "name") {
			p.errorf(sn, "name", "missing: every service needs a name")
		}
		if !hasKey(sn, "listen") {
			p.errorf(sn, "listen", "missing in service %q: want [host:]port", s.Name)
		}
		if !hasKey(sn, "backends") {
			p.errorf(sn, "backends", "missing in service %q: want at least one host:port", s.Name)
		}
		if len(p.errs) == before {
			out = append(out, s)
		}
	}
	return out
}

func hasKey(n *yaml.Node, key string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return true
		}
	}
	return false
}

var serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (p *fileParser) name_(v *yaml.Node) string {
	s, ok := p.scalar(v, "name")
	if !ok {
		return ""
	}
	if !serviceNameRE.MatchString(s) {
		p.errorf(v, "name", "want letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit), got %q", s)
		return ""
	}
	return s
}

func (p *fileParser) listen(v *yaml.Node) string {
	s, ok := p.scalar(v, "listen")
	if !ok {
		return ""
	}
	addr, err := ParseListen(s)
	if err != nil {
		p.errorf(v, "listen", "%v", err)
		return ""
	}
	return addr
}

func (p *fileParser) backends(v *yaml.Node) []Backend {
	if v.Kind != yaml.SequenceNode {
		p.errorf(v, "backends", "want a list of host:port, got %s", describe(v))
		return nil
	}
	if len(v.Content) == 0 {
		p.errorf(v, "backends", "empty: want at least one host:port")
		return nil
	}
	var out []Backend
	for _, bn := range v.Content {
		var b Backend
		switch bn.Kind {
		case yaml.ScalarNode:
			b.Addr = p.backendAddr(bn)
		case yaml.MappingNode:
			p.fields(bn, "backend", map[string]func(*yaml.Node){
				"addr": func(n *yaml.Node) { b.Addr = p.backendAddr(n) },
			})
			if !hasKey(bn, "addr") {
				p.errorf(bn, "addr", "missing in backend: want host:port")
			}
		default:
			p.errorf(bn, "backends", "want host:port or {addr: host:port}, got %s", describe(bn))
		}
		if b.Addr != "" {
			out = append(out, b)
		}
	}
	return out
}

func (p *fileParser) backendAddr(n *yaml.Node) string {
	s, ok := p.scalar(n, "backend")
	if !ok {
		return ""
	}
	addr, err := ParseHostPort(s)
	if err != nil {
		p.errorf(n, "backend", "%v", err)
		return ""
	}
	return addr
}

func (p *fileParser) scalar(v *yaml.Node, key string) (string, bool) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		p.errorf(v, key, "want a single value, got %s", describe(v))
		return "", false
	}
	return v.Value, true
}

// duration parses a Go duration ("500ms", "1m30s"). With allowOff, "off"
// (or 0) disables the setting and is returned as -1.
func (p *fileParser) duration(v *yaml.Node, key string, allowOff bool) time.Duration {
	s, ok := p.scalar(v, key)
	if !ok {
		return 0
	}
	d, err := ParseDuration(s, allowOff)
	if err != nil {
		p.errorf(v, key, "%v", err)
		return 0
	}
	return d
}

// ParseDuration parses a positive Go duration. With allowOff, "off" and "0"
// are accepted and returned as -1, meaning "disabled".
func ParseDuration(s string, allowOff bool) (time.Duration, error) {
	if allowOff && (s == "off" || s == "0") {
		return -1, nil
	}
	want := "a duration such as 500ms, 10s or 1h"
	if allowOff {
		want += ", or off"
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want %s, got %q", want, s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("want %s (greater than zero), got %q", want, s)
	}
	return d, nil
}

func (p *fileParser) count(v *yaml.Node, key string) int {
	s, ok := p.scalar(v, key)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		p.errorf(v, key, "want a whole number 0 or more (0: no limit), got %q", s)
		return 0
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "something else"
}
