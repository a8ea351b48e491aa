package proxy

// pairPhase is where a pair (a connection on an event loop) is in its
// life, in one field: every site that asks whether it may touch the pair,
// whether a connect is in flight or whether bytes move asks the phase, and
// the phase changes only through pair.enter, along these moves:
//
//	pairWaiting ──takeOver──▶ pairDialing ──connected──▶ pairMoving
//	     │                       │    │                      │
//	     │ start (adopt)         │    └──toGoroutine──▶ pairHandedOff
//	     └──────────▶ pairMoving │                           │
//	any of the three ──close─────┴──────────────────────▶ pairClosed
//
// (HAProxy's stream connectors keep their state the same way, SC_ST_*.)
type pairPhase uint8

const (
	// pairWaiting: the pair is on its way to its loop (acceptOnLoop posts
	// takeOver), or a handler goroutine dialled its backend and handed
	// both sockets over (adopt posts start). Events only note readiness.
	pairWaiting pairPhase = iota
	// pairDialing: the loop reads the client's early bytes and connects to
	// a backend, retrying within the connection's budget; pr.connecting
	// is the socket whose connect is in flight while the loop waits for
	// epoll. Client events only note readiness.
	pairDialing
	// pairMoving: both sockets are the pair's and the loop moves bytes.
	pairMoving
	// pairHandedOff: a handler goroutine took the connection over
	// (toGoroutine): the pair is over, the connection goes on.
	pairHandedOff
	// pairClosed: both sockets are closed and the connection finished.
	pairClosed
)

// pairMoves lists, for each phase, the phases it may go to next.
var pairMoves = [...]uint8{
	pairWaiting:   1<<pairDialing | 1<<pairMoving | 1<<pairClosed,
	pairDialing:   1<<pairMoving | 1<<pairHandedOff | 1<<pairClosed,
	pairMoving:    1 << pairClosed,
	pairHandedOff: 0,
	pairClosed:    0,
}

var pairPhaseNames = [...]string{"waiting", "dialing", "moving", "handed off", "closed"}

func (ph pairPhase) String() string {
	if int(ph) < len(pairPhaseNames) {
		return pairPhaseNames[ph]
	}
	return "unknown"
}

// over reports whether the pair is done with: closed, or handed to a
// handler goroutine. Nothing may touch its sockets any more.
func (pr *pair) over() bool { return pr.phase >= pairHandedOff }

// enter moves the pair to phase next and reports true, or, if that move
// is not one of pairMoves (a bug), logs it and resets the connection
// rather than go on from a state nobody wrote the code for.
func (pr *pair) enter(next pairPhase) bool {
	if pairMoves[pr.phase]&(1<<next) != 0 {
		pr.phase = next
		return true
	}
	pr.lp.log("event loop: a connection cannot go from one phase to the other; it is reset",
		"service", pr.c.route.Service, "from", pr.phase.String(), "to", next.String())
	if !pr.over() {
		pr.reset = true
		pr.close()
	}
	return false
}
