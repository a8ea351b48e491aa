package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/attache/attache/internal/backend"
)

// udpSize is the EDNS0 buffer size advertised: the DNS flag day 2020 value,
// which avoids IP fragmentation; larger answers come back truncated and are
// fetched again over TCP.
const udpSize = 1232

// Negative answers, as QueryStatus.Negative shows them.
const (
	nxdomain = "NXDOMAIN"
	nodata   = "NODATA"
)

// answer is the outcome of one successful lookup of a query.
type answer struct {
	endpoints []backend.Endpoint
	// ttl is the lowest TTL of the records used (or of the SOA of a
	// negative answer); 0 when there was none, which clamps to MinTTL.
	ttl time.Duration
	// negative is nxdomain or nodata when the name had no records at all.
	negative string
	skipped  []skippedRecord
}

// skippedRecord is an SRV record that could not become an endpoint.
type skippedRecord struct {
	record string // "name SRV priority weight port target", without the TTL so it stays the same across answers
	reason string
}

// resolver asks one DNS server.
type resolver struct {
	server  string
	timeout time.Duration
}

// lowestTTL tracks the smallest TTL seen.
type lowestTTL struct {
	seen bool
	min  uint32
}

func (l *lowestTTL) add(ttl uint32) {
	if !l.seen || ttl < l.min {
		l.seen, l.min = true, ttl
	}
}

func (l lowestTTL) duration() time.Duration {
	if !l.seen {
		return 0
	}
	return time.Duration(l.min) * time.Second
}

// addrs looks up the A and AAAA records of name and makes each address an
// endpoint at port.
func (r resolver) addrs(ctx context.Context, name string, port int) (answer, error) {
	var ttl lowestTTL
	ips, negative, err := r.lookupIPs(ctx, name, &ttl)
	if err != nil {
		return answer{}, err
	}
	ans := answer{ttl: ttl.duration(), negative: negative}
	for _, ip := range ips {
		ans.endpoints = append(ans.endpoints, backend.Endpoint{Addr: net.JoinHostPort(ip.String(), strconv.Itoa(port))})
	}
	return ans, nil
}

// lookupIPs asks for name's A and AAAA records, adding their TTLs to ttl.
// negative is nxdomain or nodata when there are no addresses. An NXDOMAIN
// to the A question skips the AAAA one: the name does not exist for any
// type.
func (r resolver) lookupIPs(ctx context.Context, name string, ttl *lowestTTL) (ips []netip.Addr, negative string, err error) {
	negative = nodata
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		reply, err := r.exchange(ctx, name, qtype)
		if err != nil {
			return nil, "", err
		}
		if reply.Rcode == dns.RcodeNameError {
			addNegativeTTL(reply, ttl)
			return nil, nxdomain, nil
		}
		found := false
		for _, rr := range reply.Answer {
			switch rr := rr.(type) {
			case *dns.A:
				if ip, ok := netip.AddrFromSlice(rr.A.To4()); ok {
					ips, found = append(ips, ip), true
					ttl.add(rr.Hdr.Ttl)
				}
			case *dns.AAAA:
				if ip, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok {
					ips, found = append(ips, ip.Unmap()), true
					ttl.add(rr.Hdr.Ttl)
				}
			case *dns.CNAME:
				// The chain's TTLs bound the answer's life too.
				ttl.add(rr.Hdr.Ttl)
			}
		}
		if !found {
			addNegativeTTL(reply, ttl)
		}
	}
	if len(ips) > 0 {
		negative = ""
	}
	return ips, negative, nil
}

// addNegativeTTL adds the negative-caching TTL of reply (RFC 2308: the
// lower of the SOA's TTL and its MINIMUM field), if it carries an SOA.
func addNegativeTTL(reply *dns.Msg, ttl *lowestTTL) {
	for _, rr := range reply.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl.add(min(soa.Hdr.Ttl, soa.Minttl))
		}
	}
}

// srv looks up the SRV records of name and turns each into endpoints: one
// per address of its target, at its port, with its weight and priority.
// Targets come from the additional section when the server put them there,
// else they are looked up. Bad records are skipped and reported in
// answer.skipped; a server failure while resolving a target fails the whole
// lookup, so the last good answer stays in force instead of a partial one.
func (r resolver) srv(ctx context.Context, name string) (answer, error) {
	reply, err := r.exchange(ctx, name, dns.TypeSRV)
	if err != nil {
		return answer{}, err
	}
	var ttl lowestTTL
	if reply.Rcode == dns.RcodeNameError {
		addNegativeTTL(reply, &ttl)
		return answer{ttl: ttl.duration(), negative: nxdomain}, nil
	}
	glue := map[string][]netip.Addr{}
	glueTTL := map[string]uint32{}
	for _, rr := range reply.Extra {
		var ip netip.Addr
		switch rr := rr.(type) {
		case *dns.A:
			ip, _ = netip.AddrFromSlice(rr.A.To4())
		case *dns.AAAA:
			ip, _ = netip.AddrFromSlice(rr.AAAA.To16())
		default:
			continue
		}
		if !ip.IsValid() {
			continue
		}
		key := strings.ToLower(rr.Header().Name)
		glue[key] = append(glue[key], ip.Unmap())
		if old, ok := glueTTL[key]; !ok || rr.Header().Ttl < old {
			glueTTL[key] = rr.Header().Ttl
		}
	}

	var ans answer
	looked := map[string]lookedUp{} // targets resolved in this pass
	records := 0
	for _, rr := range reply.Answer {
		s, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		records++
		ttl.add(s.Hdr.Ttl)
		rec := fmt.Sprintf("%s SRV %d %d %d %s", s.Hdr.Name, s.Priority, s.Weight, s.Port, s.Target)
		skip := func(reason string) {
			ans.skipped = append(ans.skipped, skippedRecord{record: rec, reason: reason})
		}
		target := strings.ToLower(s.Target)
		switch {
		case target == ".":
			skip(`target is "." (the domain declares the service unavailable)`)
			continue
		case s.Port == 0:
			skip("port is 0")
			continue
		}
		ips, ok := glue[target]
		if ok {
			ttl.add(glueTTL[target])
		} else {
			l, done := looked[target]
			if !done {
				l.ips, l.negative, err = r.lookupIPs(ctx, target, &l.ttl)
				if err != nil {
					return answer{}, fmt.Errorf("resolving target of %s: %w", rec, err)
				}
				looked[target] = l
			}
			if l.ttl.seen {
				ttl.add(l.ttl.min)
			}
			if len(l.ips) == 0 {
				skip(fmt.Sprintf("target %s does not resolve (%s)", s.Target, l.negative))
				continue
			}
			ips = l.ips
		}
		for _, ip := range ips {
			ans.endpoints = append(ans.endpoints, backend.Endpoint{
				Addr:     net.JoinHostPort(ip.String(), strconv.Itoa(int(s.Port))),
				Weight:   int(s.Weight),
				Priority: int(s.Priority),
			})
		}
	}
	if records == 0 {
		addNegativeTTL(reply, &ttl)
		ans.negative = nodata
	}
	ans.ttl = ttl.duration()
	return ans, nil
}

// lookedUp is a target resolved during one SRV lookup.
type lookedUp struct {
	ips      []netip.Addr
	negative string
	ttl      lowestTTL
}

// exchange asks one question over UDP, and again over TCP if the UDP reply
// was truncated. It returns an error for anything but a usable answer: no
// reply, a garbled one, one to another question, or an rcode other than
// NOERROR and NXDOMAIN (SERVFAIL, REFUSED … say nothing about the name).
func (r resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(udpSize, false)
	qname := name + " " + dns.TypeToString[qtype]

	reply, err := r.roundTrip(ctx, "udp", m)
	if err == nil && reply.Truncated {
		reply, err = r.roundTrip(ctx, "tcp", m)
	}
	if err != nil {
		return nil, fmt.Errorf("asking %s for %s: %w", r.server, qname, err)
	}
	if len(reply.Question) != 1 || !strings.EqualFold(reply.Question[0].Name, name) || reply.Question[0].Qtype != qtype {
		return nil, fmt.Errorf("asking %s for %s: the reply is for another question (%v)", r.server, qname, reply.Question)
	}
	switch reply.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return reply, nil
	default:
		return nil, fmt.Errorf("asking %s for %s: server answered %s", r.server, qname, rcodeString(reply.Rcode))
	}
}

func rcodeString(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return "rcode " + strconv.Itoa(rcode)
}

// errTimeout is wrapped into the error of an exchange that got no reply in
// time, so callers and logs can tell it from a refusal.
var errTimeout = errors.New("no reply in time")

// roundTrip sends m once over network. The client's Timeout bounds the
// dial, the write and the read; ctx cancels it early by closing the socket,
// because miekg/dns only reads a context's deadline, not its cancellation.
func (r resolver) roundTrip(ctx context.Context, network string, m *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: r.timeout}
	conn, err := c.DialContext(ctx, r.server)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", network, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	reply, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return nil, fmt.Errorf("%s: %w after %s: %w", network, errTimeout, r.timeout, err)
		}
		return nil, fmt.Errorf("%s: %w", network, err)
	}
	return reply, nil
}
