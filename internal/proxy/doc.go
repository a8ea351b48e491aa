// Package proxy is attache's TCP data path: the accept loop, the dial to a
// backend within a retry budget, the copy in both directions with half-close,
// idle timeouts, the per-listener connection limit, and graceful drain.
//
// Typical usage:
//
//	p := &proxy.Proxy{Logger: log}
//	ln, _ := net.Listen("tcp", ":6379")
//	l := proxy.NewListener(ln, proxy.NewRoute("redis", "10.0.0.5:6379"), 0)
//	go p.Serve(ctx, l)
//	...
//	p.Shutdown(graceCtx) // stop accepting, drain, then force-close
//
// # Engines
//
// Plain TCP connections (a socket on each side) run on event loops by
// default (loop.go): a few goroutines, each around its own epoll instance,
// move the bytes of every connection they own with non-blocking calls, as
// HAProxy does. Connections with a TLS link, a Unix socket or a PROXY
// header on one side, and every connection when Proxy.Loops is negative
// (ATTACHE_LOOPS=-1), run on the goroutine engine: two goroutines per
// connection, parked in Go's poller (conn.go, copy.go). Both engines keep
// the same promises: every byte that goes in comes out, a direction moves
// whenever both of its ends are willing, an EOF crosses as a half-close,
// and a stream cut by an error or a peer's reset reaches the other peer as
// a reset, never as a clean end.
//
// # The event loop's rules
//
// A socket is registered edge-triggered for input (EPOLLIN,
// EPOLLPRI, EPOLLRDHUP) once, when the loop takes it; output (EPOLLOUT) is
// added with epoll_ctl only while a write is blocked or a connect is in
// progress (wantSend, stopSend), since watched all along, every ACK would
// wake the loop for nothing. An edge comes once per change, so the loop
// keeps per side what the edges said: readable (there may be bytes, an EOF
// or an error to read) and writable (it may take more bytes). A direction
// stalls for good if readable is cleared while bytes wait, since no new
// edge comes for bytes already there. Both flags and the output watch
// change only through the helpers in loopready.go (noteEvent, mayRecv,
// cantRecv, readShort, maySend, cantSend, wantSend, stopSend), named for
// the rule that allows each; an epoll_ctl that fails ends the connection
// with a reset and a log line (pair.epollFailed), never a wait for an
// edge that may not come. A connection's phase on the loop (waiting,
// dialing, moving, handed off, closed) is one field, changed only by
// pair.enter (loopphase.go). The rules, each relied on by a test
// (stall_test.go, the torture suite):
//
//  1. A read or splice that returns EAGAIN proves the socket empty and
//     clears readable (cantRecv): the next bytes bring an edge.
//  2. A short read(2) proves it too (TCP gives a read all it has queued,
//     up to the buffer's size), with two exceptions where the loop reads
//     on to EAGAIN: after a hang-up (the EOF came with the last bytes and
//     no edge follows it) and once urgent data came (a read stops at the
//     urgent mark; EPOLLPRI sets side.urgent; readShort). A short splice proves
//     nothing: a pipe has one slot per page fragment, so the packets of a
//     sender using sendfile or splice fill it well before its size, and a
//     pipe the kernel would not grow is small.
//  3. readEarly, the read of a client's first bytes before the backend is
//     dialled, leaves readable clear after a short read: the socket was
//     registered before that read, so bytes that came before or since
//     queued an edge that sets readable again.
//  4. A write that returns EAGAIN clears writable and arms output in the
//     same step (cantSend), so the edge that says there is room again
//     cannot be missed.
//  5. A hang-up is noted (side.hup) and never cleared. A direction is
//     done only when a read returned its source's EOF, which move reaches
//     only with nothing left to write (turnDir flushes first); pair.eof
//     then shuts the destination's write side, and closes the pair when
//     the other way is done too. An error ends the pair with a reset on
//     both sockets (pair.fail), never a FIN for a cut stream.
//  6. A turn moves at most dirBudget chunks; a direction still readable
//     after it waits in lp.again and is served on the next pass, without
//     waiting for epoll.
//  7. Anything that moves bytes can finish the pair (pair.close): check
//     the pair's phase before touching the pair or its sides again.
//  8. Only the loop's goroutine closes an adopted descriptor; any other
//     goroutine posts the close (rawSock.Close), as it posts everything
//     it wants done to a pair.
//  9. A multiplexed link's stream is a side without a descriptor
//     (side.vs, loopStream): no epoll, and its notify stands for the
//     edge. A TryRead or TryWrite that returns EAGAIN arms the notify,
//     and so does a TryRead that empties the stream (a short read: the
//     stream calls the notify at once if its end came already), so rules
//     1 and 2 hold for it as written; cantSendStream clears writable
//     without epoll. The notify posts streamReady, which sets both flags
//     (always safe) and turns both directions. A stream never splices.
//  10. Bytes between a socket and a stream skip the loop's buffer. Into a
//     stream, the socket is read straight into the stream's outgoing
//     frames (TryReadFrom): when the stream takes nothing, nothing is
//     read, the bytes wait in the socket, and streamReady turns that
//     direction again because its source is still readable. Out of a
//     stream, its buffers are written to the socket with one writev
//     (TryWriteTo): what the socket refuses stays in the stream, and the
//     direction is pending (dir.held) until the socket's edge.
//  11. A link session the loop reads (side.rs, loopsession.go) is
//     registered edge-triggered like a socket, and its read runs until
//     the TLS socket said EAGAIN (the session's parser keeps its place in
//     a frame), or stops at a budget and is queued for the next turn
//     (lp.sessAgain) as rule 1 wants. A post made while the loop is awake
//     (wake, before sleep) writes no eventfd: batch runs the queue at the
//     end of every turn, so a stream this read fed is turned in the same
//     turn; sleep runs the queue instead of waiting when one came since.
package proxy
