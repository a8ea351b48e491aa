package h2mux

import "sync"

// chunkSize is the size of the pooled chunks a stream's received bytes wait
// in until its reader takes them.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// recvBuf holds a stream's received bytes in pooled chunks, taken only while
// they hold bytes: an idle stream holds none. The peer's flow-control window
// bounds how much it can hold.
type recvBuf struct {
	chunks []*[]byte
	// off is where the first chunk's unread bytes start, end where the
	// last chunk's bytes end.
	off, end int
	n        int // bytes held
}

func (r *recvBuf) len() int { return r.n }

// write copies b in.
func (r *recvBuf) write(b []byte) {
	r.n += len(b)
	for len(b) > 0 {
		if len(r.chunks) == 0 || r.end == chunkSize {
			r.chunks = append(r.chunks, chunkPool.Get().(*[]byte))
			r.end = 0
		}
		m := copy((*r.chunks[len(r.chunks)-1])[r.end:], b)
		r.end += m
		b = b[m:]
	}
}

// read copies up to len(b) bytes out and gives back the chunks it emptied.
func (r *recvBuf) read(b []byte) int {
	n := 0
	for n < len(b) && r.n > 0 {
		first := *r.chunks[0]
		stop := chunkSize
		if len(r.chunks) == 1 {
			stop = r.end
		}
		m := copy(b[n:], first[r.off:stop])
		n += m
		r.off += m
		r.n -= m
		if r.off == stop {
			r.dropFirst()
		}
	}
	return n
}

func (r *recvBuf) dropFirst() {
	chunkPool.Put(r.chunks[0])
	r.chunks[0] = nil
	r.chunks = r.chunks[1:]
	r.off = 0
	if len(r.chunks) == 0 {
		r.chunks, r.end = nil, 0
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
