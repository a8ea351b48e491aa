package daemon

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/testenv"
)

// killableEcho is an echo backend a test can kill outright: its listener
// and every open connection close at once, as when a container dies.
type killableEcho struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
	dead  bool
	late  int // connections accepted after the kill began, reset at once
	wg    sync.WaitGroup
}

func startKillableEcho(t *testing.T) *killableEcho {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &killableEcho{ln: ln, conns: map[net.Conn]bool{}}
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			if e.dead {
				e.late++
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				e.mu.Unlock()
				continue
			}
			e.conns[c] = true
			e.mu.Unlock()
			e.wg.Go(func() {
				_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				_ = c.(*net.TCPConn).CloseWrite()
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
				c.Close()
			})
		}
	})
	t.Cleanup(func() { e.kill() })
	return e
}

func (e *killableEcho) addr() string { return e.ln.Addr().String() }

// kill resets every connection the backend holds, including those that
// completed the handshake but wait in the listen backlog (they die with the
// listener too), and returns how many connections it killed.
func (e *killableEcho) kill() int {
	e.mu.Lock()
	e.dead = true
	n := len(e.conns)
	for c := range e.conns {
		c.(*net.TCPConn).SetLinger(0) // a reset, as from a dead host's kernel
		c.Close()
	}
	e.mu.Unlock()
	// Count the backlog before closing the listener: accept what is queued,
	// without blocking, and reset it.
	if raw, err := e.ln.(*net.TCPListener).SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			for {
				nfd, _, err := unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
				if err != nil {
					return
				}
				_ = unix.SetsockoptLinger(nfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
				unix.Close(nfd)
				n++
			}
		})
	}
	e.ln.Close()
	e.wg.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	return n + e.late
}

// TestKillOneOfTwoBackends: under load, one of two backends dies. Clients
// see no errors beyond the connections that were open on the dead one; the
// health check marks it down, and the time that took is reported.
func TestKillOneOfTwoBackends(t *testing.T) {
	for _, active := range []bool{false, true} {
		t.Run(fmt.Sprintf("active_check=%v", active), func(t *testing.T) {
			changes := make(chan time.Time, 10)
			testHookHealth = func(service, addr string, healthy bool) {
				if !healthy {
					changes <- time.Now()
				}
			}
			t.Cleanup(func() { testHookHealth = nil })
			victim, survivor := startKillableEcho(t), startKillableEcho(t)
			check := ""
			if active {
				check = "    health_check: {interval: 100ms, timeout: 100ms, fall: 2, rise: 2}\n"
			}
			d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: s
    listen: 127.0.0.1:0
    backends: [%s, %s]
    balance: least_conn
%s`, victim.addr(), survivor.addr(), check))
			tr := testenv.StartTraffic(t, d.bound[0].Addr.String(), 4, 4)
			tr.AwaitProgress(50)
			// What attache had on the victim: its connections made so far,
			// then those open or being dialled (in that order, so one picked
			// in between is counted by the later total).
			before := victimState(t, d, victim.addr())
			picked := victimState(t, d, victim.addr()).Active
			killed := time.Now()
			open := victim.kill()
			tr.AwaitProgress(200)
			if active {
				select {
				case at := <-changes:
					t.Logf("active check marked the dead backend down %s after the kill", at.Sub(killed).Round(time.Millisecond))
				case <-time.After(30 * time.Second):
					t.Error("the health check never marked the dead backend down")
				}
			}
			r := tr.Stop()
			// A client fails only if its connection was on the victim: open
			// or being dialled at the kill, or connected after it (a
			// handshake the kernel completed into the dying listener's
			// backlog between its last accept and its close).
			after := victimState(t, d, victim.addr()).Connections - before.Connections
			t.Logf("traffic: %s; connections on the victim at the kill: %d by its own count, %d by attache's; connected after: %d",
				r, open, picked, after)
			if failed := r.ShortFailed + r.StreamFailed; failed > picked+after {
				t.Errorf("%d connections failed, more than were on the dead backend (%d open or dialling at the kill plus %d connected after it): %s",
					failed, picked, after, r)
			}
			if r.ShortOK == 0 {
				t.Errorf("no traffic: %s", r)
			}
		})
	}
}

// TestCloseOnRemove: with close_on_remove, connections to a backend that
// leaves the set are closed; without it they carry on.
func TestCloseOnRemove(t *testing.T) {
	for _, closeOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("close_on_remove=%v", closeOn), func(t *testing.T) {
			w := watchRoutes(t)
			a, b := testenv.Echo(t, "127.0.0.1:0"), testenv.Echo(t, "127.0.0.1:0")
			file := func(backend string) string {
				return fmt.Sprintf("services:\n  - name: s\n    listen: 127.0.0.1:0\n    backends: [%s]\n    close_on_remove: %v\n", backend, closeOn)
			}
			addr, reload := startDaemon(t, file(a))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			if err := reload(file(b)); err != nil {
				t.Fatal(err)
			}
			w.waitFor(t, "s", b)
			_, werr := c.Write([]byte("y"))
			_, rerr := io.ReadFull(c, make([]byte, 1))
			alive := werr == nil && rerr == nil
			if alive == closeOn {
				t.Errorf("connection alive=%v after its backend was removed (write %v, read %v); want alive=%v", alive, werr, rerr, !closeOn)
			}
		})
	}
}

// victimState is the admin API's view of one backend of service s.
func victimState(t *testing.T, d *adminDaemon, addr string) admin.Backend {
	t.Helper()
	for _, b := range d.services(t)["s"].Backends {
		if b.Addr == addr {
			return b
		}
	}
	t.Fatalf("backend %s not in /v1/services", addr)
	return admin.Backend{}
}
