package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/attache/attache/internal/logbuf"
)

// accessLogFlushTimeout bounds how long the last access lines may take to
// reach a sink at exit: a dead sink must not hang a shutdown.
const accessLogFlushTimeout = 5 * time.Second

// accessDropWarnEvery is how often, at most, a warning says how many
// access lines were dropped.
const accessDropWarnEvery = 10 * time.Second

// accessLog is the logger for per-connection lines and, when they are
// buffered, the buffer under it. Lines are tagged log=access so they can be
// told apart; their handler has the main logger's format and level, so
// --log-level warn silences them too.
type accessLog struct {
	logger *slog.Logger // nil when access lines are off
	buf    *logbuf.Writer
	log    *slog.Logger // warnings about the buffer

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	warned    uint64 // drops already reported, owned by warnDrops's goroutine, then by close
}

// newAccessLog builds the access log opts ask for. With opts.LogOutput and
// opts.LogHandler it writes through a logbuf.Writer and starts a goroutine
// that warns of dropped lines; close stops both.
func newAccessLog(log *slog.Logger, opts Options) *accessLog {
	a := &accessLog{log: log}
	if !opts.AccessLog {
		return a
	}
	if opts.LogOutput == nil || opts.LogHandler == nil {
		a.logger = log.With("log", "access")
		return a
	}
	a.buf = logbuf.New(opts.LogOutput, logbuf.DefaultLimit)
	a.logger = slog.New(opts.LogHandler(a.buf)).With("log", "access")
	a.stop = make(chan struct{})
	a.done = make(chan struct{})
	go a.warnDrops()
	return a
}

// dropped is how many access lines the buffer dropped (0 unbuffered).
func (a *accessLog) dropped() uint64 {
	if a == nil || a.buf == nil {
		return 0
	}
	return a.buf.Dropped()
}

// warnDrops logs, at most every accessDropWarnEvery, how many access lines
// were dropped since the last warning.
func (a *accessLog) warnDrops() {
	defer close(a.done)
	t := time.NewTicker(accessDropWarnEvery)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			a.reportDrops()
		}
	}
}

func (a *accessLog) reportDrops() {
	n := a.buf.Dropped()
	if n == a.warned {
		return
	}
	a.log.Warn("access log: the log sink is too slow; lines dropped",
		"dropped", n-a.warned, "dropped_total", n, "buffer_bytes", logbuf.DefaultLimit)
	a.warned = n
}

// close writes out the buffered lines (for up to accessLogFlushTimeout),
// stops the goroutines and reports drops not yet reported. Later calls do
// nothing.
func (a *accessLog) close() {
	if a.buf == nil {
		return
	}
	a.closeOnce.Do(func() {
		close(a.stop)
		<-a.done
		ctx, cancel := context.WithTimeout(context.Background(), accessLogFlushTimeout)
		defer cancel()
		if err := a.buf.Close(ctx); err != nil {
			a.log.Warn("access log: the log sink did not take the last lines in time; they are lost",
				"timeout", accessLogFlushTimeout)
		}
		a.reportDrops()
	})
}
