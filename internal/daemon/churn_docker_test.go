package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// dockerFreshEvery makes about every n-th change of TestChurnDocker start a
// new container: `docker run` costs about ten times a pause, so starting
// one at every change would slow the test without testing more.
const dockerFreshEvery = 20

// echoPort is where the echo containers listen (the image's default).
const echoPort = 7000

// TestChurnDocker changes a service's backends 100 times through the real
// Docker engine, under the same checksummed load as TestChurnStaticReload:
// no new connection fails, no established one drops, every byte arrives
// intact.
//
// The hard part is changing the set without the test itself killing
// connections, because a broken one must mean that attache broke it. The
// ways a container can leave the set the provider reports, weighed:
//
//   - stop, kill, remove: the container's processes die with their
//     connections. That is not attache's fault, but the test could not
//     tell it apart from attache's. Stopping only idle containers does not
//     work either: under a balanced load every member carries connections
//     at every moment, and no engine operation takes a container out of
//     rotation while letting them finish.
//   - network disconnect: the interface goes, and its connections with it.
//     Connecting a container to the network discovery prefers does move its
//     address without touching the old one, but only one way (moving back
//     is a disconnect), and at ~0.35 s a move it is slow.
//   - relabelling: a container's labels cannot change after creation.
//   - pinning the streams to a container that never leaves: short
//     connections in flight on a stopped one still die, and the streams
//     would never see their backend leave, half of what is being tested.
//   - pause: the provider drops a paused container (pause event, inspect,
//     State.Paused). The cgroup freezer stops the echo process but leaves
//     its network namespace and sockets alone: the kernel keeps the
//     connections established and buffers what attache sends, and the
//     echo answers once unpaused, which also puts the container back.
//
// Pause it is, with a consequence found by running it: until attache hears
// of a pause (an event, an inspect, the merger's 50 ms debounce), every
// worker that picks the paused container freezes there, so within that lag
// the whole short load is frozen and stays so until the unpause. A state in
// which a container is paused therefore carries no new short connections,
// and the test cannot wait for progress in it. So changes alternate: pause
// one member (removed; the test counts the connections it froze, read from
// the container's own socket table), then unpause it (added back; the
// frozen connections resume) and wait for new connections to complete
// before the next change. About every dockerFreshEvery changes, a new
// container is started instead, joining under load. Each member is paused
// in turn, so streams and short connections, balanced over the members as
// in the other churn tests, are frozen by removals over and over; and at
// least one member always stays running.
//
// What this cannot show: a new connection attache wrongly sent to a paused
// container would stall rather than fail, so the traffic count does not
// prove that routing leaves removed containers alone; the exact route
// awaited after every change does. Stop and kill, which kill connections,
// are checked at the end once the load is off.
func TestChurnDocker(t *testing.T) {
	testenv.DockerAvailable(t)
	begin := time.Now()
	w := watchRoutes(t)
	c := newDockerChurn(t)
	const initial = 3
	c.run()
	c.run()
	// The third is paused before attache starts: its first listing must
	// skip it, and the first change brings it in.
	c.pause(c.run())
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  docker: {network: %s}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [docker://%s]
`, c.network.Name, c.label))
	w.waitFor(t, "s", c.running()...)

	tr := testenv.StartTraffic(t, addr, 4, 4)
	// On failure, release frozen connections before the traffic's cleanup
	// waits for them (cleanups run last-in first-out).
	t.Cleanup(c.unpause)
	churnStart := time.Now()
	next := 0 // the member to pause next, in turn
	for i := 1; i <= churnChanges; i++ {
		switch {
		case c.paused != nil:
			c.unpause()
		case c.started-initial < i/dockerFreshEvery: // a start is due
			c.run()
		default:
			c.pause(c.all[next%len(c.all)])
			next++
		}
		w.waitFor(t, "s", c.running()...)
		if c.paused != nil {
			// The load is frozen until the unpause; see the doc comment.
			c.frozen += testenv.OpenConns(t, c.paused.pid, echoPort)
			continue
		}
		tr.AwaitProgress(4)
	}
	churnTime := time.Since(churnStart)
	c.unpause()
	w.waitFor(t, "s", c.running()...)
	tr.AwaitProgress(20)
	checkTraffic(t, tr.Stop())
	t.Logf("docker churn: %d changes in %v: %d containers started (%d under load), %d pauses freezing %d open connections in all, longest pause %v; whole test %v",
		churnChanges, churnTime.Round(time.Millisecond), c.started, c.started-initial, c.pauses, c.frozen,
		c.longestPause.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	if c.frozen == 0 {
		t.Errorf("no pause froze a connection: the churn never removed a container that was carrying traffic")
	}

	// Without load: a stopped and a killed container leave the set too.
	left := slices.Clone(c.all)
	for i, end := range []func(testing.TB){left[0].c.Stop, left[1].c.Kill} {
		end(t)
		w.waitFor(t, "s", addrsOf(left[i+1:])...)
	}
}

// churnContainer is one labelled echo container of TestChurnDocker.
type churnContainer struct {
	c    testenv.DockerContainer
	addr string // IP on the test network and echoPort
	pid  int    // of the echo server, to read its socket table
}

// dockerChurn starts, pauses and unpauses the containers of TestChurnDocker
// and keeps count. At most one container is paused at a time. It is used
// from the test goroutine only.
type dockerChurn struct {
	t        *testing.T
	network  testenv.DockerNetwork
	label    string            // attache.service value, unique to the test
	all      []*churnContainer // every container started, in order
	paused   *churnContainer   // nil when none is
	pausedAt time.Time

	started, pauses int
	frozen          int // connections open on containers when they were paused
	longestPause    time.Duration
}

func newDockerChurn(t *testing.T) *dockerChurn {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return &dockerChurn{t: t, network: testenv.NewDockerNetwork(t), label: "churn-" + hex.EncodeToString(rnd[:])}
}

// run starts a new labelled echo container that exposes its one port.
func (d *dockerChurn) run() *churnContainer {
	d.t.Helper()
	c := testenv.RunContainer(d.t, testenv.ContainerSpec{
		Labels:  map[string]string{"attache.service": d.label},
		Network: d.network.Name,
		Expose:  []int{echoPort},
	})
	b := &churnContainer{c: c, addr: net.JoinHostPort(c.IP(d.t, d.network.Name), fmt.Sprint(echoPort)), pid: c.PID(d.t)}
	d.all = append(d.all, b)
	d.started++
	return b
}

func (d *dockerChurn) pause(b *churnContainer) {
	d.t.Helper()
	b.c.Pause(d.t)
	d.paused, d.pausedAt = b, time.Now()
	d.pauses++
}

// unpause unpauses the paused container, if any.
func (d *dockerChurn) unpause() {
	d.t.Helper()
	if d.paused == nil {
		return
	}
	d.paused.c.Unpause(d.t)
	d.longestPause = max(d.longestPause, time.Since(d.pausedAt))
	d.paused = nil
}

// running returns the addresses the provider should report.
func (d *dockerChurn) running() []string {
	var out []string
	for _, b := range d.all {
		if b != d.paused {
			out = append(out, b.addr)
		}
	}
	return out
}

func addrsOf(cs []*churnContainer) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.addr
	}
	return out
}
