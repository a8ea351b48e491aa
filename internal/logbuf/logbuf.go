// Package logbuf is a bounded asynchronous writer for log lines: Write
// copies the line into memory and returns, and a goroutine of the writer's
// own writes what accumulated to the underlying writer in one call, a few
// milliseconds later (FlushDelay). It is for lines written where blocking
// is not an option (attache's access log, written by the event loops that
// carry every connection): a slow or stuck sink costs dropped lines,
// counted, never a stalled caller.
package logbuf

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultLimit is the buffer bound New uses when given 0: about 20 000
// access lines of 200 bytes.
const DefaultLimit = 4 << 20

// initialCap is how much each of the two buffers (one filling, one being
// written) holds before its first growth: a few hundred lines.
const initialCap = 64 << 10

// Writer buffers whole writes (each one a log line) and writes them out in
// batches from its own goroutine. Its methods are safe for concurrent use.
type Writer struct {
	out   io.Writer
	limit int

	mu     sync.Mutex
	buf    []byte // filled by Write, under mu
	closed bool

	wake    chan struct{} // one pending signal: buf has data
	stop    chan struct{} // closed by Close
	done    chan struct{} // closed when the flusher returns
	dropped atomic.Uint64
}

// New starts a Writer over out that holds at most limit bytes (DefaultLimit
// if limit is 0) not yet written; writes past the bound are dropped whole.
// Close stops it.
func New(out io.Writer, limit int) *Writer {
	if limit <= 0 {
		limit = DefaultLimit
	}
	w := &Writer{
		out:   out,
		limit: limit,
		buf:   make([]byte, 0, min(limit, initialCap)),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go w.flusher()
	return w
}

// Write appends p to the buffer and returns at once; it never makes a
// system call. When the buffer already holds limit bytes waiting for a slow
// sink, or after Close, p is dropped whole and counted (see Dropped); Write
// still reports success, as a log handler has nothing better to do with the
// error.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || len(w.buf)+len(p) > w.limit {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // a wake-up is already pending; it will take this line too
	}
	return len(p), nil
}

// Dropped is how many writes were dropped because the buffer was full (or
// the Writer closed).
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Buffered is how many bytes wait to be written (not counting a batch
// being written now).
func (w *Writer) Buffered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.buf)
}

// FlushDelay is how long the flusher lets lines gather after the first
// one of a batch before it writes them out. Waking the flusher for each
// line would cost the writer's goroutine a scheduler wake-up per line (a
// thread woken, a context switch): on a proxy closing thousands of
// connections a second, that was most of what the access log cost. The
// flusher is woken at most 1/FlushDelay times a second instead; a line
// waits at most FlushDelay.
const FlushDelay = 20 * time.Millisecond

// flusher writes out what accumulated, FlushDelay after the first line of
// each batch, swapping buffers so that Write never waits for the sink.
func (w *Writer) flusher() {
	defer close(w.done)
	spare := make([]byte, 0, min(w.limit, initialCap))
	gather := time.NewTimer(FlushDelay)
	gather.Stop()
	for {
		select {
		case <-w.wake:
		case <-w.stop:
			w.flushOnce(spare)
			return
		}
		gather.Reset(FlushDelay)
		select {
		case <-gather.C:
		case <-w.stop:
			w.flushOnce(spare)
			return
		}
		spare = w.flushOnce(spare)
	}
}

// flushOnce takes the buffer, leaving spare (emptied) in its place, writes
// it out and returns it for the next swap.
func (w *Writer) flushOnce(spare []byte) []byte {
	w.mu.Lock()
	batch := w.buf
	w.buf = spare[:0]
	w.mu.Unlock()
	if len(batch) == 0 {
		return batch
	}
	// A batch the sink refuses is lost: the sink is where an error about
	// it would go.
	_, _ = w.out.Write(batch)
	return batch[:0]
}

// Close stops accepting writes, writes out what is buffered and stops the
// goroutine. It waits until that is done or ctx ends (a sink that blocks
// must not hang a shutdown), whichever comes first, and returns ctx's error
// in the second case; the buffered lines are then abandoned.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.stop)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
