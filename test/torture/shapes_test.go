package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Shapes: what the two ends of a connection do, written once for both
// ends. An end is its socket, the payload it sends (out) and the one it
// receives (in). The rule that makes a stall visible: no end sends its
// FIN before it has received everything and the other end has received
// everything it sent (the session's got signals), so a proxy that stops
// moving bytes while the connection is open cannot be rescued by an EOF.
// Only the half-close shapes shut one direction early, on purpose, and
// check that the other keeps flowing; the reset shapes check that a reset
// ends the other side and is never passed on as a clean EOF that would
// hide lost bytes.

// session is one connection as both ends see it.
type session struct {
	plan *plan
	topo *topology
	ctx  context.Context // done when the connection is given up (stall)
	stop context.CancelFunc
	// got[d] is closed when direction d's receiver has every byte.
	got [2]chan struct{}
	// acked carries, for the reset shapes, how many of its bytes the
	// resetting end's kernel had seen acknowledged when it reset.
	acked chan int64

	stalled        atomic.Bool
	backendStarted atomic.Bool // the backend end has the header
	mu             sync.Mutex
	socks          []sock     // both ends' sockets, to expire on a stall
	ports          []int      // their ports on the proxies' side (client port, last hop's port), for ss
	backendErr     chan error // the backend end's outcome
	progress       [2]struct {
		out *outStream
		in  *inStream
	}
}

// end is one side of a session.
type end int

const (
	clientEnd end = iota
	backendEnd
)

func (e end) String() string {
	if e == clientEnd {
		return "client"
	}
	return "backend"
}

// sends is the direction an end sends.
func (e end) sends() direction {
	if e == clientEnd {
		return up
	}
	return down
}

func newSession(ctx context.Context, p *plan, topo *topology) *session {
	s := &session{plan: p, topo: topo, acked: make(chan int64, 1), backendErr: make(chan error, 1)}
	s.ctx, s.stop = context.WithCancel(ctx)
	s.got[up], s.got[down] = make(chan struct{}), make(chan struct{})
	return s
}

// attach records an end's socket; a socket that comes after a stall is
// expired at once.
func (s *session) attach(c sock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.socks = append(s.socks, c)
	// The client's own port, and the port the last proxy dialled from.
	for _, a := range []net.Addr{c.LocalAddr(), c.RemoteAddr()} {
		if a, ok := a.(*net.TCPAddr); ok && !slices.Contains(s.topo.ports, a.Port) && !slices.Contains(s.topo.env.backendPorts, a.Port) {
			s.ports = append(s.ports, a.Port)
		}
	}
	if s.stalled.Load() {
		_ = c.SetDeadline(time.Unix(1, 0))
	}
}

// expire makes every blocked read and write of the session fail.
func (s *session) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.socks {
		_ = c.SetDeadline(time.Unix(1, 0))
	}
	s.stop()
}

// wait waits for ch, or fails when the session is given up.
func (s *session) wait(ch <-chan struct{}, what string) error {
	select {
	case <-ch:
		return nil
	case <-s.ctx.Done():
		return fmt.Errorf("given up waiting for %s", what)
	}
}

// both runs f and g at once and returns the first error.
func both(f, g func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- g() }()
	err := f()
	if gerr := <-errc; err == nil {
		err = gerr
	}
	return err
}

// streams makes an end's out and in for its plan.
func (s *session) streams(e end, c sock) (*outStream, *inStream) {
	p := s.plan
	rng := p.rng(2 + uint64(e)) // each end its own, same in every run with this seed
	send, recv := p.upSend, p.downRecv
	sendP, recvP := newPayload(p.seed, p.id, up), newPayload(p.seed, p.id, down)
	outN, inN := p.up, p.down
	if e == backendEnd {
		send, recv = p.downSend, p.upRecv
		sendP, recvP = recvP, sendP
		outN, inN = inN, outN
	}
	if p.shape == shapeEcho {
		// The replies are the requests: both directions carry up.
		sendP, recvP = newPayload(p.seed, p.id, up), newPayload(p.seed, p.id, up)
	}
	out := newOutStream(c, send, sendP, outN, p.writeMax, rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64())))
	in := newInStream(s.ctx, c, recv, e.sends()^1, recvP, inN,
		rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64())), s.topo.env.pause(rng))
	s.mu.Lock()
	s.progress[e].out, s.progress[e].in = out, in
	s.mu.Unlock()
	return out, in
}

// run is what an end does once the header has gone (client) or come
// (backend).
func (s *session) run(e end, c sock) error {
	out, in := s.streams(e, c)
	defer out.close()
	mine, theirs := e.sends(), e.sends()^1
	switch s.plan.shape {
	case shapeUpload, shapeDownload, shapeBoth:
		err := both(
			func() error { return out.send(out.total) },
			func() error { return s.receive(in, in.v.want, theirs) })
		if err != nil {
			return err
		}
		return s.finish(e, c, in)
	case shapeEcho:
		req, _ := s.plan.messages()
		for _, n := range req {
			var err error
			if e == clientEnd {
				err = both(func() error { return out.send(n) }, func() error { return s.receive(in, n, theirs) })
			} else if err = s.receive(in, n, theirs); err == nil {
				err = out.send(n)
			}
			if err != nil {
				return err
			}
		}
		return s.finish(e, c, in)
	case shapePipeline:
		req, resp := s.plan.messages()
		var err error
		if e == clientEnd {
			err = both(func() error { return sendAll(out, req) }, func() error { return s.receiveAll(in, resp, theirs) })
		} else {
			for i := range req {
				if err = s.receive(in, req[i], theirs); err == nil {
					err = out.send(resp[i])
				}
				if err != nil {
					break
				}
			}
		}
		if err != nil {
			return err
		}
		return s.finish(e, c, in)
	case shapeHalfCloseClient, shapeHalfCloseServer:
		shutsFirst := (s.plan.shape == shapeHalfCloseClient) == (e == clientEnd)
		return s.halfClose(c, out, in, shutsFirst, mine, theirs)
	case shapeResetClient, shapeResetServer:
		if (s.plan.shape == shapeResetClient) == (e == clientEnd) {
			return s.reset(c, out, in)
		}
		return s.resetSeen(out, in)
	}
	return fmt.Errorf("unknown shape %v", s.plan.shape)
}

// receive reads n more bytes of direction d and signals when the whole
// direction has arrived.
func (s *session) receive(in *inStream, n int64, d direction) error {
	if err := in.recv(n); err != nil {
		return err
	}
	if in.v.done() {
		close(s.got[d])
	}
	return nil
}

func (s *session) receiveAll(in *inStream, sizes []int64, d direction) error {
	if len(sizes) == 0 {
		return s.receive(in, 0, d)
	}
	for _, n := range sizes {
		if err := s.receive(in, n, d); err != nil {
			return err
		}
	}
	return nil
}

func sendAll(out *outStream, sizes []int64) error {
	for _, n := range sizes {
		if err := out.send(n); err != nil {
			return err
		}
	}
	return nil
}

// finish ends a connection whose bytes have all been sent and received
// on this end: once the other end has everything too, the end chosen by
// the plan shuts its write half first, the other answers with its own
// after seeing the EOF, and each must see exactly one EOF.
func (s *session) finish(e end, c sock, in *inStream) error {
	if err := s.wait(s.got[e.sends()], fmt.Sprintf("the %s to receive everything", e^1)); err != nil {
		return err
	}
	first := s.plan.clientCloses == (e == clientEnd)
	if first {
		if err := c.CloseWrite(); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		return in.expectEOF()
	}
	if err := in.expectEOF(); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("shutdown after the peer's: %w", err)
	}
	return nil
}

// halfClose: the end that shuts first sends everything and shuts its
// write half at once, while it goes on receiving the other direction in
// full (held open until it has it all); the other end must see that FIN
// right after the last byte and keep sending.
func (s *session) halfClose(c sock, out *outStream, in *inStream, shutsFirst bool, mine, theirs direction) error {
	if shutsFirst {
		return both(
			func() error {
				if err := out.send(out.total); err != nil {
					return err
				}
				return c.CloseWrite()
			},
			func() error {
				if err := s.receive(in, in.v.want, theirs); err != nil {
					return err
				}
				return in.expectEOF()
			})
	}
	return both(
		func() error {
			if err := s.receive(in, in.v.want, theirs); err != nil {
				return err
			}
			return in.expectEOF()
		},
		func() error {
			if err := out.send(out.total); err != nil {
				return err
			}
			if err := s.wait(s.got[mine], "the peer to receive everything after its FIN"); err != nil {
				return err
			}
			return c.CloseWrite()
		})
}

// reset sends this end's bytes, gives the kernel a moment to have them
// acknowledged, and resets the connection (SO_LINGER 0 on TCP; on a Unix
// socket every written byte is in the peer's queue already, and a close
// is all there is). Meanwhile it reads what comes, checking it, until
// its own close ends the read.
func (s *session) reset(c sock, out *outStream, in *inStream) error {
	readDone := make(chan error, 1)
	go func() {
		_, err := in.readToEnd()
		var bad *corruption
		if errors.As(err, &bad) {
			readDone <- err
			return
		}
		readDone <- nil // the end of this read is our own reset
	}()
	err := out.send(out.total)
	acked := out.sent.Load()
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		queued := waitAcked(s.ctx, tc)
		acked -= int64(queued)
		_ = tc.SetLinger(0)
	}
	s.acked <- acked
	c.Close()
	if rerr := <-readDone; err == nil {
		err = rerr
	}
	return err
}

// waitAcked polls the socket's send queue (bytes not yet acknowledged)
// for a while, and returns what is still queued: a receiver that does
// not read keeps bytes in the send queue, and the reset then comes with
// bytes in flight, which is a case worth having too.
func waitAcked(ctx context.Context, c *net.TCPConn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	queued := 0
	for range 100 {
		_ = raw.Control(func(fd uintptr) {
			queued, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		})
		if err != nil || queued == 0 {
			break
		}
		sleep(ctx, 2*time.Millisecond)
	}
	return queued
}

// resetSeen is the other end of a reset: it must see its stream end, by
// an error or by an EOF, and an EOF only after every byte the resetting
// end's kernel had acknowledged, or on a socket the reset closed: a reset
// passed on as a clean FIN after fewer bytes hides a truncation. Its own sending must end too (the bytes
// go, or the write fails); none of it may hang.
func (s *session) resetSeen(out *outStream, in *inStream) error {
	return both(
		func() error {
			eof, err := in.readToEnd()
			if !eof {
				var bad *corruption
				if errors.As(err, &bad) || errors.Is(err, errDeadline) || s.ctx.Err() != nil {
					return err
				}
				return nil // ended by a reset: what a reset should look like
			}
			if in.closedAtEOF || s.topo.resetsAsFIN {
				// A reset whose error another call on the socket took
				// first (this end's own send: the kernel reports a
				// reset's ECONNRESET once, and every read after it is
				// an EOF). Lenient in one case: a FIN, then a reset
				// before this reader came to the EOF. Or a front
				// before attache turned the reset into a FIN.
				return nil
			}
			var acked int64
			select {
			case acked = <-s.acked:
				s.acked <- acked // the other reader of it, if any
			case <-s.ctx.Done():
				return errors.New("given up waiting for the reset's count")
			}
			if in.v.got < acked {
				return fmt.Errorf("%w: %s stream ended by a clean EOF after %d bytes, but the peer's kernel had %d acknowledged before it reset",
					errTruncated, in.d, in.v.got, acked)
			}
			return nil
		},
		func() error {
			err := out.send(out.total)
			if err != nil && (errors.Is(err, errDeadline) || s.ctx.Err() != nil) {
				return err
			}
			return nil // sent, or refused by the reset
		})
}

// errTruncated marks a reset delivered as a clean EOF before bytes the
// resetting end had sent.
var errTruncated = errors.New("reset delivered as a clean FIN")

// errDeadline is what a socket's read or write returns once the session
// expired it.
var errDeadline = os.ErrDeadlineExceeded
