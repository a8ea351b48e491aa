package link

import (
	"context"
	"io"
	"net"
	"sync"
)

// DialHandler is a Handler that connects to the backend with dial and
// copies the stream both ways, propagating half-close, until both
// directions end or ctx is done. It blocks for the stream's life. The
// daemon does not use it (its handler hands streams to the proxy, with
// balancing, health and accounting); it serves tests and simple embeddings.
func DialHandler(dial func(ctx context.Context) (net.Conn, error)) Handler {
	return func(ctx context.Context, c net.Conn, ready func(error) error) {
		defer c.Close()
		b, err := dial(ctx)
		if err != nil {
			_ = ready(err)
			return
		}
		defer b.Close()
		if ready(nil) != nil {
			return
		}
		Join(ctx, c, b)
	}
}

// Join copies a to b and b to a until both directions end, propagating
// half-close (CloseWrite) from each side to the other, then closes both.
// ctx done closes both at once.
func Join(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		if _, err := io.Copy(dst, src); err != nil {
			a.Close()
			b.Close()
			return
		}
		closeWrite(dst)
	}
	wg.Go(func() { one(b, a) })
	one(a, b)
	wg.Wait()
	a.Close()
	b.Close()
}

// closeWrite half-closes c when it can (TCP, Unix, TLS), else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}
