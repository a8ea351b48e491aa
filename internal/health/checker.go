// Package health decides which backends may receive connections. Two
// mechanisms feed the same per-backend state (backend.Backend):
//
//   - active checks: a Monitor per service probes every backend with a
//     Checker (TCP connect, or send-and-expect), at most one probe in flight
//     per backend, and a Tracker turns results into a verdict with rise/fall
//     thresholds so one lost probe does not flap a backend;
//   - passive ejection: the proxy reports failed dials on the Backend, which
//     is then skipped for an exponential back-off (backend.Backoff).
//
// The Registry hands out Backends keyed by (service, address), so health and
// connection counts survive configuration reloads and discovery updates.
//
// Typical usage (the daemon's):
//
//	reg := health.NewRegistry(backend.Backoff{})
//	mon := health.NewMonitor("redis", health.Spec{Interval: 5 * time.Second},
//		health.SendExpect{Send: []byte("PING\r\n"), Expect: []byte("+PONG")}, logger)
//	wg.Go(func() { _ = mon.Run(ctx) })     // returns when ctx is done
//	set := reg.Resolve("redis", endpoints) // on every snapshot or reload
//	mon.Update(set)                        // then publish set in the routing table
//	…
//	if d := b.ReportFailure(time.Now()); d > 0 { // the proxy, on a failed dial
//		mon.CheckNow(b.Addr)
//	}
package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/attache/attache/internal/backend"
)

// Checker probes one backend; nil means healthy. Checkers hold no state (the
// rise/fall streaks live in Tracker), so one value may probe every backend of
// a service at once. Check returns when ctx is done at the latest: the
// Monitor bounds each probe with ctx's deadline.
type Checker interface {
	Check(ctx context.Context, addr string) error
}

// DialFunc opens a connection the way net.Dialer.DialContext does. It is the
// seam through which a check can go over an ambassador-to-ambassador mTLS
// link instead of plain TCP.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

var (
	_ Checker = TCP{}
	_ Checker = SendExpect{}
)

// dial uses d, or a plain net.Dialer when d is nil, and ties the connection
// to ctx: its deadline becomes the connection's, and cancelling ctx closes
// it, so a check never outlives its context even without a deadline.
func dial(ctx context.Context, d DialFunc, addr string) (net.Conn, func(), error) {
	if d == nil {
		d = (&net.Dialer{}).DialContext
	}
	network, address := backend.DialArgs(addr) // unix:///path is dialled as a Unix socket
	c, err := d(ctx, network, address)
	if err != nil {
		return nil, nil, fmt.Errorf("connect: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return c, func() { stop(); _ = c.Close() }, nil
}

// TCP is healthy when a TCP connection to the backend can be opened. It
// closes the connection at once and sends nothing.
type TCP struct {
	// Dial opens the connection; nil means a plain net.Dialer.
	Dial DialFunc
}

func (t TCP) Check(ctx context.Context, addr string) error {
	_, done, err := dial(ctx, t.Dial, addr)
	if err != nil {
		return err
	}
	done()
	return nil
}

// maxExpectRead bounds how much of a reply SendExpect reads looking for
// Expect, so a backend that streams data cannot keep a probe busy.
const maxExpectRead = 64 << 10

// quoteLimit is how much of a reply an error message quotes.
const quoteLimit = 64

// SendExpect connects, writes Send and reads until Expect appears in what
// the backend sent, for example Send "PING\r\n" and Expect "+PONG" for
// redis. An empty Send only reads (a banner, such as SMTP's "220"); an empty
// Expect only checks that Send could be written. The probe fails when the
// backend closes the connection, the deadline passes or 64 KiB were read
// before Expect showed up; the error quotes what was expected and what was
// received.
type SendExpect struct {
	Send   []byte
	Expect []byte
	// Dial opens the connection; nil means a plain net.Dialer.
	Dial DialFunc
}

func (s SendExpect) Check(ctx context.Context, addr string) error {
	c, done, err := dial(ctx, s.Dial, addr)
	if err != nil {
		return err
	}
	defer done()
	if len(s.Send) > 0 {
		if _, err := c.Write(s.Send); err != nil {
			return fmt.Errorf("send %s: %w", quote(s.Send), ctxErr(ctx, err))
		}
	}
	if len(s.Expect) == 0 {
		return nil
	}
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if bytes.Contains(got, s.Expect) {
			return nil
		}
		switch {
		case errors.Is(err, io.EOF):
			return fmt.Errorf("expected %s, got %s before the backend closed the connection", quote(s.Expect), quote(got))
		case err != nil:
			return fmt.Errorf("expected %s, got %s: %w", quote(s.Expect), quote(got), ctxErr(ctx, err))
		case len(got) >= maxExpectRead:
			return fmt.Errorf("expected %s within the first %d bytes, got %s", quote(s.Expect), maxExpectRead, quote(got))
		}
	}
}

// ctxErr names the check's own deadline or cancellation rather than the
// socket's "i/o timeout" when that is what ended the read or write.
func ctxErr(ctx context.Context, err error) error {
	cerr := ctx.Err()
	switch {
	case errors.Is(cerr, context.Canceled):
		return cerr
	case cerr != nil, errors.Is(err, os.ErrDeadlineExceeded):
		// The socket's deadline is ctx's, and may fire a moment before
		// ctx's own timer does.
		return fmt.Errorf("check timed out: %w", err)
	}
	return err
}

// quote renders b for an error message: Go-quoted so that control bytes such
// as "\r\n" are visible, and cut after quoteLimit bytes.
func quote(b []byte) string {
	if len(b) <= quoteLimit {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q… (%d bytes)", b[:quoteLimit], len(b))
}
