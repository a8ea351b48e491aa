package torture

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// Tests of the harness itself: a checker that let bad bytes through would
// make every other result worthless.

// TestPayloadCatchesDamage damages a received stream in the ways a proxy
// could (a flipped bit, a lost byte, a duplicated one, bytes from another
// stream or offset, bytes past the end) and wants each caught at the
// first offset that differs.
func TestPayloadCatchesDamage(t *testing.T) {
	p := newPayload(7, 42, up)
	const n = 3*blockSize + 123
	good := make([]byte, n)
	p.fill(0, good)
	if bad := p.check(0, good); bad != -1 {
		t.Fatalf("intact stream reported corrupt at %d", bad)
	}
	// Filling from any offset gives the same bytes as one big fill.
	for _, off := range []int64{0, 1, 7, 8, 9, blockSize - 1, blockSize, 2*blockSize + 5} {
		part := make([]byte, 100)
		p.fill(off, part)
		if string(part) != string(good[off:off+100]) {
			t.Fatalf("fill at %d differs from the whole stream", off)
		}
	}
	other := make([]byte, n)
	newPayload(7, 43, up).fill(0, other)
	otherDir := make([]byte, n)
	newPayload(7, 42, down).fill(0, otherDir)
	later := make([]byte, n) // the stream from one block on: later[blockSize:] is block 2
	p.fill(blockSize, later)

	tests := []struct {
		name   string
		damage func([]byte) []byte
		want   int64 // first corrupt offset
	}{
		{"bit flipped in a tag", func(b []byte) []byte { b[blockSize+3] ^= 1; return b }, blockSize + 3},
		{"bit flipped in a window", func(b []byte) []byte { b[2*blockSize+100] ^= 0x80; return b }, 2*blockSize + 100},
		{"byte lost", func(b []byte) []byte { return append(b[:500:500], b[501:]...) }, 500},
		{"byte duplicated", func(b []byte) []byte { return append(b[:501:501], b[500:]...) }, 501},
		{"another connection's stream", func(b []byte) []byte { copy(b[blockSize:], other[blockSize:2*blockSize]); return b }, blockSize},
		{"the other direction's stream", func([]byte) []byte { return otherDir }, 0},
		{"a block from a later offset", func(b []byte) []byte { copy(b[blockSize:], later[blockSize:2*blockSize]); return b }, blockSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.damage(append([]byte(nil), good...))
			v := verifier{p: p, want: int64(len(got))}
			// Arrives in odd pieces, as reads return it.
			var err error
			for rest := got; len(rest) > 0 && err == nil; {
				k := min(len(rest), 1+len(rest)%977)
				err, rest = v.add(up, rest[:k]), rest[k:]
			}
			var c *corruption
			if !errors.As(err, &c) {
				t.Fatalf("damage not caught: err = %v", err)
			}
			if c.Offset != tt.want {
				t.Fatalf("caught at offset %d, want %d", c.Offset, tt.want)
			}
		})
	}
	t.Run("bytes past the end", func(t *testing.T) {
		v := verifier{p: p, want: 100}
		if err := v.add(up, good[:100]); err != nil {
			t.Fatal(err)
		}
		var c *corruption
		if err := v.add(up, good[100:101]); !errors.As(err, &c) || c.Offset != 100 {
			t.Fatalf("an extra byte: err = %v, want corruption at 100", err)
		}
	})
}

// TestPlanHeader: a plan survives its header, and garbage is refused.
func TestPlanHeader(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for id := range uint64(200) {
		p := randomPlan(rng, 99, id, sizes{medium: 1 << 20, large: 4 << 20})
		got, err := unmarshalPlan(p.marshal())
		if err != nil {
			t.Fatalf("%v: %v", p, err)
		}
		if *got != *p {
			t.Fatalf("header round trip: got %v, want %v", got, p)
		}
		if p.shape == shapeEcho || p.shape == shapePipeline {
			req, resp := p.messages()
			var up, down int64
			for _, n := range req {
				up += n
			}
			for _, n := range resp {
				down += n
			}
			if p.shape == shapeEcho {
				down = up
			}
			if up != p.up || down != p.down {
				t.Fatalf("%v: messages add up to %d/%d", p, up, down)
			}
		}
	}
	bad := (&plan{writeMax: 1}).marshal()
	bad[20] = byte(numShapes)
	if _, err := unmarshalPlan(bad); err == nil {
		t.Fatal("a header with an unknown shape was accepted")
	}
	if _, err := unmarshalPlan(make([]byte, headerSize)); err == nil {
		t.Fatal("a header without the magic was accepted")
	}
}

// TestGroupStacks folds identical goroutines of a dump into one entry.
func TestGroupStacks(t *testing.T) {
	dump := `goroutine 1 [running]:
main.f(0x1, 0x2)
	/src/a.go:10 +0x1f

goroutine 7 [IO wait, 3 minutes]:
main.g(0xc000012345?)
	/src/a.go:20 +0x2a

goroutine 8 [IO wait]:
main.g(0xc000099999?)
	/src/a.go:20 +0x2a fp=0xc000 sp=0xc001 pc=0x4ada19
`
	got := groupStacks(dump)
	if !strings.Contains(got, "2 goroutine(s) [IO wait]\nmain.g(...)\n\t/src/a.go:20") {
		t.Fatalf("the two IO waits are not grouped:\n%s", got)
	}
	if !strings.Contains(got, "1 goroutine(s) [running]\nmain.f(...)") {
		t.Fatalf("the running goroutine is missing:\n%s", got)
	}
}
