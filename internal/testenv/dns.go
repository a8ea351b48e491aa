package testenv

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNS is a real, authoritative DNS server on loopback whose records a test
// can change while it runs. It answers on UDP and on TCP at the same port
// (Addr), so clients that fall back to TCP after a truncated UDP reply reach
// it too.
//
// A name exists once any of SetA, SetAAAA or SetSRV has named it (even with
// no records): a question for a type it has no records of gets NODATA, and a
// question for a name that does not exist gets NXDOMAIN. Both negative
// answers carry an SOA whose TTL and minimum are the name's TTL, as RFC 2308
// asks of an authoritative server.
//
// Failures are injected with Fail, and every question is counted (Queries),
// so a test can prove how often a client asked without measuring time.
type DNS struct {
	// Addr is host:port of the server, the same port for UDP and TCP.
	Addr string

	mu          sync.Mutex
	names       map[string]*dnsName
	ttl         uint32
	fail        map[string]Failure // "" is every name
	truncateUDP bool
	noGlue      bool
	queries     map[string]int
	tcpQueries  map[string]int
}

// dnsName holds one name's records. ttl is nil when the name uses the
// server's default TTL.
type dnsName struct {
	a, aaaa []net.IP
	srv     []SRV
	ttl     *uint32
}

// SRV is one SRV record as SetSRV serves it. Nothing is checked, so a test
// can serve broken records (Port 0, Target ".", a target that does not
// exist).
type SRV struct {
	Priority, Weight, Port uint16
	// Target is the host name the record points at; "." means "no service".
	Target string
}

// Failure is how the server misbehaves for a name (see Fail).
type Failure int

const (
	// FailNone answers normally.
	FailNone Failure = iota
	// FailServFail answers SERVFAIL.
	FailServFail
	// FailRefused answers REFUSED.
	FailRefused
	// FailDrop does not answer at all, so the client times out.
	FailDrop
	// FailGarbage answers with the right message ID but a body that does not
	// parse.
	FailGarbage
)

// StartDNS starts a DNS server on a free 127.0.0.1 port (UDP and TCP). It is
// shut down by t.Cleanup.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	pc, ln := listenUDPAndTCP(t)
	d := &DNS{
		Addr:       pc.LocalAddr().String(),
		names:      map[string]*dnsName{},
		fail:       map[string]Failure{},
		queries:    map[string]int{},
		tcpQueries: map[string]int{},
	}
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(d.serve)}
	for _, srv := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan error, 1)
		go func() { done <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("dns server on %s: %v", d.Addr, err)
		}
		t.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return d
}

// listenUDPAndTCP binds a UDP socket on a free loopback port and a TCP
// listener on the same port. The UDP port is picked first; if its TCP twin
// is taken by someone else, another port is tried.
func listenUDPAndTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dns listen udp: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		lastErr = err
		pc.Close()
	}
	t.Fatalf("dns: no loopback port free for both UDP and TCP: %v", lastErr)
	return nil, nil
}

// name returns the records of name, creating them. d.mu must be held.
func (d *DNS) name(name string) *dnsName {
	key := strings.ToLower(dns.Fqdn(name))
	n, ok := d.names[key]
	if !ok {
		n = &dnsName{}
		d.names[key] = n
	}
	return n
}

func parseIPs(ips []string, v4 bool) []net.IP {
	list := make([]net.IP, 0, len(ips))
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil || (ip.To4() != nil) != v4 {
			panic(fmt.Sprintf("testenv: %q is not an IPv%s address", s, map[bool]string{true: "4", false: "6"}[v4]))
		}
		list = append(list, ip)
	}
	return list
}

// SetA replaces the A records of name ("backend.test."); with no ips the
// name exists but has no A records (NODATA).
func (d *DNS) SetA(name string, ips ...string) {
	list := parseIPs(ips, true)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.name(name).a = list
}

// SetAAAA replaces the AAAA records of name.
func (d *DNS) SetAAAA(name string, ips ...string) {
	list := parseIPs(ips, false)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.name(name).aaaa = list
}

// SetSRV replaces the SRV records of name ("_redis._tcp.svc.test.").
// Targets are served as given (made absolute).
func (d *DNS) SetSRV(name string, recs ...SRV) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.name(name).srv = append([]SRV(nil), recs...)
}

// Remove deletes name and all its records, so it answers NXDOMAIN.
func (d *DNS) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.names, strings.ToLower(dns.Fqdn(name)))
}

// SetTTL sets the TTL, in seconds, of every record of names without a TTL
// of their own. It starts at 0.
func (d *DNS) SetTTL(seconds uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ttl = seconds
}

// SetNameTTL sets the TTL, in seconds, of name's records (and of the SOA in
// its negative answers), overriding SetTTL.
func (d *DNS) SetNameTTL(name string, seconds uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.name(name).ttl = &seconds
}

// Fail makes the server misbehave for questions about name, or about every
// name when name is "". FailNone restores normal answers. A name's own
// setting wins over the one for "".
func (d *DNS) Fail(name string, f Failure) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := ""
	if name != "" {
		key = strings.ToLower(dns.Fqdn(name))
	}
	if f == FailNone {
		delete(d.fail, key)
		return
	}
	d.fail[key] = f
}

// SetTruncateUDP makes every UDP answer an empty one with the TC bit set,
// so the client has to ask again over TCP to get the records.
func (d *DNS) SetTruncateUDP(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.truncateUDP = on
}

// SetGlue chooses whether SRV answers carry the targets' A/AAAA records in
// the additional section, as real servers do for targets they know. It is
// on by default; turning it off makes clients look the targets up.
func (d *DNS) SetGlue(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.noGlue = !on
}

// Queries is how many questions about name (any type, UDP or TCP) the
// server has received, failed ones included.
func (d *DNS) Queries(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[strings.ToLower(dns.Fqdn(name))]
}

// TCPQueries is how many of Queries(name) came over TCP.
func (d *DNS) TCPQueries(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tcpQueries[strings.ToLower(dns.Fqdn(name))]
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	_, isTCP := w.LocalAddr().(*net.TCPAddr)
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	key := strings.ToLower(q.Name)

	d.mu.Lock()
	d.queries[key]++
	if isTCP {
		d.tcpQueries[key]++
	}
	failure, ok := d.fail[key]
	if !ok {
		failure = d.fail[""]
	}
	var m *dns.Msg
	if failure == FailNone {
		m = d.answer(req, q)
	}
	truncate := d.truncateUDP && !isTCP
	d.mu.Unlock()

	switch failure {
	case FailDrop:
		return
	case FailServFail, FailRefused:
		m = new(dns.Msg)
		m.SetRcode(req, map[Failure]int{FailServFail: dns.RcodeServerFailure, FailRefused: dns.RcodeRefused}[failure])
	case FailGarbage:
		// A header that promises one question and one answer, followed by
		// bytes that are neither: the ID matches, so the client reads it,
		// and then fails to unpack it.
		raw := []byte{byte(req.Id >> 8), byte(req.Id), 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff}
		_, _ = w.Write(raw)
		return
	}
	if truncate {
		m.Answer, m.Ns, m.Extra = nil, nil, nil
		m.Truncated = true
	} else if !isTCP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// answer builds the reply to q. d.mu must be held.
func (d *DNS) answer(req *dns.Msg, q dns.Question) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	n, ok := d.names[strings.ToLower(q.Name)]
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, d.soa(q.Name, d.ttl))
		return m
	}
	ttl := d.ttl
	if n.ttl != nil {
		ttl = *n.ttl
	}
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	switch q.Qtype {
	case dns.TypeA:
		for _, ip := range n.a {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip.To4()})
		}
	case dns.TypeAAAA:
		for _, ip := range n.aaaa {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip})
		}
	case dns.TypeSRV:
		for _, s := range n.srv {
			target := dns.Fqdn(s.Target)
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr: hdr(dns.TypeSRV), Priority: s.Priority, Weight: s.Weight, Port: s.Port, Target: target,
			})
			if !d.noGlue {
				m.Extra = append(m.Extra, d.glue(target)...)
			}
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, d.soa(q.Name, ttl))
	}
	return m
}

// glue returns target's address records for an additional section. d.mu
// must be held.
func (d *DNS) glue(target string) []dns.RR {
	n, ok := d.names[strings.ToLower(target)]
	if !ok {
		return nil
	}
	ttl := d.ttl
	if n.ttl != nil {
		ttl = *n.ttl
	}
	var rrs []dns.RR
	for _, ip := range n.a {
		rrs = append(rrs, &dns.A{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ip.To4()})
	}
	for _, ip := range n.aaaa {
		rrs = append(rrs, &dns.AAAA{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: ip})
	}
	return rrs
}

// soa is the record a negative answer carries; its TTL and minimum tell the
// client how long to cache the negative answer (RFC 2308).
func (d *DNS) soa(name string, ttl uint32) dns.RR {
	zone := "test."
	if labels := dns.SplitDomainName(name); len(labels) > 0 {
		zone = dns.Fqdn(labels[len(labels)-1])
	}
	return &dns.SOA{
		Hdr:    dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:     "ns." + zone,
		Mbox:   "hostmaster." + zone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl,
	}
}

// Resolver returns a pure-Go resolver that asks only this server (over UDP,
// and over TCP when an answer comes back truncated).
func (d *DNS) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, network, d.Addr)
		},
	}
}
