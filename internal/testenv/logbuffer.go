package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// LogBuffer collects log output written from several goroutines (a
// provider's, a proxy's, a process's stderr) while the test reads it, and
// lets the test wait for a line instead of polling. The zero value is
// ready to use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	// changed is closed by the next write (made when someone waits).
	changed chan struct{}
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.buf.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// snapshot is everything written so far and a channel closed by the next
// write.
func (l *LogBuffer) snapshot() (string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return l.buf.String(), l.changed
}

// Lines returns the lines written so far that contain every one of subs.
func (l *LogBuffer) Lines(subs ...string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(line, s) }) {
			out = append(out, line)
		}
	}
	return out
}

// ErrWriterDone is Await's error when the writer finished (done closed)
// before the text matched; ErrTimeout when the timeout passed first.
var (
	ErrWriterDone = errors.New("the writer finished first")
	ErrTimeout    = errors.New("timed out")
)

// Await waits until match, given everything written so far, is true; it
// asks again after every write. done closes when the writer has finished
// (its process exited, its pipe closed): Await then has one last look, as
// the final write may race with it, and returns ErrWriterDone. It returns
// ErrTimeout once timeout has passed.
func (l *LogBuffer) Await(done <-chan struct{}, timeout time.Duration, match func(text string) bool) error {
	deadline := time.After(timeout)
	for {
		text, changed := l.snapshot()
		if match(text) {
			return nil
		}
		select {
		case <-changed:
		case <-done:
			if match(l.String()) {
				return nil
			}
			return ErrWriterDone
		case <-deadline:
			return fmt.Errorf("%w after %v", ErrTimeout, timeout)
		}
	}
}

// WaitLine waits, as Await does, for a line that matches re, and returns
// the submatches of the first such line.
func (l *LogBuffer) WaitLine(re *regexp.Regexp, done <-chan struct{}, timeout time.Duration) ([]string, error) {
	var m []string
	err := l.Await(done, timeout, func(text string) bool {
		for line := range strings.SplitSeq(text, "\n") {
			if m = re.FindStringSubmatch(line); m != nil {
				return true
			}
		}
		return false
	})
	return m, err
}
