package proxyproto

import (
	"errors"
	"net/netip"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the header parser; its seed corpus of
// valid, truncated and malformed headers is in testdata/fuzz/FuzzParse/.
// Run it for real with
//
//	go test -run='^$' -fuzz=FuzzParse -fuzztime=60s ./internal/proxyproto
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		h, n, err := Parse(data)
		switch {
		case errors.Is(err, ErrIncomplete):
			// Never asks for more than a header can be.
			if len(data) >= MaxV2Len {
				t.Fatalf("incomplete after %d bytes", len(data))
			}
			if len(data) >= MaxV1Len && data[0] == 'P' {
				t.Fatalf("v1 incomplete after %d bytes", len(data))
			}
			return
		case err != nil:
			if n != 0 || h != (Header{}) {
				t.Fatalf("error %v with a header %+v of %d bytes", err, h, n)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("header length %d of %d bytes", n, len(data))
		}
		switch h.Version {
		case 1:
			if n > MaxV1Len || h.Local {
				t.Fatalf("v1 header of %d bytes, local %v", n, h.Local)
			}
		case 2:
			if n > MaxV2Len || n < v2Fixed {
				t.Fatalf("v2 header of %d bytes", n)
			}
		default:
			t.Fatalf("version %d", h.Version)
		}
		if h.Source.IsValid() != h.Destination.IsValid() || h.Local && h.HasAddrs() {
			t.Fatalf("half an address, or a LOCAL header with addresses: %+v", h)
		}
		// The header alone parses the same; what follows is not its business.
		if h2, n2, err := Parse(data[:n]); err != nil || h2 != h || n2 != n {
			t.Fatalf("the header alone: %+v, %d, %v; with the rest: %+v, %d", h2, n2, err, h, n)
		}
		// A proper prefix asks for more rather than failing: a header
		// arriving in pieces must not be refused half way.
		for _, i := range []int{0, 1, n / 2, n - 1} {
			if _, _, err := Parse(data[:i]); !errors.Is(err, ErrIncomplete) {
				t.Fatalf("the first %d of %d header bytes: %v, want ErrIncomplete", i, n, err)
			}
		}
		// What Append writes for the header reads back the same, up to
		// what the encodings cannot tell apart.
		out := h.Append(nil)
		h3, n3, err := Parse(out)
		if err != nil || n3 != len(out) || normal(h3) != normal(h) {
			t.Fatalf("round trip of %+v: wrote %q, read %+v, %d, %v", h, out, h3, n3, err)
		}
	})
}

// normal drops the differences Append makes on purpose: a v1 header cannot
// say LOCAL, and an IPv4-mapped pair is written as IPv4.
func normal(h Header) Header {
	if h.Version == 1 && h.Local {
		h.Local = false
	}
	unmap := func(a netip.AddrPort) netip.AddrPort {
		if !a.IsValid() {
			return a
		}
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	if h.Source.Addr().Unmap().Is4() == h.Destination.Addr().Unmap().Is4() {
		h.Source, h.Destination = unmap(h.Source), unmap(h.Destination)
	}
	return h
}
