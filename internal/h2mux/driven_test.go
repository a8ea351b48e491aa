package h2mux

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/attache/attache/internal/testenv"
)

// wouldBlock is what a non-blocking Read says when it has nothing, as an
// event loop's link socket does: EAGAIN, a temporary net.Error.
type wouldBlock struct{}

func (wouldBlock) Error() string        { return "read would block" }
func (wouldBlock) Is(target error) bool { return target == syscall.EAGAIN }
func (wouldBlock) Timeout() bool        { return false }
func (wouldBlock) Temporary() bool      { return true }

// choppedConn is a connection read as an event loop reads its socket, once
// drive switched it: Read never waits, says EAGAIN when nothing came, and
// returns what came in pieces of 1 to maxPiece bytes, so that the parser
// stops anywhere in a frame. ready hears whenever bytes come (an edge, as
// from epoll).
type choppedConn struct {
	net.Conn
	driven   bool
	maxPiece int
	mu       sync.Mutex
	buf      []byte
	err      error // the connection's read error, after its bytes
	rng      *rand.Rand
	ready    chan struct{}
	stopping bool          // undrive: fill's timeout is not the connection's error
	filled   chan struct{} // closed when fill returns
}

func newChoppedConn(c net.Conn, seed uint64, maxPiece int) *choppedConn {
	return &choppedConn{Conn: c, maxPiece: maxPiece, rng: rand.New(rand.NewPCG(seed, 7)),
		ready: make(chan struct{}, 1), filled: make(chan struct{})}
}

func (c *choppedConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.driven {
		if len(c.buf) == 0 {
			// Not under mu: a read that waits holds no lock.
			c.mu.Unlock()
			defer c.mu.Lock()
			return c.Conn.Read(b)
		}
		n := copy(b, c.buf) // what fill read before undrive
		c.buf = c.buf[n:]
		return n, nil
	}
	if len(c.buf) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		return 0, wouldBlock{}
	}
	n := min(len(b), len(c.buf), 1+c.rng.IntN(c.maxPiece))
	copy(b, c.buf[:n])
	c.buf = c.buf[n:]
	return n, nil
}

// fill reads the connection into buf until it fails, or undrive stops it.
func (c *choppedConn) fill() {
	defer close(c.filled)
	b := make([]byte, 16<<10)
	for {
		n, err := c.Conn.Read(b)
		c.mu.Lock()
		c.buf = append(c.buf, b[:n]...)
		if c.stopping && errors.Is(err, os.ErrDeadlineExceeded) {
			c.mu.Unlock()
			return
		}
		if err != nil {
			c.err = err
		}
		c.mu.Unlock()
		select {
		case c.ready <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// undrive switches c back to reads that wait, after what fill read.
func (c *choppedConn) undrive() {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(time.Now())
	<-c.filled
	_ = c.Conn.SetReadDeadline(time.Time{})
	c.mu.Lock()
	c.driven = false
	c.mu.Unlock()
}

// drive switches c to reads that never wait and reads s, started with
// DrivenReads, whenever bytes came, as an event loop does: ReadReady
// until it has no more. detach stops the driver and has the session read
// on its own goroutine, as a stopping loop does.
func drive(s *Session, c *choppedConn) (detach func()) {
	c.mu.Lock()
	c.driven = true
	c.mu.Unlock()
	go c.fill()
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			for {
				more, err := s.ReadReady()
				if err != nil {
					return
				}
				if !more {
					break
				}
			}
			select {
			case <-c.ready:
			case <-s.Done():
				return
			case <-stop:
				return
			}
		}
	}()
	return func() {
		close(stop)
		<-exited
		c.undrive()
		s.ReadOnGoroutine()
	}
}

// TestDetachedSessionReadsOnItsOwn switches a driven server session to
// its own reader goroutine while a stream sends to it, wherever in a frame
// the driver stopped: every byte arrives, in order, and the stream still
// answers.
func TestDetachedSessionReadsOnItsOwn(t *testing.T) {
	for seed := range uint64(4) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		type res struct {
			s      *Session
			detach func()
			err    error
		}
		ch := make(chan res, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				ch <- res{err: err}
				return
			}
			cc := newChoppedConn(c, seed, 7)
			s, err := Server(cc, Config{KeepAlive: -1, DrivenReads: true})
			if err != nil {
				ch <- res{err: err}
				return
			}
			ch <- res{s: s, detach: drive(s, cc)}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs, err := Client(c, Config{KeepAlive: -1})
		if err != nil {
			t.Fatal(err)
		}
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		ss := r.s
		want := make([]byte, 1<<20)
		_, _ = rand.NewChaCha8([32]byte{byte(seed)}).Read(want)
		cst, err := cs.Open("svc")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for b := want; len(b) > 0; b = b[min(len(b), 1000):] {
				if _, err := cst.Write(b[:min(len(b), 1000)]); err != nil {
					return
				}
			}
			_ = cst.CloseWrite()
		}()
		sst, err := ss.Accept()
		if err != nil {
			t.Fatal(err)
		}
		_ = sst.SetDeadline(time.Now().Add(20 * time.Second))
		got := make([]byte, len(want))
		half := len(want)/3 + int(seed)*1111
		if _, err := io.ReadFull(sst, got[:half]); err != nil {
			t.Fatal(err)
		}
		r.detach()
		if _, err := io.ReadFull(sst, got[half:]); err != nil {
			t.Fatalf("seed %d: after the switch: %v", seed, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("seed %d: byte %d differs", seed, testenv.FirstDiff(got, want))
		}
		if _, err := sst.Write([]byte("done")); err != nil {
			t.Fatal(err)
		}
		_ = sst.Close()
		_ = cst.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(cst); err != nil || string(b) != "done" {
			t.Fatalf("seed %d: the client read %q, %v", seed, b, err)
		}
		cs.Close()
		ss.Close()
	}
}

// TestDrivenReads runs the sessions' tests with both ends read by a driver
// through reads that stop anywhere in a frame.
func TestDrivenReads(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"HalfCloseEachWay", TestHalfCloseEachWay},
		{"BulkBothWays", TestBulkBothWays},
		{"StalledReaderDoesNotStarveOthers", TestStalledReaderDoesNotStarveOthers},
		{"ResetReachesPeer", TestResetReachesPeer},
		{"RefusalDropsEarlyBytes", TestRefusalDropsEarlyBytes},
		{"GoAwayKeepsOpenStreams", TestGoAwayKeepsOpenStreams},
		{"StreamOpenedDuringGoAwayIsRefused", TestStreamOpenedDuringGoAwayIsRefused},
		{"DeadConnectionFailsStreams", TestDeadConnectionFailsStreams},
		{"Deadlines", TestDeadlines},
		{"CloseReadDropsAndKeepsPeerWriting", TestCloseReadDropsAndKeepsPeerWriting},
		{"CloseWithUnreadBytesResets", TestCloseWithUnreadBytesResets},
		{"StreamIdentifiersRunOut", TestStreamIdentifiersRunOut},
		{"TryReadNotifies", TestTryReadNotifies},
		{"TryWriteNotifies", TestTryWriteNotifies},
		{"TryReadSeesReset", TestTryReadSeesReset},
		{"FullBacklogRefusesWithoutGoingAway", TestFullBacklogRefusesWithoutGoingAway},
		{"TryWriteToHandsOverInPlace", TestTryWriteToHandsOverInPlace},
		{"TryReadFromFillsTheBatch", TestTryReadFromFillsTheBatch},
		{"IdleSessionLetsBulkBuffersGo", TestIdleSessionLetsBulkBuffersGo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pairDriven = true
			defer func() { pairDriven = false }()
			tc.f(t)
		})
	}
}

// TestDrivenHeaderBlockInPieces sends header blocks split over
// CONTINUATION frames (this package never does, a peer may) and DATA
// frames with padding, one byte per read: each stream opens with its
// authority and delivers its bytes, and a frame between a HEADERS and its
// CONTINUATION ends the session.
func TestDrivenHeaderBlockInPieces(t *testing.T) {
	for _, piece := range []int{1, 3, 1 << 20} {
		ss, peer, fr := rawServer(t, uint64(piece), piece)
		hdr := connectHeaders("a-rather-long-service-name")
		for id := uint32(1); id <= 9; id += 2 {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hdr[:3]})
			_ = fr.WriteContinuation(id, false, hdr[3:7])
			_ = fr.WriteContinuation(id, true, hdr[7:])
			_ = fr.WriteDataPadded(id, true, []byte{byte(id), 'x', 'y'}, make([]byte, int(id)))
		}
		for id := uint32(1); id <= 9; id += 2 {
			st, err := ss.Accept()
			if err != nil {
				t.Fatal(err)
			}
			if st.ID() != id || st.Authority() != "a-rather-long-service-name" {
				t.Fatalf("piece %d: stream %d to %q, want %d to the service", piece, st.ID(), st.Authority(), id)
			}
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, []byte{byte(id), 'x', 'y'}) {
				t.Fatalf("piece %d: stream %d read %q, %v", piece, id, got, err)
			}
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 11, BlockFragment: hdr[:3]})
		_ = fr.WritePing(false, [8]byte{})
		select {
		case <-ss.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("piece %d: a PING inside a header block did not end the session", piece)
		}
		if err := ss.Err(); err == nil || !strings.Contains(err.Error(), "CONTINUATION was due") {
			t.Fatalf("piece %d: session ended with %v, want the PING named where a CONTINUATION was due", piece, err)
		}
		peer.Close()
	}
}

// rawServer is a driven server session whose peer is a bare framer: the
// test writes the client's frames itself.
func rawServer(t *testing.T, seed uint64, piece int) (*Session, net.Conn, *http2.Framer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(peer, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	cc := newChoppedConn(c, seed, piece)
	s, err := Server(cc, Config{KeepAlive: -1, DrivenReads: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	drive(s, cc)
	return s, peer, fr
}
