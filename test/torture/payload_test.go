package torture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// The payload of one direction of one connection is a stream of bytes
// that is a pure function of (run seed, connection id, direction), so the
// receiver checks every byte as it arrives, without a copy of what was
// sent, and names the first offset that differs.
//
// The stream is made of 4 KiB blocks. Block b starts with an 8-byte tag
// derived from the stream's key and b, followed by 4088 bytes taken from
// a shared random pool at an offset also derived from the key and b. A
// byte lost, duplicated or moved shifts a tag, and a block from another
// stream or another offset carries another tag, so none of them passes.
// Filling and checking copy and compare slices (a few calls per block),
// which keeps the test process fast under -race, where a loop over
// bytes would be instrumented byte by byte.

const (
	blockSize = 4096
	tagSize   = 8
	poolSize  = 1 << 20
)

// pool is the random material of every stream (fixed: the seed only
// chooses which parts of it each block uses).
var pool = func() []byte {
	rng := rand.New(rand.NewPCG(0x746f7274, 0x75726521))
	b := make([]byte, poolSize+blockSize)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}()

// direction of a payload.
type direction uint8

const (
	up   direction = iota // client to backend
	down                  // backend to client
)

func (d direction) String() string {
	if d == up {
		return "up"
	}
	return "down"
}

// payload is one direction's stream.
type payload struct{ key uint64 }

func newPayload(seed, conn uint64, d direction) payload {
	return payload{key: hash2(seed, conn<<1|uint64(d))}
}

// hash2 draws the first number of a PCG seeded with (a, b): a
// deterministic scramble of two words, without allocating.
func hash2(a, b uint64) uint64 {
	var g rand.PCG
	g.Seed(a, b)
	return g.Uint64()
}

// block returns block b's tag (written into tag) and the pool window that
// follows it.
func (p payload) block(b int64, tag *[tagSize]byte) []byte {
	h := hash2(p.key, uint64(b))
	binary.LittleEndian.PutUint64(tag[:], h)
	w := int(hash2(h, p.key) % poolSize)
	return pool[w : w+blockSize-tagSize]
}

// walk calls f for every contiguous piece of the stream's bytes
// [off, off+n): at (the stream offset) and want (the expected bytes). It
// stops early when f returns false.
func (p payload) walk(off int64, n int, f func(at int64, want []byte) bool) {
	var tag [tagSize]byte
	for n > 0 {
		b, in := off/blockSize, int(off%blockSize)
		win := p.block(b, &tag)
		var want []byte
		if in < tagSize {
			want = tag[in:]
		} else {
			want = win[in-tagSize:]
		}
		if len(want) > n {
			want = want[:n]
		}
		if !f(off, want) {
			return
		}
		off += int64(len(want))
		n -= len(want)
	}
}

// fill writes the stream's bytes [off, off+len(dst)) into dst.
func (p payload) fill(off int64, dst []byte) {
	i := 0
	p.walk(off, len(dst), func(_ int64, want []byte) bool {
		i += copy(dst[i:], want)
		return true
	})
}

// check compares got with the stream's bytes from off. It returns the
// stream offset of the first byte that differs, or -1.
func (p payload) check(off int64, got []byte) int64 {
	bad := int64(-1)
	i := 0
	p.walk(off, len(got), func(at int64, want []byte) bool {
		g := got[i : i+len(want)]
		i += len(want)
		if bytes.Equal(g, want) {
			return true
		}
		for j := range want {
			if g[j] != want[j] {
				bad = at + int64(j)
				break
			}
		}
		return false
	})
	return bad
}

// verifier checks a stream as it arrives: bytes must be the payload's, in
// order, and no more than want of them.
type verifier struct {
	p    payload
	want int64 // bytes the sender plans to send
	got  int64 // bytes received and checked so far
}

// corruption is a received byte that differs from the payload's.
type corruption struct {
	Dir    direction
	Offset int64
}

func (c *corruption) Error() string {
	return fmt.Sprintf("%s stream corrupt at offset %d", c.Dir, c.Offset)
}

// add checks the next received bytes.
func (v *verifier) add(d direction, b []byte) error {
	if v.got+int64(len(b)) > v.want {
		// Extra bytes are corrupt bytes too: the first one is at want.
		return &corruption{Dir: d, Offset: v.want}
	}
	if bad := v.p.check(v.got, b); bad >= 0 {
		return &corruption{Dir: d, Offset: bad}
	}
	v.got += int64(len(b))
	return nil
}

func (v *verifier) done() bool { return v.got == v.want }
