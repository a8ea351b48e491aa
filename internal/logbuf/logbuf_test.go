package logbuf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a sink that never blocks.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func line(prefix string, i int) []byte {
	return fmt.Appendf(nil, "%s %08d %s\n", prefix, i, strings.Repeat("x", 40))
}

func TestLinesWholeAndInOrder(t *testing.T) {
	var sink lockedBuffer
	w := New(&sink, 0)
	var want bytes.Buffer
	for i := range 10000 {
		l := line("line", i)
		want.Write(l)
		if n, err := w.Write(l); n != len(l) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := sink.String(); got != want.String() {
		t.Fatalf("sink got %d bytes, want %d (the lines in order)", len(got), want.Len())
	}
	if w.Dropped() != 0 {
		t.Fatalf("Dropped = %d, want 0", w.Dropped())
	}
	if sink.writes >= 10000 {
		t.Errorf("%d writes to the sink for 10000 lines; want batches", sink.writes)
	}
}

func TestConcurrentWritersKeepLinesWhole(t *testing.T) {
	var sink lockedBuffer
	w := New(&sink, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				w.Write(line(fmt.Sprint("g", g), i))
			}
		})
	}
	wg.Wait()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(sink.String()))
	n := 0
	for sc.Scan() {
		var g string
		var i int
		var rest string
		if _, err := fmt.Sscanf(sc.Text(), "%s %d %s", &g, &i, &rest); err != nil || rest != strings.Repeat("x", 40) {
			t.Fatalf("torn line %q", sc.Text())
		}
		if i != next[g] {
			t.Fatalf("writer %s: line %d after %d", g, i, next[g]-1)
		}
		next[g]++
		n++
	}
	if n != 8000 {
		t.Fatalf("%d lines, want 8000", n)
	}
}

// A sink nobody reads (a pipe whose reader is stuck) must not block Write:
// lines past the bound are dropped whole and counted, and once the reader
// drains, later lines arrive intact.
func TestBlockedSinkDropsWholeLines(t *testing.T) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const limit = 4096
	w := New(pw, limit)
	// The pipe holds 64 KiB by default (at most 1 MiB); the Writer holds
	// the batch being written plus limit bytes. 4 MiB of lines cannot all
	// fit: the excess is dropped, and Write returns every time (else this
	// test hangs).
	const before = 4 << 20 / 60
	for i := range before {
		w.Write(line("before", i))
	}
	if w.Dropped() == 0 {
		t.Fatal("no line dropped with the sink blocked")
	}
	if w.Dropped() >= before {
		t.Fatalf("Dropped = %d: every line dropped", w.Dropped())
	}
	dropped := w.Dropped()

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// Read until the Writer's buffer is empty, so the next lines fit.
	var got []string
	for w.Buffered() > 0 {
		select {
		case l := <-lines:
			got = append(got, l)
		case <-time.After(time.Millisecond):
		}
	}
	const after = 10
	for i := range after {
		w.Write(line("after", i))
	}
	if w.Dropped() != dropped {
		t.Fatalf("Dropped went from %d to %d with the sink drained", dropped, w.Dropped())
	}
	closed := make(chan error, 1)
	go func() {
		closed <- w.Close(context.Background())
		pw.Close()
	}()
	for l := range lines {
		got = append(got, l)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}

	x := strings.Repeat("x", 40)
	prev := -1
	for _, l := range got[:len(got)-after] {
		var i int
		if _, err := fmt.Sscanf(l, "before %d "+x, &i); err != nil || len(l) != len("before 00000000 ")+40 {
			t.Fatalf("torn line %q", l)
		}
		if i <= prev {
			t.Fatalf("line %d after %d", i, prev)
		}
		prev = i
	}
	if n := len(got) - after; uint64(n)+dropped != before {
		t.Fatalf("%d lines arrived and %d dropped; want %d in all", n, dropped, before)
	}
	for i, l := range got[len(got)-after:] {
		if want := string(line("after", i)); l+"\n" != want {
			t.Fatalf("after the drain: got %q, want %q", l, want)
		}
	}
}

func TestCloseFlushes(t *testing.T) {
	var sink lockedBuffer
	w := New(&sink, 0)
	w.Write([]byte("last words\n"))
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := sink.String(); got != "last words\n" {
		t.Fatalf("sink = %q after Close", got)
	}
	w.Write([]byte("too late\n"))
	if w.Dropped() != 1 {
		t.Fatalf("a write after Close: Dropped = %d, want 1", w.Dropped())
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Close gives up on a sink that never takes the bytes.
func TestCloseOnDeadSinkReturns(t *testing.T) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close() // unblocks the flusher at the end
	w := New(pw, 1<<20)
	big := bytes.Repeat([]byte("y"), 1<<20-1)
	w.Write(append(big, '\n')) // more than a pipe holds: the flusher blocks
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close on a blocked sink = %v, want context.Canceled", err)
	}
}

func TestWriteAllocatesNothing(t *testing.T) {
	w := New(discard{}, 0)
	defer w.Close(context.Background())
	l := line("line", 1)
	// One run per measurement, so no allocation averages away; 200 lines
	// stay within the buffer's first capacity, so none is growth.
	for range 100 {
		if n := testing.AllocsPerRun(1, func() { w.Write(l) }); n != 0 {
			t.Fatalf("Write allocated %v times, want 0", n)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
