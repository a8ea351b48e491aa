package backend

import (
	"context"
	"time"
)

// DialBudget is what one connection (or UDP session) may spend on finding
// a backend that answers: Retries further dials after the first, until
// Deadline (the zero time: no deadline), and never once its context is
// done. It keeps the failed dials' errors for the one line that reports
// them. Both TCP engines and UDP count against it, so the rule is written
// once; a connection an event loop hands to a handler goroutine keeps its
// budget where the loop left it. The zero value allows one dial and no
// retry. It is not safe for concurrent use.
type DialBudget struct {
	Retries  int
	Deadline time.Time

	attempts int
	errs     DialErrors
}

// Failed records that the dial of addr failed with err.
func (b *DialBudget) Failed(addr string, err error) {
	b.attempts++
	b.errs.Add(addr, err)
}

// Attempts is how many dials failed so far.
func (b *DialBudget) Attempts() int { return b.attempts }

// Again reports whether another dial may go at now: ctx is not done, a
// retry is left and the deadline has not passed.
func (b *DialBudget) Again(ctx context.Context, now time.Time) bool {
	return ctx.Err() == nil && b.attempts <= b.Retries && (b.Deadline.IsZero() || now.Before(b.Deadline))
}

// Err is the failed dials as one error (see DialErrors.Err), nil if none
// failed.
func (b *DialBudget) Err() error { return b.errs.Err() }
