package proxyproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// v2 builds a version 2 header from hex pieces (spaces ignored) after the
// signature.
func v2(t testing.TB, hexParts ...string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join(hexParts, ""), " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return append(append([]byte{}, v2Signature...), b...)
}

var (
	ffff6 = strings.Repeat("ffff:", 7) + "ffff"
	ap    = netip.MustParseAddrPort
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Header
		size int    // bytes of header; the rest of in is payload
		err  string // substring; "" for success
	}{
		// The examples of the specification, section 2.1.
		{name: "v1 tcp4", in: []byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"),
			want: Header{Version: 1, Source: ap("192.168.0.1:56324"), Destination: ap("192.168.0.11:443")}, size: 47},
		{name: "v1 tcp4 longest", in: []byte("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
			want: Header{Version: 1, Source: ap("255.255.255.255:65535"), Destination: ap("255.255.255.255:65535")}, size: 56},
		{name: "v1 tcp6 longest", in: []byte("PROXY TCP6 " + ffff6 + " " + ffff6 + " 65535 65535\r\n"),
			want: Header{Version: 1, Source: ap("[" + ffff6 + "]:65535"), Destination: ap("[" + ffff6 + "]:65535")}, size: 104},
		{name: "v1 unknown shortest", in: []byte("PROXY UNKNOWN\r\nhello"), want: Header{Version: 1}, size: 15},
		{name: "v1 unknown longest", in: []byte("PROXY UNKNOWN " + ffff6 + " " + ffff6 + " 65535 65535\r\n"), want: Header{Version: 1}, size: 107},
		{name: "v1 tcp6 compressed", in: []byte("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n"),
			want: Header{Version: 1, Source: ap("[2001:db8::1]:1"), Destination: ap("[::1]:65535")}, size: 36},

		{name: "v1 too long", in: []byte("PROXY UNKNOWN " + ffff6 + " " + ffff6 + " 65535 655350\r\n"), err: "no CRLF within the first 107 bytes"},
		{name: "v1 lf only", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), err: "line feed without a carriage return"},
		{name: "v1 cr only", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx"), err: "carriage return without a line feed"},
		{name: "v1 bad protocol", in: []byte("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), err: `protocol "UDP4"`},
		{name: "v1 family mismatch", in: []byte("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), err: `address "::1": want an IPv4 address`},
		{name: "v1 ipv4 in tcp6", in: []byte("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), err: "want an IPv6 address"},
		{name: "v1 zone", in: []byte("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), err: "want an IPv6 address"},
		{name: "v1 leading zero ipv4", in: []byte("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), err: "want an IPv4 address"},
		{name: "v1 port range", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), err: `port "65536"`},
		{name: "v1 negative port", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), err: `port "-1"`},
		{name: "v1 double space", in: []byte("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), err: "single spaces"},
		{name: "v1 missing port", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), err: "single spaces"},
		{name: "v1 trailing space", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), err: "single spaces"},
		{name: "v1 nul", in: []byte("PROXY TCP4 1.2.3.4\x00"), err: "not printable"},
		{name: "v1 lower case", in: []byte("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), err: "no PROXY protocol header"},

		// Version 2, section 2.2.
		{name: "v2 tcp4", in: append(v2(t, "21 11 000c", "c0a80001 c0a8000b", "dc04 01bb"), "payload"...),
			want: Header{Version: 2, Source: ap("192.168.0.1:56324"), Destination: ap("192.168.0.11:443")}, size: 28},
		{name: "v2 tcp6", in: v2(t, "21 21 0024", "20010db8000000000000000000000001", "00000000000000000000000000000001", "0001 ffff"),
			want: Header{Version: 2, Source: ap("[2001:db8::1]:1"), Destination: ap("[::1]:65535")}, size: 52},
		{name: "v2 udp4", in: v2(t, "21 12 000c", "01020304 05060708", "0001 0002"),
			want: Header{Version: 2, Source: ap("1.2.3.4:1"), Destination: ap("5.6.7.8:2")}, size: 28},
		{name: "v2 local", in: v2(t, "20 00 0000"), want: Header{Version: 2, Local: true}, size: 16},
		{name: "v2 local ignores its addresses", in: v2(t, "20 11 000c", "01020304 05060708", "0001 0002"),
			want: Header{Version: 2, Local: true}, size: 28},
		{name: "v2 local with an undefined family", in: v2(t, "20 ff 0000"), want: Header{Version: 2, Local: true}, size: 16},
		{name: "v2 unspec", in: v2(t, "21 00 0000"), want: Header{Version: 2}, size: 16},
		{name: "v2 unspec with a tlv", in: v2(t, "21 00 0003", "040000"), want: Header{Version: 2}, size: 19},
		{name: "v2 unix", in: v2(t, "21 31 00d8", strings.Repeat("00", 216)), want: Header{Version: 2}, size: 232},
		{name: "v2 tcp4 with tlvs", in: v2(t, "21 11 001b", "01020304 05060708", "0001 0002",
			"02 0005 6c6f63616c", // PP2_TYPE_AUTHORITY "local"
			"04 0000",            // PP2_TYPE_NOOP, empty
			"ea 0001 00"),        // a vendor TLV
			want: Header{Version: 2, Source: ap("1.2.3.4:1"), Destination: ap("5.6.7.8:2")}, size: 43},

		{name: "v2 version 1", in: v2(t, "11 11 000c"), err: "version 1, want 2"},
		{name: "v2 bad command", in: v2(t, "22 11 000c"), err: "command 0x2"},
		{name: "v2 undefined family", in: v2(t, "21 41 0000"), err: "family and transport 0x41"},
		{name: "v2 inet unspec transport", in: v2(t, "21 10 000c"), err: "family and transport 0x10"},
		{name: "v2 short addresses", in: v2(t, "21 21 000c", "01020304 05060708", "0001 0002"), err: "12 address bytes, the family 0x21 needs 36"},
		{name: "v2 too long", in: v2(t, "21 11 1000"), err: "v2 header of 4112 bytes"},
		{name: "v2 tlv overrun", in: v2(t, "21 11 0010", "01020304 05060708", "0001 0002", "02 0005 6c"), err: "TLV type 0x02 of 5 bytes overruns"},
		{name: "v2 stray bytes", in: v2(t, "21 11 000e", "01020304 05060708", "0001 0002", "0200"), err: "2 stray bytes"},

		{name: "http", in: []byte("GET / HTTP/1.1\r\n"), err: "no PROXY protocol header"},
		{name: "tls", in: []byte{0x16, 0x03, 0x01, 0x02, 0x00}, err: "no PROXY protocol header"},
		{name: "v2 signature broken", in: []byte("\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c"), err: "no PROXY protocol header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := Parse(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Parse = %+v, %d, %v; want an error containing %q", h, n, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if h != tt.want || n != tt.size {
				t.Fatalf("Parse = %+v, %d; want %+v, %d", h, n, tt.want, tt.size)
			}
			// Every proper prefix is incomplete, never an error: a header
			// that arrives in pieces must not be refused half way.
			for i := range n {
				if _, _, err := Parse(tt.in[:i]); !errors.Is(err, ErrIncomplete) {
					t.Fatalf("Parse of the first %d bytes: %v, want ErrIncomplete", i, err)
				}
			}
		})
	}
}

func TestAppend(t *testing.T) {
	tests := []struct {
		name string
		h    Header
		want []byte
	}{
		{"v1 tcp4", Header{Version: 1, Source: ap("192.168.0.1:56324"), Destination: ap("192.168.0.11:443")},
			[]byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")},
		{"v1 tcp6", Header{Version: 1, Source: ap("[2001:db8::1]:1"), Destination: ap("[::1]:65535")},
			[]byte("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")},
		{"v1 mixed families map ipv4", Header{Version: 1, Source: ap("10.0.0.1:5"), Destination: ap("[2001:db8::1]:6")},
			[]byte("PROXY TCP6 ::ffff:10.0.0.1 2001:db8::1 5 6\r\n")},
		{"v1 both mapped is tcp4", Header{Version: 1, Source: ap("[::ffff:10.0.0.1]:5"), Destination: ap("[::ffff:10.0.0.2]:6")},
			[]byte("PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n")},
		{"v1 zone dropped", Header{Version: 1, Source: ap("[fe80::1%eth0]:5"), Destination: ap("[fe80::2%eth0]:6")},
			[]byte("PROXY TCP6 fe80::1 fe80::2 5 6\r\n")},
		{"v1 unknown", Header{Version: 1}, []byte("PROXY UNKNOWN\r\n")},
		{"v1 local", Header{Version: 1, Local: true, Source: ap("1.2.3.4:1"), Destination: ap("1.2.3.4:2")}, []byte("PROXY UNKNOWN\r\n")},
		{"v2 tcp4", Header{Version: 2, Source: ap("192.168.0.1:56324"), Destination: ap("192.168.0.11:443")},
			v2(t, "21 11 000c", "c0a80001 c0a8000b", "dc04 01bb")},
		{"v2 tcp6", Header{Version: 2, Source: ap("[2001:db8::1]:1"), Destination: ap("[::1]:65535")},
			v2(t, "21 21 0024", "20010db8000000000000000000000001", "00000000000000000000000000000001", "0001 ffff")},
		{"v2 mixed", Header{Version: 2, Source: ap("10.0.0.1:1"), Destination: ap("[::1]:2")},
			v2(t, "21 21 0024", "00000000000000000000ffff0a000001", "00000000000000000000000000000001", "0001 0002")},
		{"v2 unknown", Header{Version: 2}, v2(t, "21 00 0000")},
		{"v2 half known", Header{Version: 2, Source: ap("10.0.0.1:1")}, v2(t, "21 00 0000")},
		{"v2 local", Header{Version: 2, Local: true}, v2(t, "20 00 0000")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.h.Append([]byte("x"))
			if !bytes.Equal(got[1:], tt.want) || got[0] != 'x' {
				t.Fatalf("Append = %q, want %q after the existing bytes", got, tt.want)
			}
			if _, n, err := Parse(got[1:]); err != nil || n != len(tt.want) {
				t.Fatalf("what Append wrote does not parse: %d, %v", n, err)
			}
		})
	}
}

// TestAppendFitsPeek: every header Append can write is at most MaxV1Len
// (v1) or fits the first peek (v2).
func TestAppendFits(t *testing.T) {
	h := Header{Source: ap("[" + ffff6 + "]:65535"), Destination: ap("[" + ffff6 + "]:65535")}
	h.Version = 1
	if n := len(h.Append(nil)); n > MaxV1Len {
		t.Errorf("v1: %d bytes", n)
	}
	h.Version = 2
	if n := len(h.Append(nil)); n > peekSize {
		t.Errorf("v2: %d bytes", n)
	}
}
