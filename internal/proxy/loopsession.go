package proxy

// Event loops read multiplexed link sessions (loophint.Reader).
//
// Without this, a session's frames reach the loop that carries their
// stream through two goroutines: the session's reader wakes in Go's
// poller, decrypts and parses, then posts the stream's readiness to the
// loop, which wakes in turn. A loop that reads the session itself parses
// the frames in its own turn, and the streams it carries are served right
// after, in the same turn, with no hand-off (the link client puts a
// stream on a session its loop reads, the link server hands a stream's
// backend socket to its session's loop: loophint). Streams on other loops
// are told as before.
//
// The session's socket stays in Go's poller for the session's writes (the
// flusher's blocking writes); the loop only reads it, with reads that
// never wait (link.linkSocket), and its epoll watches it edge-triggered:
// a read runs until the socket said EAGAIN, or reports more after its
// budget and runs again next turn.

// sessionRead is a session a loop reads: side.rs.
type sessionRead struct {
	read   func() (more bool, err error)
	detach func()
	over   bool // read failed, or the session ended: no more reads
	queued bool // in lp.sessAgain
}

// ReadSession has one of the event loops read a multiplexed link session
// (loophint.Reader): the loop with the fewest sessions, so that a link
// server's pooled connections (one per CPU) spread over the loops. It
// reports false when the loops do not run.
func (p *Proxy) ReadSession(fd int, read func() (bool, error), detach func(), done <-chan struct{}) (int, bool) {
	all := p.eventLoops()
	if len(all) == 0 {
		return -1, false
	}
	idx := 0
	for i, lp := range all {
		if lp.sessionCount.Load() < all[idx].sessionCount.Load() {
			idx = i
		}
	}
	lp := all[idx]
	s := &side{fd: fd, rs: &sessionRead{read: read, detach: detach}}
	if err := lp.register(s); err != nil {
		return -1, false
	}
	lp.sessionCount.Add(1)
	if !lp.post(func() { lp.sessionAdded(s) }) {
		lp.unregister(s)
		lp.sessionCount.Add(-1)
		return -1, false
	}
	// Owned by the session: it ends when the session does, and tells
	// the loop to forget it (its socket closed, which took it out of
	// the epoll set).
	go func() {
		<-done
		lp.post(func() { lp.sessionGone(s) })
	}()
	return idx, true
}

// sessionAdded starts reading s on the loop: its first read finds what
// came before it was registered (bytes in TLS's buffers no edge reports).
func (lp *loop) sessionAdded(s *side) {
	if lp.sessions == nil {
		lp.sessions = map[*side]struct{}{}
	}
	lp.sessions[s] = struct{}{}
	lp.readSession(s)
}

// readSession reads what the session's socket holds: the streams it
// feeds on this loop are served at the end of this turn (runQueue).
func (lp *loop) readSession(s *side) {
	rs := s.rs
	if rs.over {
		return
	}
	more, err := rs.read()
	switch {
	case err != nil:
		lp.sessionGone(s)
	case more && !rs.queued:
		rs.queued = true
		lp.sessAgain = append(lp.sessAgain, s)
	}
}

// sessionGone forgets a session that ended; its descriptor was closed (or
// is being closed by the session), which takes it out of the epoll set.
func (lp *loop) sessionGone(s *side) {
	if s.rs.over {
		return
	}
	s.rs.over = true
	if _, ok := lp.sessions[s]; ok {
		delete(lp.sessions, s)
		lp.sessionCount.Add(-1)
	}
	lp.unregister(s)
}

// detachSessions hands the sessions the loop reads back to their own
// goroutines: the loop is stopping.
func (lp *loop) detachSessions() {
	for s := range lp.sessions {
		if !s.rs.over {
			s.rs.over = true
			lp.unwatch(s)
			s.rs.detach()
		}
	}
	clear(lp.sessions)
	lp.sessionCount.Store(0)
}
