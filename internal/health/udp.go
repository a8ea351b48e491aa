package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

var _ Checker = UDP{}

// UDP probes a UDP backend: it sends Send as one datagram from a socket of
// its own and passes when a reply containing Expect comes back before the
// probe's deadline (any reply, when Expect is empty). UDP has no handshake,
// so there is no connect-only check: a backend is up when it answers. A
// closed port shows up as ECONNREFUSED (the kernel's ICMP port unreachable)
// and fails at once; a lost datagram fails the probe, which is what the
// rise/fall thresholds are for.
type UDP struct {
	Send   []byte
	Expect []byte
	// Resolver resolves a backend hostname; nil is the system resolver.
	Resolver *net.Resolver
}

func (u UDP) Check(ctx context.Context, addr string) error {
	d := net.Dialer{Resolver: u.Resolver}
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("open udp socket: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(u.Send); err != nil {
		return fmt.Errorf("send %s: %w", quote(u.Send), udpErr(ctx, err))
	}
	buf := make([]byte, maxExpectRead)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("expected a reply to %s: %w", quote(u.Send), udpErr(ctx, err))
	}
	if !bytes.Contains(buf[:n], u.Expect) {
		return fmt.Errorf("expected %s, got %s", quote(u.Expect), quote(buf[:n]))
	}
	return nil
}

// udpErr names a closed port plainly, and the probe's deadline as ctxErr
// does.
func udpErr(ctx context.Context, err error) error {
	if errors.Is(err, unix.ECONNREFUSED) {
		return errors.New("port closed (ICMP port unreachable)")
	}
	return ctxErr(ctx, err)
}
