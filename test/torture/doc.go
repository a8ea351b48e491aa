// Package torture is the torture suite of attache's TCP data path: the
// built binary, as processes, between adversarial peers, with every byte
// checked. It exists because a stall of the event-loop engine (a sender
// using sendfile or splice, a connection held open) passed every other
// test: the suite is built to make such a stall, or a lost, duplicated or
// reordered byte, or a reset passed on as a clean end, fail a test.
//
// Only internal/testenv is imported from the project. TestMain builds the
// static binary (or -torture.bin names one, e.g. built from an older
// commit in a git worktree) and the test runs it as processes.
//
// # Dimensions, and where each lives
//
// Payloads (payload_test.go): each direction of each connection carries
// a stream that is a pure function of (seed, connection id, direction),
// made of 4 KiB blocks tagged with their index, so the receiver checks
// every byte on the fly and names the first corrupt offset; a byte beyond
// the planned length is corrupt too.
//
// Plans (plan_test.go): a connection's whole script (shape, sizes, each
// end's sender and receiver, which end closes first) travels in a 64-byte
// header the client sends first, so the torture backend knows its part.
//
// Senders and receivers (peers_test.go): write(2) in sizes from 1 byte to
// 1 MiB, writev(2), sendfile(2) from a memfd, and splice(2) from another
// socket through a pipe; receivers that read fast, paced (small reads and
// sleeps), or that stop for seconds and resume.
//
// Shapes (shapes_test.go): upload, download, both at once, echo
// ping-pong, pipelined requests, half-close by either end with data still
// flowing the other way, a reset by either end in the middle. The rule
// that matters: no end sends a FIN before it has received everything and
// the other end has received everything it sent, so a connection held
// open must deliver every byte by itself; an EOF cannot rescue a stall. A
// reset must end the other side (never a hang), and may reach it as a
// clean EOF only after every byte the resetting end's kernel had seen
// acknowledged (otherwise the reset hid a truncation), or on a socket
// the reset closed (the kernel reports a reset's error to one call only,
// which may be the end's own send). socat and HAProxy pass a reset on as
// a FIN, and a Unix socket has no reset, so behind those fronts and in
// front of a Unix backend a clean EOF is accepted.
//
// Topologies (topology_test.go): 1, 2 and 3 chained attache hops with
// mixed engines (event loops by default, goroutines with
// ATTACHE_LOOPS=-1), one-page splice pipes (ATTACHE_PIPE_SIZE=4096), a
// link hop (mutual TLS between two ambassadors, certificates from
// `attache certs`; multiplexed on pooled connections, and per connection), a listener reading the PROXY protocol (the client
// sends a v1 or v2 header), a Unix-socket backend, a backend that delays
// its accepts (the client's bytes arrive first), and fronts before the
// first hop: HAProxy splicing (option splice-auto) and socat. A "direct"
// topology, client to backend with nothing between, checks the harness.
//
// Runs (torture_test.go): a wave opens its connections all at once (a
// gate holds each one, connected, until the whole wave is), hundreds of
// them, each with a random plan on a random topology, after a fixed part
// that gives every topology each sender (large transfers both ways, held
// open) and each shape. Every connection has a deadline (-torture.deadline,
// 60 s: a bound on a hang, not a performance threshold). The short
// profile (the default, about 30 s under -race) is one wave of 600; the
// long one (-torture.duration=30m, `make torture`) runs waves with bigger
// payloads and longer stops until the time is up. The seed is printed
// (-torture.seed replays a run); -torture.only keeps the topologies
// whose name matches. At the end the figures are logged: transfers,
// bytes, duration, stalls, corruptions, truncations, failures, peak open
// connections, overall and per topology.
//
// Diagnostics (diag_test.go): a connection still not done at its deadline
// is a stall. While its sockets are still open, the suite prints the seed,
// how far each end got, `ss -tmi` of its sockets and of its topology's
// proxies, the test's goroutine stacks, and the stacks of the topology's
// attache processes (SIGQUIT, captured from their stderr), grouped, with
// the raw dumps kept in a directory named by the seed.
//
// The harness (plans, payloads, peers, shapes) knows nothing of attache:
// any path from a client to the torture backend can be put under it.
package torture
