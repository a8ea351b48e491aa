package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/attache/attache/internal/tlsclient"
)

// Repeats warns on a new failure and on the first after a recovery, and
// logs the same failure again at debug; TLS failures are the same when
// what failed is, however the rest reads.
func TestRepeats(t *testing.T) {
	refused := func(detail string) error {
		return fmt.Errorf("GET /v1/health: %w", &tlsclient.Error{What: "the server refused the client certificate", Err: errors.New(detail)})
	}
	steps := []struct {
		err       error // nil: Recovered
		wantLevel slog.Level
	}{
		{errors.New("connection refused"), slog.LevelWarn},
		{errors.New("connection refused"), slog.LevelDebug},
		{errors.New("connection refused"), slog.LevelDebug},
		{errors.New("i/o timeout"), slog.LevelWarn},
		{refused("remote error: tls: bad certificate"), slog.LevelWarn},
		{refused("write: broken pipe"), slog.LevelDebug},
		{nil, 0},
		{refused("remote error: tls: bad certificate"), slog.LevelWarn},
		{refused("remote error: tls: bad certificate"), slog.LevelDebug},
	}
	var r Repeats
	for i, s := range steps {
		if s.err == nil {
			r.Recovered()
			continue
		}
		if got := r.Level(s.err); got != s.wantLevel {
			t.Errorf("step %d, %v: level %v, want %v", i, s.err, got, s.wantLevel)
		}
	}
}
