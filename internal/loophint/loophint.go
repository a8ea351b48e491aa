// Package loophint carries which event loop a connection is on between the
// proxy, which runs the loops, and the link client and server, which run
// the multiplexed sessions whose reads those loops may take over. A stream
// whose session is read on the loop that also carries the stream's other
// side gets its bytes in the turn that read them, with no hand-off between
// goroutines; the hint is how both ends find that loop. It is only a
// preference: any loop, or none, still works. Reader is how the link hands
// a session's reads to the loops, and BeginWrite/Writing how its writes
// tell the loops when not to hold their P in a raw wait.
package loophint

import (
	"context"
	"sync/atomic"
)

type key struct{}

// With returns ctx carrying loop, the index of the event loop that will
// carry the connection being dialled.
func With(ctx context.Context, loop int) context.Context {
	return context.WithValue(ctx, key{}, loop)
}

// From returns the loop ctx carries, if any.
func From(ctx context.Context) (int, bool) {
	loop, ok := ctx.Value(key{}).(int)
	return loop, ok && loop >= 0
}

// Reader runs the reads of multiplexed sessions on event loops instead of
// a goroutine per session (the proxy's loops implement it).
type Reader interface {
	// ReadSession has a loop call read whenever the socket fd may have
	// bytes (and once at the start), one call at a time, again at once
	// while read reports more, and no more once read fails or done is
	// closed. Should the loop stop first, it calls detach instead, after
	// which the session reads on its own. It returns the loop's index, or
	// false when no loop took the session (it then reads on its own).
	ReadSession(fd int, read func() (more bool, err error), detach func(), done <-chan struct{}) (loop int, ok bool)
}

// writes counts the link sessions' writes in progress (BeginWrite).
var writes atomic.Int64

// BeginWrite and EndWrite bracket a link session's write to its socket. A
// write that waits for the peer waits in Go's poller, and only a P that
// looks for work polls the network: while any write is in progress, an
// event loop gives its P back when it waits (Writing) instead of holding it
// in a raw epoll_wait, so that the write's wake-up is not left to the
// runtime's sysmon (up to 10 ms).
func BeginWrite() { writes.Add(1) }

// EndWrite ends what BeginWrite began.
func EndWrite() { writes.Add(-1) }

// Writing reports whether a link session's write is in progress.
func Writing() bool { return writes.Load() > 0 }
