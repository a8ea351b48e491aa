package h2mux

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// frames builds a client's bytes after the preface from frame writers.
func frames(write ...func(*http2.Framer)) []byte {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	for _, w := range write {
		w(fr)
	}
	return b.Bytes()
}

func connectHeaders(authority string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	_ = enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	return b.Bytes()
}

// FuzzServerFrames feeds a server session whatever frames a peer may send
// after a valid preface: it must neither panic nor hang, and it ends when
// the peer's connection does. Each accepted stream is served as the link
// server does: answered, read to its end, written to and closed.
func FuzzServerFrames(f *testing.F) {
	fuzzServerFrames(f, false)
}

// FuzzDrivenServerFrames is FuzzServerFrames with the session read as an
// event loop reads it (DrivenReads), through reads that stop anywhere in a
// frame: a piece of 1 to 16 bytes, as the input's length says.
func FuzzDrivenServerFrames(f *testing.F) {
	fuzzServerFrames(f, true)
}

func fuzzServerFrames(f *testing.F, driven bool) {
	hdr := connectHeaders("redis")
	f.Add(frames(
		func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr, EndHeaders: true})
		},
		func(fr *http2.Framer) { _ = fr.WriteData(1, false, []byte("PING\r\n")) },
		func(fr *http2.Framer) { _ = fr.WriteWindowUpdate(1, 1000) },
		func(fr *http2.Framer) { _ = fr.WriteData(1, true, nil) },
	))
	f.Add(frames(
		func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hdr, EndHeaders: true, EndStream: true})
		},
		func(fr *http2.Framer) { _ = fr.WriteRSTStream(3, http2.ErrCodeCancel) },
		func(fr *http2.Framer) { _ = fr.WritePing(false, [8]byte{1}) },
		func(fr *http2.Framer) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		},
		func(fr *http2.Framer) { _ = fr.WriteGoAway(0, http2.ErrCodeNo, nil) },
	))
	f.Add(frames(
		func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: hdr, EndHeaders: true})
		},
		func(fr *http2.Framer) { _ = fr.WriteData(7, false, make([]byte, 100)) },
	))
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00\x00garbage"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, input []byte) {
		peer, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			var b bytes.Buffer
			b.WriteString(http2.ClientPreface)
			_ = http2.NewFramer(&b, nil).WriteSettings()
			b.Write(input)
			_, _ = peer.Write(b.Bytes())
			_ = peer.(*net.TCPConn).CloseWrite()
		}()
		go func() { _, _ = io.Copy(io.Discard, peer) }()
		cc := newChoppedConn(conn, uint64(len(input)), 1+len(input)%16)
		if driven {
			conn = cc
		}
		s, err := Server(conn, Config{KeepAlive: -1, Timeout: 5 * time.Second, DrivenReads: driven})
		if err != nil {
			return // not even settings: refused at the start
		}
		if driven {
			drive(s, cc)
		}
		defer s.Close()
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() {
			for {
				st, err := s.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					_ = st.Respond(200)
					_ = st.SetDeadline(time.Now().Add(5 * time.Second))
					_, _ = io.Copy(io.Discard, st)
					_, _ = st.Write([]byte("+PONG\r\n"))
					_ = st.Close()
				})
			}
		})
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("a session whose peer's connection ended did not close")
		}
	})
}
