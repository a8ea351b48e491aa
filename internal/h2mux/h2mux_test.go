package h2mux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/attache/attache/internal/testenv"
)

// pairDriven has pair's sessions read by a driver, through reads that
// never wait and stop anywhere in a frame (TestDrivenReads).
var pairDriven bool

// pair returns a client and a server session over a real TCP connection on
// the loopback.
func pair(t *testing.T, cfg Config) (*Session, *Session) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		s   *Session
		err error
	}
	driven := pairDriven
	cfg.DrivenReads = driven
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		cc := newChoppedConn(c, 1, 5000)
		if driven {
			c = cc
		}
		s, err := Server(c, cfg)
		if err == nil && driven {
			drive(s, cc)
		}
		ch <- res{s, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := newChoppedConn(c, 2, 5000)
	if driven {
		c = cc
	}
	cs, err := Client(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if driven {
		drive(cs, cc)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { cs.Close(); r.s.Close() })
	return cs, r.s
}

// open opens a stream to authority and returns both ends, answered 200.
func open(t *testing.T, cs, ss *Session, authority string) (*Stream, *Stream) {
	t.Helper()
	c, err := cs.Open(authority)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if s.Authority() != authority {
		t.Fatalf("accepted a stream to %q, want %q", s.Authority(), authority)
	}
	if err := s.Respond(200); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if code, err := c.Response(ctx); err != nil || code != 200 {
		t.Fatalf("response %d, %v; want 200", code, err)
	}
	return c, s
}

func TestHalfCloseEachWay(t *testing.T) {
	cs, ss := pair(t, Config{})
	for _, clientFirst := range []bool{true, false} {
		c, s := open(t, cs, ss, "redis")
		first, second := c, s
		if !clientFirst {
			first, second = s, c
		}
		if _, err := first.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := first.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(second)
		if err != nil || string(got) != "request" {
			t.Fatalf("read %q, %v; want the request then EOF", got, err)
		}
		// The side that read EOF still writes, and the other reads it.
		if _, err := second.Write([]byte("answer")); err != nil {
			t.Fatal(err)
		}
		second.CloseWrite()
		got, err = io.ReadAll(first)
		if err != nil || string(got) != "answer" {
			t.Fatalf("read %q, %v; want the answer then EOF", got, err)
		}
		if _, err := first.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write after CloseWrite: %v, want EPIPE", err)
		}
		c.Close()
		s.Close()
	}
	waitFor(t, func() bool { return cs.NumStreams() == 0 && ss.NumStreams() == 0 }, "streams forgotten once both sides ended")
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBulkBothWays moves random bytes both ways on several streams at once,
// in writes and reads of random sizes, and checks every byte.
func TestBulkBothWays(t *testing.T) {
	cs, ss := pair(t, Config{Window: 64 << 10})
	const streams, size = 6, 8 << 20
	var wg sync.WaitGroup
	errs := make(chan error, 4*streams)
	for i := range streams {
		c, s := open(t, cs, ss, "bulk")
		for _, d := range [][2]*Stream{{c, s}, {s, c}} {
			src, dst := d[0], d[1]
			seed := uint64(i)
			sums := make(chan []byte, 1)
			wg.Go(func() { errs <- checkSum(dst, sums, size) })
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, 1))
				h := sha256.New()
				buf := make([]byte, 100<<10)
				left := size
				for left > 0 {
					n := min(left, 1+r.IntN(len(buf)))
					for j := range buf[:n] {
						buf[j] = byte(r.Uint32())
					}
					h.Write(buf[:n])
					if _, err := src.Write(buf[:n]); err != nil {
						errs <- err
						return
					}
					left -= n
				}
				src.CloseWrite()
				sums <- h.Sum(nil)
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// checkSum reads r to its end and checks it against the sum the writer
// sends on want once done.
func checkSum(r io.Reader, want <-chan []byte, size int) error {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 7000))
	if err != nil {
		return err
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), <-want) {
		return errors.New("bytes differ from what was sent")
	}
	return nil
}

// TestStalledReaderDoesNotStarveOthers fills one stream whose reader never
// reads, then checks that other streams on the same session still carry
// requests and answers: the stalled one is held to its window.
func TestStalledReaderDoesNotStarveOthers(t *testing.T) {
	cs, ss := pair(t, Config{Window: 256 << 10})
	bulkC, _ := open(t, cs, ss, "bulk")
	wrote := make(chan int64, 1)
	go func() {
		buf := make([]byte, 64<<10)
		var n int64
		for {
			m, err := bulkC.Write(buf)
			n += int64(m)
			if err != nil {
				wrote <- n
				return
			}
		}
	}()
	for i := range 20 {
		c, s := open(t, cs, ss, "interactive")
		go func() {
			b := make([]byte, 64)
			n, _ := s.Read(b)
			s.Write(b[:n])
			s.CloseWrite()
		}()
		msg := []byte{byte(i), 'p', 'i', 'n', 'g'}
		c.Write(msg)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("interactive stream %d beside a stalled one: %q, %v", i, got, err)
		}
		c.Close()
	}
	// The bulk writer used up its window and waits: end its write.
	waitFor(t, func() bool { bulkC.mu.Lock(); defer bulkC.mu.Unlock(); return bulkC.sendWin == 0 }, "the stalled stream's window used up")
	_ = bulkC.SetWriteDeadline(time.Now())
	n := <-wrote
	if n != 256<<10 {
		t.Fatalf("the stalled stream took %d bytes, want exactly its window (%d)", n, 256<<10)
	}
}

func TestResetReachesPeer(t *testing.T) {
	cs, ss := pair(t, Config{})
	for _, clientResets := range []bool{true, false} {
		c, s := open(t, cs, ss, "svc")
		resetter, peer := c, s
		if !clientResets {
			resetter, peer = s, c
		}
		if _, err := resetter.Write([]byte("partial")); err != nil {
			t.Fatal(err)
		}
		resetter.Reset()
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(peer)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer of a reset stream read %v, want ECONNRESET", err)
		}
		if _, err := peer.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer of a reset stream wrote: %v, want ECONNRESET", err)
		}
		if _, err := resetter.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Reset: %v, want net.ErrClosed", err)
		}
	}
}

func TestRefusalDropsEarlyBytes(t *testing.T) {
	cs, ss := pair(t, Config{})
	c, err := cs.Open("nothing-here")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("early bytes")); err != nil {
		t.Fatal(err)
	}
	s, err := ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Respond(404); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if code, err := c.Response(ctx); code != 404 || err != nil {
		t.Fatalf("response %d, %v; want 404", code, err)
	}
	if _, err := s.Read(make([]byte, 10)); err == nil {
		t.Fatal("a refused stream's bytes were readable on the server")
	}
	waitFor(t, func() bool { return ss.NumStreams() == 0 }, "the refused stream forgotten by the server")
}

func TestGoAwayKeepsOpenStreams(t *testing.T) {
	cs, ss := pair(t, Config{})
	c, s := open(t, cs, ss, "svc")
	ss.GoAway()
	waitFor(t, cs.GoneAway, "the client heard GOAWAY")
	if _, err := cs.Open("svc"); !errors.Is(err, ErrGoingAway) {
		t.Fatalf("open after GOAWAY: %v, want ErrGoingAway", err)
	}
	// The stream opened before goes on, both ways.
	go func() { io.Copy(s, s); s.CloseWrite() }()
	c.Write([]byte("still here"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "still here" {
		t.Fatalf("stream opened before GOAWAY: %q, %v", got, err)
	}
}

func TestStreamOpenedDuringGoAwayIsRefused(t *testing.T) {
	cs, ss := pair(t, Config{})
	ss.GoAway()
	// Opened before the client heard: the server refuses it.
	c, err := cs.Open("svc")
	if err != nil {
		if errors.Is(err, ErrGoingAway) {
			return // the GOAWAY came first: the open failed at once
		}
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.Response(ctx)
	if !errors.Is(err, ErrRefused) && !errors.Is(err, ErrGoingAway) {
		t.Fatalf("stream opened after GOAWAY: %v, want refused", err)
	}
}

func TestDeadConnectionFailsStreams(t *testing.T) {
	cs, ss := pair(t, Config{})
	c, s := open(t, cs, ss, "svc")
	go func() { s.Read(make([]byte, 1)) }()
	cs.conn.Close() // the connection dies under the session
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on a dead session: %v, want ECONNRESET", err)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(s); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read on a dead session: %v, want ECONNRESET", err)
	}
	<-ss.Done()
	if _, err := cs.Open("svc"); err == nil {
		t.Fatal("opened a stream on a dead session")
	}
}

func TestDeadlines(t *testing.T) {
	cs, ss := pair(t, Config{Window: 16 << 10})
	c, s := open(t, cs, ss, "svc")
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	// A write blocked on a full window ends at its deadline too.
	_ = c.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Write(make([]byte, 64<<10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past its deadline: %v", err)
	}
	// A deadline set while a read waits ends that read.
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = s.SetReadDeadline(time.Now())
	}()
	buf := make([]byte, 32<<10)
	for {
		_, err := s.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("server read: %v", err)
		}
	}
}

func TestCloseReadDropsAndKeepsPeerWriting(t *testing.T) {
	cs, ss := pair(t, Config{Window: 16 << 10})
	c, s := open(t, cs, ss, "svc")
	s.CloseRead()
	if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after CloseRead: %d, %v; want EOF", n, err)
	}
	// Far more than the window: dropped bytes give it back.
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(make([]byte, 1<<20)); err != nil {
		t.Fatalf("writing to a stream closed for reading: %v", err)
	}
}

func TestCloseWithUnreadBytesResets(t *testing.T) {
	cs, ss := pair(t, Config{})
	c, s := open(t, cs, ss, "svc")
	c.Write([]byte("never read"))
	waitFor(t, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.recv.len() > 0 }, "bytes arrive")
	s.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer of a stream closed with unread bytes: %v, want ECONNRESET", err)
	}
}

// TestKeepAliveEndsSilentPeer runs a server session against a peer that
// completes the preface and then says nothing, not even to pings.
func TestKeepAliveEndsSilentPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(http2.ClientPreface))
		fr := http2.NewFramer(c, c)
		fr.WriteSettings()
		io.Copy(io.Discard, c) // reads, never answers
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := Server(c, Config{KeepAlive: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a session whose peer never answers pings stayed open")
	}
	if !errors.Is(s.Err(), ErrSessionClosed) {
		t.Fatalf("session error %v", s.Err())
	}
}

func TestStreamIdentifiersRunOut(t *testing.T) {
	cs, ss := pair(t, Config{})
	cs.mu.Lock()
	cs.nextID = maxStreamID // the last one a client may use
	cs.mu.Unlock()
	c, s := open(t, cs, ss, "svc")
	if c.ID() != maxStreamID {
		t.Fatalf("stream id %d", c.ID())
	}
	if _, err := cs.Open("svc"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("open past the last identifier: %v, want ErrExhausted", err)
	}
	c.Write([]byte("ok"))
	c.CloseWrite()
	if got, err := io.ReadAll(s); err != nil || string(got) != "ok" {
		t.Fatalf("last stream: %q, %v", got, err)
	}
}

func TestBadPrefaceIsRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Server(c, Config{}); err == nil {
		t.Fatal("an HTTP/1.1 request was taken for a session")
	}
}

// notifier counts a stream's notify calls and lets a test wait for one.
type notifier struct{ c chan struct{} }

func newNotifier(st *Stream) *notifier {
	n := &notifier{c: make(chan struct{}, 100)}
	st.SetNotify(func() { n.c <- struct{}{} })
	return n
}

func (n *notifier) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-n.c:
	case <-time.After(5 * time.Second):
		t.Fatalf("no notify: %s", what)
	}
}

// TestTryReadNotifies drives a stream as an event loop does: TryRead until
// EAGAIN or a short read, then only after the notify.
func TestTryReadNotifies(t *testing.T) {
	cs, ss := pair(t, Config{})
	c, s := open(t, cs, ss, "svc")
	n := newNotifier(s)
	buf := make([]byte, 4)
	if _, err := s.TryRead(buf); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("TryRead of an empty stream: %v, want EAGAIN", err)
	}
	c.Write([]byte("abcdef"))
	n.wait(t, "bytes came after EAGAIN")
	if k, err := s.TryRead(buf); k != 4 || err != nil {
		t.Fatalf("TryRead: %d, %v", k, err)
	}
	// 2 bytes left: a short read empties the stream and arms the notify.
	if k, err := s.TryRead(buf); k != 2 || err != nil {
		t.Fatalf("TryRead: %d, %v", k, err)
	}
	c.Write([]byte("gh"))
	c.CloseWrite()
	n.wait(t, "bytes came after a short read")
	// The bytes and the end may both be there: the short read that
	// empties the stream notifies at once, for the read of the end.
	var got []byte
	for {
		k, err := s.TryRead(buf)
		got = append(got, buf[:k]...)
		if err == io.EOF {
			break
		}
		if errors.Is(err, syscall.EAGAIN) || k < len(buf) {
			n.wait(t, "the end after the last bytes")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if string(got) != "gh" {
		t.Fatalf("read %q after the notify, want gh", got)
	}
}

// TestTryWriteNotifies fills a stream's window with TryWrite, checks that
// the writer hears when the reader gives it back, and that the bytes
// arrive whole and in order.
func TestTryWriteNotifies(t *testing.T) {
	const window = 64 << 10
	cs, ss := pair(t, Config{Window: window})
	c, s := open(t, cs, ss, "svc")
	n := newNotifier(c)
	payload := make([]byte, 5*window+123)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(s); got <- b }()
	rest := payload
	stops := 0
	for len(rest) > 0 {
		k, err := c.TryWrite(rest)
		rest = rest[k:]
		if errors.Is(err, syscall.EAGAIN) {
			stops++
			n.wait(t, "room in the window")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("read %d bytes, differing from the %d written", len(b), len(payload))
	}
	if stops == 0 {
		t.Fatal("TryWrite never waited for a window five times its size")
	}
}

// TestTryReadSeesReset checks that a reset reaches a reader waiting for the
// notify.
func TestTryReadSeesReset(t *testing.T) {
	cs, ss := pair(t, Config{})
	c, s := open(t, cs, ss, "svc")
	n := newNotifier(s)
	if _, err := s.TryRead(make([]byte, 8)); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("TryRead: %v", err)
	}
	c.Reset()
	n.wait(t, "the reset")
	if _, err := s.TryRead(make([]byte, 8)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("TryRead after the peer's reset: %v, want ECONNRESET", err)
	}
}

func TestAppendDataMatchesFramer(t *testing.T) {
	for _, c := range []struct {
		id   uint32
		end  bool
		size int
	}{{1, false, 0}, {1, true, 0}, {3, false, 1}, {maxStreamID, true, maxFrame}, {1 << 24, false, 70000}} {
		payload := make([]byte, c.size)
		for i := range payload {
			payload[i] = byte(i)
		}
		var want bytes.Buffer
		fr := http2.NewFramer(&want, nil)
		if err := fr.WriteData(c.id, c.end, payload); err != nil {
			t.Fatal(err)
		}
		if got := appendData(nil, c.id, c.end, payload); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("appendData(%d, %v, %d bytes) differs from the framer's frame", c.id, c.end, c.size)
		}
	}
}

// TestFullBacklogRefusesWithoutGoingAway: streams beyond the accept backlog
// are refused (to be opened again), and the session stays in service.
func TestFullBacklogRefusesWithoutGoingAway(t *testing.T) {
	cs, ss := pair(t, Config{Backlog: 1})
	first, err := cs.Open("svc")
	if err != nil {
		t.Fatal(err)
	}
	second, err := cs.Open("svc")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := second.Response(ctx); !errors.Is(err, ErrRefused) {
		t.Fatalf("a stream beyond the backlog: %v, want ErrRefused", err)
	}
	if cs.GoneAway() {
		t.Fatal("a full backlog was taken for GOAWAY")
	}
	s, err := ss.Accept()
	if err != nil || s.ID() != first.ID() {
		t.Fatalf("accepted %v, %v; want the first stream", s, err)
	}
	s.Respond(200)
	if code, err := first.Response(ctx); code != 200 || err != nil {
		t.Fatalf("the first stream: %d, %v", code, err)
	}
}

// TestTryWriteToHandsOverInPlace drives a stream as an event loop writing
// to a socket that takes only part of what it is offered: the bytes the
// write takes are consumed, the rest is offered again, and every byte
// arrives once and in order through a window far smaller than the stream
// (so consumed bytes give the window back). The sender mixes full frames,
// which the stream keeps without a copy, with small writes, which it
// copies, so both ways of holding bytes are crossed.
func TestTryWriteToHandsOverInPlace(t *testing.T) {
	c, s, rng, want := smallWindowStream(t, 7)
	n := newNotifier(s)
	go func() {
		rng := rand.New(rand.NewPCG(9, 10)) // the sender's own
		b := want
		for len(b) > 0 {
			k := min(len(b), []int{1, 100, maxFrame, 3 * maxFrame, 5000}[rng.IntN(5)])
			if _, err := c.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
		}
		c.CloseWrite()
	}()
	var got []byte
	offered := 0
	take := func(bufs [][]byte) int {
		// A socket whose buffer takes some of what it is offered.
		total := 0
		for _, b := range bufs {
			total += len(b)
		}
		offered = total
		k := rng.IntN(total + 1)
		left := k
		for _, b := range bufs {
			m := min(left, len(b))
			got = append(got, b[:m]...)
			left -= m
		}
		return k
	}
	v := make([][]byte, 0, maxSlices)
	for {
		k, emptied, err := s.TryWriteTo(v, take)
		if err == io.EOF {
			break
		}
		switch {
		case errors.Is(err, syscall.EAGAIN):
			n.wait(t, "bytes after EAGAIN")
		case err != nil:
			t.Fatal(err)
		case emptied && k != offered:
			t.Fatalf("emptied after taking %d of the %d bytes offered", k, offered)
		case emptied:
			n.wait(t, "bytes after the stream was emptied")
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes, want %d (first difference at %d)", len(got), len(want), testenv.FirstDiff(got, want))
	}
}

// TestTryReadFromFillsTheBatch drives a stream as an event loop reading a
// socket does: each read gets room in the batch and fills some of it
// (sometimes none), through a window far smaller than what is sent, and
// every byte arrives once and in order.
func TestTryReadFromFillsTheBatch(t *testing.T) {
	c, s, rng, want := smallWindowStream(t, 11)
	n := newNotifier(c)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s)
		got <- b
	}()
	left := want
	for len(left) > 0 {
		k, err := c.TryReadFrom(func(room []byte) int {
			if len(room) == 0 || len(room) > maxFrame {
				t.Errorf("room for %d bytes, want 1 to %d", len(room), maxFrame)
			}
			m := min(rng.IntN(len(room)+1), len(left))
			copy(room, left[:m])
			return m
		})
		switch {
		case errors.Is(err, syscall.EAGAIN):
			n.wait(t, "room after EAGAIN")
		case err != nil:
			t.Fatal(err)
		}
		left = left[k:]
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("received %d bytes, want %d (first difference at %d)", len(b), len(want), testenv.FirstDiff(b, want))
	}
}

// smallWindowStream opens a stream whose window (128 KiB) is far smaller
// than the 3 MiB of random bytes it returns to send, with a random source
// seeded by seed for the test's own choices.
func smallWindowStream(t *testing.T, seed uint64) (c, s *Stream, rng *rand.Rand, want []byte) {
	cs, ss := pair(t, Config{Window: 128 << 10})
	c, s = open(t, cs, ss, "svc")
	rng = rand.New(rand.NewPCG(seed, seed+1))
	want = make([]byte, 3<<20)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	return c, s, rng, want
}

// TestIdleSessionLetsBulkBuffersGo: once a session that carried a bulk
// stream has written everything, it keeps no batch buffer larger than
// idleBatch after a keepalive period (a bulk stream grows them to about a
// megabyte each).
func TestIdleSessionLetsBulkBuffersGo(t *testing.T) {
	cs, ss := pair(t, Config{KeepAlive: 100 * time.Millisecond})
	c, s := open(t, cs, ss, "svc")
	cs.wmu.Lock()
	cs.batch = make([]byte, 0, batchLimit)
	cs.spare = make([]byte, 0, batchLimit)
	cs.wmu.Unlock()
	if _, err := c.Write([]byte("after a bulk stream")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("after a bulk stream"))
	if _, err := io.ReadFull(s, got); err != nil || string(got) != "after a bulk stream" {
		t.Fatalf("read %q, %v", got, err)
	}
	waitFor(t, func() bool {
		cs.wmu.Lock()
		defer cs.wmu.Unlock()
		return cap(cs.batch) <= idleBatch && cap(cs.spare) <= idleBatch
	}, "the idle session to let its bulk buffers go")
}
