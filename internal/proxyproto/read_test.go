package proxyproto

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// deadlineFor bounds a blocking step so a bug fails the test instead of
// hanging it; it is not a performance threshold.
const deadlineFor = 20 * time.Second

// pair returns both ends of a real connection over network ("tcp4",
// "tcp6" or "unix").
func pair(t *testing.T, network string) (client, server net.Conn) {
	t.Helper()
	addr := map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network]
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	_ = server.SetDeadline(time.Now().Add(deadlineFor))
	return client, server
}

// rest reads what the server end still holds after the client closed.
func rest(t *testing.T, client, server net.Conn) []byte {
	t.Helper()
	closeWrite(t, client)
	b, err := io.ReadAll(server)
	if err != nil {
		t.Fatalf("reading the payload: %v", err)
	}
	return b
}

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// TestReadLeavesPayload: the header and the first application bytes arrive
// in one segment; Read takes the header only.
func TestReadLeavesPayload(t *testing.T) {
	src, dst := ap("192.0.2.7:40000"), ap("198.51.100.1:6379")
	for _, network := range []string{"tcp4", "tcp6", "unix"} {
		for _, version := range []int{1, 2} {
			t.Run(network+"/v"+string(rune('0'+version)), func(t *testing.T) {
				client, server := pair(t, network)
				want := Header{Version: version, Source: src, Destination: dst}
				payload := []byte("PING\r\n" + strings.Repeat("x", 5000))
				if _, err := client.Write(append(want.Append(nil), payload...)); err != nil {
					t.Fatal(err)
				}
				h, err := Read(server)
				if err != nil || h != want {
					t.Fatalf("Read = %+v, %v; want %+v", h, err, want)
				}
				if got := rest(t, client, server); !bytes.Equal(got, payload) {
					t.Fatalf("after the header: %d bytes %.20q…, want the %d-byte payload", len(got), got, len(payload))
				}
			})
		}
	}
}

// TestReadInPieces: a header split over several segments is waited for,
// piece by piece, and not refused half way.
func TestReadInPieces(t *testing.T) {
	for _, hdr := range [][]byte{
		[]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n"),
		Header{Version: 2, Source: ap("[2001:db8::1]:1234"), Destination: ap("[2001:db8::2]:80")}.Append(nil),
	} {
		client, server := pair(t, "tcp4")
		client.(*net.TCPConn).SetNoDelay(true)
		type result struct {
			h   Header
			err error
		}
		done := make(chan result, 1)
		go func() {
			h, err := Read(server)
			done <- result{h, err}
		}()
		for i := range hdr {
			if _, err := client.Write(hdr[i : i+1]); err != nil {
				t.Fatal(err)
			}
			// Let each byte travel alone, so Read sees every prefix.
			time.Sleep(2 * time.Millisecond)
		}
		client.Write([]byte("after"))
		r := <-done
		if r.err != nil || r.h.Source != ap("[2001:db8::1]:1234") {
			t.Fatalf("Read = %+v, %v", r.h, r.err)
		}
		if got := rest(t, client, server); string(got) != "after" {
			t.Fatalf("after the header: %q", got)
		}
	}
}

// TestReadLongTLV: a v2 header longer than the first peek (a large TLV).
func TestReadLongTLV(t *testing.T) {
	client, server := pair(t, "tcp4")
	tlv := append([]byte{0xe0, 0x0b, 0xb8}, bytes.Repeat([]byte{'t'}, 3000)...)
	hdr := Header{Version: 2, Source: ap("10.1.2.3:4"), Destination: ap("10.1.2.4:5")}.Append(nil)
	hdr[14], hdr[15] = byte((12+len(tlv))>>8), byte(12+len(tlv))
	hdr = append(hdr, tlv...)
	if _, err := client.Write(append(hdr, "data"...)); err != nil {
		t.Fatal(err)
	}
	h, err := Read(server)
	if err != nil || h.Source != ap("10.1.2.3:4") {
		t.Fatalf("Read = %+v, %v", h, err)
	}
	if got := rest(t, client, server); string(got) != "data" {
		t.Fatalf("after the header: %q", got)
	}
}

// TestReadNoHeader: bytes that are not a header are left for the caller.
func TestReadNoHeader(t *testing.T) {
	client, server := pair(t, "tcp4")
	client.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	if _, err := Read(server); !errors.Is(err, ErrNoHeader) {
		t.Fatalf("Read: %v, want ErrNoHeader", err)
	}
	if got := rest(t, client, server); string(got) != "GET / HTTP/1.0\r\n\r\n" {
		t.Fatalf("after Read: %q, want the request untouched", got)
	}
}

func TestReadErrors(t *testing.T) {
	tests := []struct {
		name  string
		send  []byte
		close bool // half-close the client after sending
		want  string
		is    error
	}{
		{name: "closed mid header", send: []byte("PROXY TCP4 1.2.3.4 "), close: true,
			want: "closed the connection after 19 bytes of a header", is: io.ErrUnexpectedEOF},
		{name: "closed mid v2 header", send: Header{Version: 2, Source: ap("1.2.3.4:1"), Destination: ap("1.2.3.4:2")}.Append(nil)[:20], close: true,
			want: "after 20 bytes", is: io.ErrUnexpectedEOF},
		{name: "closed at once", close: true, want: "without sending anything", is: ErrNoHeader},
		{name: "malformed", send: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"), want: `port "99999"`},
		{name: "too long v2", send: append(bytes.Clone(v2Signature), 0x21, 0x11, 0x20, 0x00), want: "longer than the 4096 accepted"},
		{name: "silent", want: "nothing received: i/o timeout", is: os.ErrDeadlineExceeded},
		{name: "silent is no header", want: "no PROXY protocol header", is: ErrNoHeader},
		{name: "timeout mid header", send: []byte("PROXY "), want: "after 6 bytes: i/o timeout", is: os.ErrDeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := pair(t, "tcp4")
			if !tt.close && !strings.Contains(tt.name, "malformed") && !strings.Contains(tt.name, "too long") {
				server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			}
			if len(tt.send) > 0 {
				client.Write(tt.send)
			}
			if tt.close {
				closeWrite(t, client)
			}
			_, err := Read(server)
			if err == nil || !strings.Contains(err.Error(), tt.want) || tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("Read: %v; want an error containing %q (is %v)", err, tt.want, tt.is)
			}
		})
	}
}

func TestReadNotASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := Read(a); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Read(net.Pipe) = %v", err)
	}
}
