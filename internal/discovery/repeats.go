package discovery

import (
	"errors"
	"log/slog"

	"github.com/attache/attache/internal/tlsclient"
)

// Repeats tells a provider's new failure from the same one again: a
// source that stays away, or keeps refusing attache's certificate, is one
// warning, not one per retry; the retries are logged at debug. TLS
// failures are compared by what failed (tlsclient.Error's What), since the
// clients word one refusal in more than one way. The zero value is ready;
// it is not safe for concurrent use (each retry loop has its own).
type Repeats struct{ last string }

// Level is the level to log err at: warn when it differs from the last
// failure or when the source worked since (Recovered), debug otherwise.
func (r *Repeats) Level(err error) slog.Level {
	msg := err.Error()
	if te, ok := errors.AsType[*tlsclient.Error](err); ok {
		msg = te.What
	}
	if msg != r.last {
		r.last = msg
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// Recovered notes that the source answered: its next failure is news even
// if it reads as the last one did.
func (r *Repeats) Recovered() { r.last = "" }
