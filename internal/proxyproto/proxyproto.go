// Package proxyproto reads and writes the PROXY protocol header (versions 1
// and 2) that load balancers put at the start of a TCP connection to pass
// on the address of the client they accepted it from.
//
// Typical usage, on a listener behind a trusted load balancer:
//
//	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
//	h, err := proxyproto.Read(c) // consumes the header's bytes, nothing more
//	_ = c.SetReadDeadline(time.Time{})
//	if err != nil { /* close: missing or malformed */ }
//	client := h.Source // zero when the header carries no address (LOCAL, UNKNOWN)
//
// and towards a backend that wants the client's address:
//
//	hdr := proxyproto.Header{Version: 2, Source: client, Destination: local}.Append(nil)
//	_, err := backend.Write(hdr) // before any payload
//
// Read consumes exactly the header, peeking at the socket to find its end,
// so what follows stays in the kernel's buffer and the caller keeps the raw
// socket (and with it splice(2)); no buffered reader has to be carried
// along the data path.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Header is one PROXY protocol header.
type Header struct {
	// Version is 1 (text) or 2 (binary).
	Version int
	// Local is a version 2 LOCAL command: the connection was opened by the
	// load balancer itself (a health check), and the receiver uses the
	// connection's own addresses. Version 1 has no LOCAL; Append writes
	// it as UNKNOWN.
	Local bool
	// Source is the client's address and Destination the address it
	// connected to. Both are the zero AddrPort when the header carries no
	// usable address (LOCAL, v1 UNKNOWN, v2 UNSPEC or AF_UNIX): the
	// receiver then uses the connection's own.
	Source, Destination netip.AddrPort
}

// HasAddrs reports whether h carries a client address.
func (h Header) HasAddrs() bool { return h.Source.IsValid() && h.Destination.IsValid() }

const (
	// MaxV1Len is the longest version 1 header, CRLF included, that the
	// specification allows ("PROXY UNKNOWN" plus two full IPv6 addresses
	// and ports).
	MaxV1Len = 107
	// MaxV2Len bounds a version 2 header, the 16 fixed bytes and every
	// address and TLV byte after them. The format allows 64 KiB; TLVs sent
	// in practice (AWS, GCP and Azure endpoint IDs, SNI, TLS details) take
	// a few hundred bytes, and a bound keeps one slow or hostile peer from
	// making the listener buffer much.
	MaxV2Len = 4096
	// v2Fixed is the signature, version/command, family and length.
	v2Fixed = 16
	// v2UnixAddrs is the address block of AF_UNIX: two 108-byte paths.
	v2UnixAddrs = 216
)

var (
	v1Prefix    = []byte("PROXY ")
	v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

var (
	// ErrIncomplete: the bytes so far are the start of what may still be a
	// valid header; more are needed.
	ErrIncomplete = errors.New("proxyproto: incomplete header")
	// ErrNoHeader: the connection does not start with a PROXY header.
	ErrNoHeader = errors.New("proxyproto: no PROXY protocol header")
)

// Parse reads the header at the start of b and returns it with its length
// in bytes; what follows in b is application data. It returns
// ErrIncomplete when b is a proper prefix of what may still be a valid
// header, ErrNoHeader when b does not begin like either version, and
// another error, which says what is wrong, for a malformed header.
func Parse(b []byte) (Header, int, error) {
	if len(b) == 0 {
		return Header{}, 0, ErrIncomplete
	}
	switch {
	case hasPrefix(b, v2Signature):
		return parseV2(b)
	case hasPrefix(b, v1Prefix):
		return parseV1(b)
	}
	return Header{}, 0, ErrNoHeader
}

// hasPrefix reports whether b and sig agree over the shorter of the two.
func hasPrefix(b, sig []byte) bool {
	n := min(len(b), len(sig))
	return bytes.Equal(b[:n], sig[:n])
}

// v1Error is a malformed version 1 header; the line is quoted, cut short.
func v1Error(line []byte, format string, args ...any) error {
	const quoteMax = 60
	q := line
	if len(q) > quoteMax {
		q = q[:quoteMax]
	}
	return fmt.Errorf("proxyproto: v1 header %q: %s", q, fmt.Sprintf(format, args...))
}

func parseV1(b []byte) (Header, int, error) {
	if len(b) < len(v1Prefix) {
		return Header{}, 0, ErrIncomplete
	}
	end := -1
	for i, c := range b[:min(len(b), MaxV1Len)] {
		if c == '\n' {
			if i == 0 || b[i-1] != '\r' {
				return Header{}, 0, v1Error(b[:i], "a line feed without a carriage return before it")
			}
			end = i + 1
			break
		}
		if c == '\r' {
			if i+1 < len(b) && b[i+1] != '\n' {
				return Header{}, 0, v1Error(b[:i], "a carriage return without a line feed after it")
			}
			continue
		}
		if c < 0x20 || c > 0x7e {
			return Header{}, 0, v1Error(b[:i], "byte 0x%02x is not printable ASCII", c)
		}
	}
	if end < 0 {
		if len(b) >= MaxV1Len {
			return Header{}, 0, v1Error(b[:MaxV1Len], "no CRLF within the first %d bytes", MaxV1Len)
		}
		return Header{}, 0, ErrIncomplete
	}
	h, err := parseV1Line(b[:end-2])
	if err != nil {
		return Header{}, 0, err
	}
	return h, end, nil
}

// parseV1Line parses "PROXY <proto> <src> <dst> <sport> <dport>" without
// its CRLF.
func parseV1Line(line []byte) (Header, error) {
	rest := line[len(v1Prefix):]
	proto, rest, _ := bytes.Cut(rest, []byte(" "))
	h := Header{Version: 1}
	var is4 bool
	switch string(proto) {
	case "UNKNOWN":
		// The rest of the line, whatever it is, is to be ignored.
		return h, nil
	case "TCP4":
		is4 = true
	case "TCP6":
	default:
		return Header{}, v1Error(line, "protocol %q: want TCP4, TCP6 or UNKNOWN", proto)
	}
	fields := bytes.Split(rest, []byte(" "))
	if len(fields) != 4 {
		return Header{}, v1Error(line, "want source and destination addresses and ports, separated by single spaces")
	}
	var addrs [2]netip.Addr
	for i := range 2 {
		a, err := netip.ParseAddr(string(fields[i]))
		if err != nil || a.Zone() != "" || a.Is4() != is4 {
			return Header{}, v1Error(line, "address %q: want an %s address", fields[i], map[bool]string{true: "IPv4", false: "IPv6"}[is4])
		}
		addrs[i] = a
	}
	var ports [2]uint16
	for i := range 2 {
		p, ok := parsePort(fields[2+i])
		if !ok {
			return Header{}, v1Error(line, "port %q: want a number 0-65535", fields[2+i])
		}
		ports[i] = p
	}
	h.Source = netip.AddrPortFrom(addrs[0], ports[0])
	h.Destination = netip.AddrPortFrom(addrs[1], ports[1])
	return h, nil
}

func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(string(b))
	if err != nil || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// v2 command and family bytes.
const (
	cmdLocal = 0x20
	cmdProxy = 0x21

	famUnspec     = 0x00
	famTCP4       = 0x11
	famUDP4       = 0x12
	famTCP6       = 0x21
	famUDP6       = 0x22
	famUnixStream = 0x31
	famUnixDgram  = 0x32
)

// v2Total is the length of the version 2 header that b (at least 16 bytes,
// starting with the signature) announces.
func v2Total(b []byte) int { return v2Fixed + int(binary.BigEndian.Uint16(b[14:16])) }

func parseV2(b []byte) (Header, int, error) {
	if len(b) < v2Fixed {
		return Header{}, 0, ErrIncomplete
	}
	cmd, fam := b[12], b[13]
	if cmd != cmdLocal && cmd != cmdProxy {
		if cmd>>4 != 2 {
			return Header{}, 0, fmt.Errorf("proxyproto: v2 header: version %d, want 2", cmd>>4)
		}
		return Header{}, 0, fmt.Errorf("proxyproto: v2 header: command 0x%x, want LOCAL (0) or PROXY (1)", cmd&0x0f)
	}
	total := v2Total(b)
	if total > MaxV2Len {
		return Header{}, 0, fmt.Errorf("proxyproto: v2 header of %d bytes, longer than the %d accepted", total, MaxV2Len)
	}
	h := Header{Version: 2, Local: cmd == cmdLocal}
	var addrLen int
	switch fam {
	case famUnspec:
	case famTCP4, famUDP4:
		addrLen = 12
	case famTCP6, famUDP6:
		addrLen = 36
	case famUnixStream, famUnixDgram:
		addrLen = v2UnixAddrs
	default:
		if !h.Local { // LOCAL ignores the family byte
			return Header{}, 0, fmt.Errorf("proxyproto: v2 header: address family and transport 0x%02x are not defined", fam)
		}
	}
	if !h.Local && total-v2Fixed < addrLen {
		return Header{}, 0, fmt.Errorf("proxyproto: v2 header: %d address bytes, the family 0x%02x needs %d", total-v2Fixed, fam, addrLen)
	}
	if len(b) < total {
		return Header{}, 0, ErrIncomplete
	}
	if h.Local {
		// The address block and TLVs are to be discarded, whatever they hold.
		return h, total, nil
	}
	a := b[v2Fixed:total]
	switch addrLen {
	case 12:
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	case 36:
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36]))
	}
	// AF_UNIX paths are no client address attache can use; like UNSPEC,
	// the connection's own addresses stand.
	if err := checkTLVs(a[addrLen:]); err != nil {
		return Header{}, 0, err
	}
	return h, total, nil
}

// checkTLVs walks the type-length-value records after the addresses without
// interpreting them: each must fit inside the header, so a malformed one
// is reported rather than skipped over into garbage.
func checkTLVs(b []byte) error {
	for len(b) > 0 {
		if len(b) < 3 {
			return fmt.Errorf("proxyproto: v2 header: %d stray bytes after the last TLV", len(b))
		}
		n := 3 + int(binary.BigEndian.Uint16(b[1:3]))
		if n > len(b) {
			return fmt.Errorf("proxyproto: v2 header: TLV type 0x%02x of %d bytes overruns the header by %d", b[0], n-3, n-len(b))
		}
		b = b[n:]
	}
	return nil
}

// Append appends h, encoded in h.Version, to b. A header without both
// addresses is written as UNKNOWN (v1) or as PROXY with an unspecified
// family (v2), telling the receiver to use the connection's own addresses;
// Local is written as LOCAL in v2 and as UNKNOWN in v1. When the two
// addresses are of different families (an IPv4 client of an IPv6
// listener), both are written as IPv6, the IPv4 one mapped (::ffff:a.b.c.d).
func (h Header) Append(b []byte) []byte {
	src, dst, is4, ok := h.Source, h.Destination, false, h.HasAddrs() && !h.Local
	if ok {
		src = netip.AddrPortFrom(src.Addr().WithZone(""), src.Port())
		dst = netip.AddrPortFrom(dst.Addr().WithZone(""), dst.Port())
		s4, d4 := src.Addr().Unmap(), dst.Addr().Unmap()
		if is4 = s4.Is4() && d4.Is4(); is4 {
			src, dst = netip.AddrPortFrom(s4, src.Port()), netip.AddrPortFrom(d4, dst.Port())
		} else {
			src = netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
			dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
		}
	}
	if h.Version == 1 {
		if !ok {
			return append(b, "PROXY UNKNOWN\r\n"...)
		}
		b = append(b, "PROXY TCP6 "...)
		if is4 {
			b[len(b)-2] = '4'
		}
		b = src.Addr().AppendTo(b)
		b = append(b, ' ')
		b = dst.Addr().AppendTo(b)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(src.Port()), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(dst.Port()), 10)
		return append(b, "\r\n"...)
	}
	b = append(b, v2Signature...)
	switch {
	case h.Local:
		return append(b, cmdLocal, famUnspec, 0, 0)
	case !ok:
		return append(b, cmdProxy, famUnspec, 0, 0)
	case is4:
		b = append(b, cmdProxy, famTCP4, 0, 12)
		s, d := src.Addr().As4(), dst.Addr().As4()
		b = append(append(b, s[:]...), d[:]...)
	default:
		b = append(b, cmdProxy, famTCP6, 0, 36)
		s, d := src.Addr().As16(), dst.Addr().As16()
		b = append(append(b, s[:]...), d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
