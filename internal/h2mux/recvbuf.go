package h2mux

import "sync"

// chunkSize is the size of the pooled chunks a stream's received bytes wait
// in until its reader takes them. A DATA frame's payload (at most maxFrame)
// fits in one: the session reads each payload into a chunk, which a stream
// keeps as it is when the payload fills half of it or more (recvBuf.take).
const chunkSize = maxFrame

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// chunk is a pooled buffer and where its bytes start and end.
type chunk struct {
	buf      *[]byte
	off, end int
}

// recvBuf holds a stream's received bytes in pooled chunks, taken only while
// they hold bytes: an idle stream holds none. The peer's flow-control window
// bounds how much it can hold; a chunk is kept whole only when at least half
// full, so that bound costs at most twice its size in chunks.
type recvBuf struct {
	chunks []chunk
	n      int // bytes held
}

func (r *recvBuf) len() int { return r.n }

// write copies b in, after the last chunk's bytes while it has room.
func (r *recvBuf) write(b []byte) {
	r.n += len(b)
	for len(b) > 0 {
		if len(r.chunks) == 0 || r.chunks[len(r.chunks)-1].end == chunkSize {
			r.chunks = append(r.chunks, chunk{buf: chunkPool.Get().(*[]byte)})
		}
		c := &r.chunks[len(r.chunks)-1]
		m := copy((*c.buf)[c.end:], b)
		c.end += m
		b = b[m:]
	}
}

// take holds c's bytes without copying them: c's buffer belongs to r from
// now on.
func (r *recvBuf) take(c chunk) {
	r.n += c.end - c.off
	r.chunks = append(r.chunks, c)
}

// read copies up to len(b) bytes out and gives back the chunks it emptied.
func (r *recvBuf) read(b []byte) int {
	n := 0
	for n < len(b) && r.n > 0 {
		c := &r.chunks[0]
		m := copy(b[n:], (*c.buf)[c.off:c.end])
		n += m
		c.off += m
		r.n -= m
		if c.off == c.end {
			r.dropFirst()
		}
	}
	return n
}

// peek appends to v the held bytes, in order, as at most max slices of r's
// chunks (valid until r changes).
func (r *recvBuf) peek(v [][]byte, max int) [][]byte {
	for i := 0; i < len(r.chunks) && i < max; i++ {
		c := r.chunks[i]
		v = append(v, (*c.buf)[c.off:c.end])
	}
	return v
}

// discard drops the first n held bytes and gives back the chunks it
// emptied.
func (r *recvBuf) discard(n int) {
	for n > 0 && r.n > 0 {
		c := &r.chunks[0]
		m := min(n, c.end-c.off)
		c.off += m
		r.n -= m
		n -= m
		if c.off == c.end {
			r.dropFirst()
		}
	}
}

func (r *recvBuf) dropFirst() {
	chunkPool.Put(r.chunks[0].buf)
	r.chunks[0] = chunk{}
	r.chunks = r.chunks[1:]
	if len(r.chunks) == 0 {
		r.chunks = nil
	}
}

// reset drops what is held and reports how many bytes that was.
func (r *recvBuf) reset() int {
	n := r.n
	for len(r.chunks) > 0 {
		r.dropFirst()
	}
	r.n = 0
	return n
}

// hasRoom reports whether the last chunk has room for n more bytes.
func (r *recvBuf) hasRoom(n int) bool {
	return len(r.chunks) > 0 && chunkSize-r.chunks[len(r.chunks)-1].end >= n
}
