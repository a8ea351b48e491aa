package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// File is a parsed configuration file.
type File struct {
	Defaults    Defaults
	Discovery   Discovery
	Link        Link
	Transparent Transparent
	Services    []Service
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
func ParseFile(name string, data []byte) (f File, err error) {
	p := fileParser{name: name}
	defer func() {
		// The YAML library is third-party code fed untrusted bytes; a bug in
		// it must become a config error, not a crash of the daemon.
		if r := recover(); r != nil {
			msg := strings.Join(strings.Fields(fmt.Sprint(r)), " ")
			f, err = File{}, Errors{fmt.Errorf("%s: invalid YAML: the parser failed: %s", name, msg)}
		}
	}()
	// Read every document: one is the config, empty ones ("---" alone) are
	// tolerated, and a second real one is a mistake (two files pasted
	// together) that would otherwise be silently ignored.
	var doc *yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return File{}, Errors{p.syntaxError(err, data)}
		}
		top := &n
		if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
			top = top.Content[0]
		}
		if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
			continue
		}
		if doc != nil {
			return File{}, Errors{fmt.Errorf("%s:%d: want one YAML document, found a second one here", name, top.Line)}
		}
		doc = top
	}
	if doc == nil { // an empty file, or only comments: no services
		return f, nil
	}
	p.fields(doc, "top level", map[string]func(*yaml.Node){
		"defaults":    func(n *yaml.Node) { f.Defaults = p.defaults(n) },
		"services":    func(n *yaml.Node) { f.Services = p.services(n) },
		"discovery":   func(n *yaml.Node) { f.Discovery = p.discovery(n) },
		"link":        func(n *yaml.Node) { f.Link = p.link(n) },
		"transparent": func(n *yaml.Node) { f.Transparent = p.transparent(n) },
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

var (
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRE = regexp.MustCompile(`^yaml: (?:unknown anchor|anchor) '([^']*)'`)
)

// yamlParserProblems are the messages of the YAML library's parser (as
// opposed to its scanner). For these the library reports the 0-based line of
// the construct being parsed, or none when that is the first line, so the
// real line is one more.
var yamlParserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// yamlReaderProblems are the library's messages about bytes that are not
// YAML text at all. It gives no position for them, so syntaxError finds it.
var yamlReaderProblems = []string{
	"control characters are not allowed", "invalid leading UTF-8 octet", "incomplete UTF-8 octet sequence",
	"invalid trailing UTF-8 octet", "invalid length of a UTF-8 sequence", "invalid Unicode character",
}

// yamlComposerProblems are the library's messages about a document that
// parsed but could not be put together; they carry no position.
var yamlComposerProblems = []string{
	"document contains excessive aliasing", "attempted to go past the end of stream", "cannot decode node", "input error",
}

// syntaxError turns the YAML library's error into "file:line: invalid YAML:
// problem" on one line, correcting or supplying the line where the library
// gets it wrong or leaves it out.
func (p *fileParser) syntaxError(err error, data []byte) error {
	msg := strings.Join(strings.Fields(err.Error()), " ") // one line, whatever the library says
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		if yamlParserProblems[msg] {
			line++
		}
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
		switch m := yamlAnchorRE.FindStringSubmatch(err.Error()); {
		case m != nil:
			line = lineOf(data, bytes.Index(data, []byte("*"+m[1])))
		case slices.ContainsFunc(yamlReaderProblems, func(pr string) bool { return strings.HasPrefix(msg, pr) }):
			line = lineOf(data, firstNonText(data))
		case slices.ContainsFunc(yamlComposerProblems, func(pr string) bool { return strings.HasPrefix(msg, pr) }):
			// No position to give.
		default:
			// The scanner and the parser leave the line out exactly when
			// it is the first one.
			line = 1
		}
	}
	// An error at the end of the stream is on the line after the last one;
	// point at the last one instead.
	lines := bytes.Count(data, []byte("\n"))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		lines++
	}
	if line > lines && lines > 0 {
		line = lines
	}
	if line > 0 {
		return fmt.Errorf("%s:%d: invalid YAML: %s", p.name, line, msg)
	}
	return fmt.Errorf("%s: invalid YAML: %s", p.name, msg)
}

// lineOf is the 1-based line of data[offset], or 0 for a negative offset.
func lineOf(data []byte, offset int) int {
	if offset < 0 {
		return 0
	}
	return bytes.Count(data[:offset], []byte("\n")) + 1
}

// firstNonText is the offset of the first byte that YAML does not accept as
// text (invalid UTF-8, or a control character other than tab and line
// breaks), or -1.
func firstNonText(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		bad := r == utf8.RuneError && size <= 1 ||
			r < 0x20 && r != '\t' && r != '\n' && r != '\r' ||
			r >= 0x7f && r <= 0x9f && r != 0x85 ||
			r >= 0xd800 && r <= 0xdfff || r == 0xfffe || r == 0xffff
		if bad {
			return i
		}
		i += size
	}
	return -1
}

func (p *fileParser) errorf(n *yaml.Node, key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: %s", p.name, n.Line, key, fmt.Sprintf(format, args...)))
}

// keyName is a mapping key as error messages show it: bare when it is a
// plain word, quoted otherwise, so that a key with a newline or spaces cannot
// break the one-error-per-line output.
func keyName(k *yaml.Node) string {
	if k.Kind != yaml.ScalarNode {
		return describe(k)
	}
	if plainKeyRE.MatchString(k.Value) {
		return k.Value
	}
	return strconv.Quote(k.Value)
}

var plainKeyRE = regexp.MustCompile(`^[A-Za-z0-9_.<-]+$`)

// deref follows a YAML alias (*name) to the node it stands for, so anchors
// can be used to share values inside one file.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// fields walks a mapping, calling the handler of each known key and
// reporting unknown and duplicate keys.
func (p *fileParser) fields(n *yaml.Node, where string, handlers map[string]func(*yaml.Node)) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.errorf(n, where, "want a mapping of keys, got %s", describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		key := k.Value
		h, ok := handlers[key]
		if !ok || k.Kind != yaml.ScalarNode {
			p.errorf(k, keyName(k), "unknown key in %s (want one of: %s)", where, keyList(handlers))
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
	p.fields(n, "defaults", p.tuningFields(&d))
	return d
}

// tuningFields are the settings a service shares with the defaults block.
func (p *fileParser) tuningFields(d *Defaults) map[string]func(*yaml.Node) {
	return map[string]func(*yaml.Node){
		"connect_timeout": func(v *yaml.Node) { d.ConnectTimeout = p.duration(v, "connect_timeout", false) },
		"idle_timeout":    func(v *yaml.Node) { d.IdleTimeout = p.duration(v, "idle_timeout", true) },
		"keepalive":       func(v *yaml.Node) { d.KeepAlive = p.duration(v, "keepalive", true) },
		"max_connections": func(v *yaml.Node) { d.MaxConnections = p.count(v, "max_connections", "no limit") },
		"retries":         func(v *yaml.Node) { d.Retries = p.count(v, "retries", "none") },
		"retry_timeout":   func(v *yaml.Node) { d.RetryTimeout = p.duration(v, "retry_timeout", false) },
		"eject_time":      func(v *yaml.Node) { d.EjectTime = p.duration(v, "eject_time", true) },
		// UDP services only (udp.go).
		"udp_idle_timeout": func(v *yaml.Node) { d.UDPIdleTimeout = p.duration(v, "udp_idle_timeout", false) },
		"max_sessions":     func(v *yaml.Node) { d.MaxSessions = p.positive(v, "max_sessions") },
	}
}

func (p *fileParser) services(n *yaml.Node) []Service {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "services", "want a list of services, got %s", describe(n))
		return nil
	}
	var out []Service
	for _, sn := range n.Content {
		sn = deref(sn)
		s := Service{Origin: fmt.Sprintf("%s:%d", p.name, sn.Line)}
		var t Defaults
		handlers := p.tuningFields(&t)
		handlers["name"] = func(v *yaml.Node) { s.Name = p.name_(v) }
		handlers["balance"] = func(v *yaml.Node) { s.Balance = p.balance(v) }
		handlers["health_check"] = func(v *yaml.Node) { s.HealthCheck = p.healthCheck(v) }
		handlers["close_on_remove"] = func(v *yaml.Node) { s.CloseOnRemove = p.boolean(v, "close_on_remove") }
		handlers["listen"] = func(v *yaml.Node) { s.Listen = p.listen(v) }
		handlers["accept_proxy"] = func(v *yaml.Node) { s.AcceptProxy = p.acceptProxy(v) }
		handlers["send_proxy"] = func(v *yaml.Node) { s.SendProxy = p.sendProxy(v) }
		handlers["backends"] = func(v *yaml.Node) { s.Backends = p.backends(v) }
		handlers["protocol"] = func(v *yaml.Node) { s.Protocol = p.protocol(v) }
		before := len(p.errs)
		p.fields(sn, "service", handlers)
		s.ConnectTimeout, s.IdleTimeout, s.KeepAlive, s.MaxConnections = t.ConnectTimeout, t.IdleTimeout, t.KeepAlive, t.MaxConnections
		s.Retries, s.RetryTimeout, s.EjectTime = t.Retries, t.RetryTimeout, t.EjectTime
		s.UDPIdleTimeout, s.MaxSessions = t.UDPIdleTimeout, t.MaxSessions
		if sn.Kind != yaml.MappingNode {
			continue
		}
		p.checkProtocolKeys(sn, &s)
		if !hasKey(sn, "name") {
			p.errorf(sn, "name", "missing: every service needs a name")
		}
		if !hasKey(sn, "listen") {
			p.errorf(sn, "listen", "missing in service %q: want [host:]port", s.Name)
		}
		if !hasKey(sn, "backends") {
			p.errorf(sn, "backends", "missing in service %q: want at least one host:port or discovery entry", s.Name)
		}
		if len(p.errs) == before {
			out = append(out, s)
		}
	}
	return out
}

func hasKey(n *yaml.Node, key string) bool { return keyNode(n, key) != nil }

// keyNode is the first key node named key in mapping n, or nil: errors
// about a key that is wrong next to its siblings point at its own line.
func keyNode(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i]
		}
	}
	return nil
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
	v = deref(v)
	if v.Kind != yaml.SequenceNode {
		p.errorf(v, "backends", "want a list of host:port or discovery entries, got %s", describe(v))
		return nil
	}
	if len(v.Content) == 0 {
		p.errorf(v, "backends", "empty: want at least one host:port or discovery entry")
		return nil
	}
	var out []Backend
	for _, bn := range v.Content {
		bn = deref(bn)
		var (
			b  Backend
			ok bool
		)
		switch bn.Kind {
		case yaml.ScalarNode:
			b, ok = p.backendSpec(bn, "backend")
		case yaml.MappingNode:
			b, ok = p.backendMapping(bn)
		default:
			p.errorf(bn, "backends", "want host:port, a discovery URL or a mapping such as {addr: host:port, weight: 2} or {srv: name}, got %s", describe(bn))
		}
		if ok {
			out = append(out, b)
		}
	}
	return out
}

// backendKinds are the keys of a backend mapping that say what it is; exactly
// one must be present.
var backendKinds = []string{"addr", KindDNS, KindSRV, KindEtcd, KindConsul, KindConsulKV, KindDocker, "url"}

func (p *fileParser) backendMapping(bn *yaml.Node) (Backend, bool) {
	var b Backend
	var d Discover
	link := "" // the link key, applied after the url key, which replaces b
	before := len(p.errs)
	p.fields(bn, "backend", map[string]func(*yaml.Node){
		"addr": func(n *yaml.Node) {
			if s, ok := p.scalar(n, "addr"); ok {
				if strings.Contains(s, "://") && !strings.HasPrefix(s, unixScheme) {
					p.errorf(n, "addr", "want host:port or unix:///path, got %q (a discovery URL goes under url)", s)
					return
				}
				addr, err := ParseBackendAddr(s)
				if err != nil {
					p.errorf(n, "addr", "%v", err)
				}
				b.Addr = addr
			}
		},
		"url": func(n *yaml.Node) {
			if got, ok := p.backendSpec(n, "url"); ok {
				b = Backend{Addr: got.Addr, Discover: got.Discover, Weight: b.Weight, SendProxy: b.SendProxy, Link: got.Link}
			}
		},
		"weight":     func(n *yaml.Node) { b.Weight = p.positive(n, "weight") },
		"link":       func(n *yaml.Node) { link = p.linkService(n) },
		"send_proxy": func(n *yaml.Node) { b.SendProxy = p.sendProxy(n) },
		KindDNS: func(n *yaml.Node) {
			if s, ok := p.scalar(n, KindDNS); ok {
				got, err := parseDNSTarget(s)
				if err != nil {
					p.errorf(n, KindDNS, "want name:port, got %q: %v", s, err)
					return
				}
				d = *got
			}
		},
		KindSRV:    func(n *yaml.Node) { d = Discover{Kind: KindSRV, Name: p.dnsName(n, KindSRV)} },
		KindEtcd:   func(n *yaml.Node) { d = Discover{Kind: KindEtcd, Name: p.keyPath(n, KindEtcd, true)} },
		KindConsul: func(n *yaml.Node) { d = Discover{Kind: KindConsul, Name: p.keyPath(n, KindConsul, false), Tag: d.Tag} },
		KindConsulKV: func(n *yaml.Node) {
			d = Discover{Kind: KindConsulKV, Name: strings.TrimLeft(p.keyPath(n, KindConsulKV, true), "/")}
		},
		KindDocker: func(n *yaml.Node) {
			if s, ok := p.scalar(n, KindDocker); ok {
				if err := dockerLabelValue(s); err != nil {
					p.errorf(n, KindDocker, "%v", err)
				}
				d = Discover{Kind: KindDocker, Name: s}
			}
		},
		"tag": func(n *yaml.Node) {
			if s, ok := p.scalar(n, "tag"); ok {
				if err := checkText(s); err != nil {
					p.errorf(n, "tag", "%v", err)
				}
				d.Tag = s
			}
		},
	})
	var kinds []string
	for _, k := range backendKinds {
		if hasKey(bn, k) {
			kinds = append(kinds, k)
		}
	}
	switch {
	case len(kinds) == 0:
		p.errorf(bn, "backend", "want one of the keys %s", strings.Join(backendKinds, ", "))
	case len(kinds) > 1:
		p.errorf(bn, "backend", "want only one of %s, got %s", strings.Join(backendKinds, ", "), strings.Join(kinds, " and "))
	}
	if k := keyNode(bn, "tag"); k != nil && (len(kinds) != 1 || kinds[0] != KindConsul) {
		p.errorf(k, "tag", "only a consul backend takes a tag (a consul-service:// url carries its own ?tag=)")
	}
	if len(p.errs) > before {
		return Backend{}, false
	}
	if d.Kind != "" {
		b.Discover = &d
	}
	if link != "" {
		if b.Link != "" {
			p.errorf(keyNode(bn, "link"), "link", "the url already names the remote service (%s); drop one", b.Link)
			return Backend{}, false
		}
		b.Link = link
	}
	if b.Discover != nil && b.Weight != 0 {
		p.errorf(keyNode(bn, "weight"), "weight", "only a fixed addr takes a weight; discovered backends carry their own")
		return Backend{}, false
	}
	if b.Discover != nil && b.SendProxy != 0 {
		p.errorf(keyNode(bn, "send_proxy"), "send_proxy", "only a fixed addr takes its own send_proxy; discovered backends follow the service's")
		return Backend{}, false
	}
	return b, true
}

// backendSpec reads a backend written as a string, in a backends list or
// under a url key.
func (p *fileParser) backendSpec(n *yaml.Node, key string) (Backend, bool) {
	s, ok := p.scalar(n, key)
	if !ok {
		return Backend{}, false
	}
	b, err := ParseBackend(s)
	if err != nil {
		p.errorf(n, key, "%v", err)
		return Backend{}, false
	}
	return b, true
}

func (p *fileParser) dnsName(n *yaml.Node, key string) string {
	s, ok := p.scalar(n, key)
	if !ok {
		return ""
	}
	name, err := dnsName(s)
	if err != nil {
		p.errorf(n, key, "%v", err)
	}
	return name
}

// keyPath reads an etcd or Consul key (or, without slashes, a Consul
// service name).
func (p *fileParser) keyPath(n *yaml.Node, key string, slashes bool) string {
	s, ok := p.scalar(n, key)
	if !ok {
		return ""
	}
	s = strings.TrimRight(s, "/")
	var err error
	switch {
	case s == "" || s == "/":
		err = fmt.Errorf("want a non-empty key")
	case !slashes:
		err = checkConsulService(s)
	default:
		err = checkKey(s)
	}
	if err != nil {
		p.errorf(n, key, "%v", err)
	}
	return s
}

func (p *fileParser) scalar(v *yaml.Node, key string) (string, bool) {
	v = deref(v)
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

// ParseDuration parses a positive Go duration. With allowOff, "off" and any
// zero duration ("0", "0s") are accepted and returned as -1, meaning
// "disabled".
func ParseDuration(s string, allowOff bool) (time.Duration, error) {
	if allowOff && strings.EqualFold(s, "off") {
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
	if d == 0 && allowOff {
		return -1, nil
	}
	if d <= 0 {
		return 0, fmt.Errorf("want %s (greater than zero), got %q", want, s)
	}
	return d, nil
}

// count parses a limit or a count, for which 0 means zeroMeans. An explicit
// 0 is returned as -1, so that it is not mistaken for "not set" and beats a
// lower-priority default.
func (p *fileParser) count(v *yaml.Node, key, zeroMeans string) int {
	s, ok := p.scalar(v, key)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		p.errorf(v, key, "want a whole number 0 or more (0: %s), got %q", zeroMeans, s)
		return 0
	}
	if n == 0 {
		return -1
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
