package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Hosts are network namespaces standing for machines on one LAN: each host
// has an eth0 on a private /24, plugged into a bridge in a hub namespace
// (which has the .1 address and can run a shared server, such as etcd).
// Names and the subnet are unique per run; t.Cleanup removes every
// namespace (and so every interface), after killing what runs in them.
// Needs root (CAP_NET_ADMIN) and iproute2.
type Hosts struct {
	Hub    *Host
	ByName map[string]*Host
	t      testing.TB
}

// Host is one namespace.
type Host struct {
	Name   string // the host's name in the test ("a", "b", …)
	NS     string // the namespace's name
	IP     string // its address on the LAN
	hubEnd string // the veth end plugged into the hub's bridge
	hosts  *Hosts
}

// NetnsAvailable reports why network namespaces cannot be made here, or
// "" when they can.
func NetnsAvailable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "iproute2 (ip) is not installed"
	}
	return ""
}

// NewHosts makes a hub and one namespace per name.
func NewHosts(t testing.TB, names ...string) *Hosts {
	t.Helper()
	if why := NetnsAvailable(); why != "" {
		t.Fatalf("network namespaces: %s", why)
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	// 10.x.y.0/24 only exists inside these namespaces; nothing on the
	// machine routes to it.
	subnet := fmt.Sprintf("10.%d.%d", 100+int(rnd[0])%100, rnd[1])
	hs := &Hosts{ByName: map[string]*Host{}, t: t}
	hs.Hub = &Host{Name: "hub", NS: "at" + id + "hub", IP: subnet + ".1", hosts: hs}
	t.Cleanup(func() { hs.remove() })
	hs.ip("netns", "add", hs.Hub.NS)
	hs.ip("-n", hs.Hub.NS, "link", "set", "lo", "up")
	hs.ip("-n", hs.Hub.NS, "link", "add", "br0", "type", "bridge")
	hs.ip("-n", hs.Hub.NS, "addr", "add", hs.Hub.IP+"/24", "dev", "br0")
	hs.ip("-n", hs.Hub.NS, "link", "set", "br0", "up")
	for i, name := range names {
		h := &Host{Name: name, NS: "at" + id + name, IP: fmt.Sprintf("%s.%d", subnet, i+2), hubEnd: "v" + name, hosts: hs}
		hs.ByName[name] = h
		hs.ip("netns", "add", h.NS)
		hs.ip("-n", h.NS, "link", "set", "lo", "up")
		hs.ip("-n", hs.Hub.NS, "link", "add", h.hubEnd, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
		hs.ip("-n", hs.Hub.NS, "link", "set", h.hubEnd, "master", "br0", "up")
		hs.ip("-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
		hs.ip("-n", h.NS, "link", "set", "eth0", "up")
	}
	return hs
}

func (hs *Hosts) ip(args ...string) {
	hs.t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		hs.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// remove deletes the namespaces; processes still inside were started by
// the test and are killed by their own cleanups first (cleanups run last
// registered first).
func (hs *Hosts) remove() {
	all := []*Host{hs.Hub}
	for _, h := range hs.ByName {
		all = append(all, h)
	}
	for _, h := range all {
		if out, err := exec.Command("ip", "netns", "del", h.NS).CombinedOutput(); err != nil &&
			!strings.Contains(string(out), "No such file") {
			hs.t.Errorf("remove namespace %s: %v: %s", h.NS, err, out)
		}
	}
}

// Command is name run inside h (ip netns exec), not started. The process is
// the command itself (ip execs it), so its PID is the command's.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// SetLink brings h's cable up or down (its end on the hub's bridge): h
// keeps running but nothing reaches it, nor leaves it, as when a machine's
// network fails.
func (h *Host) SetLink(up bool) {
	h.hosts.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	h.hosts.ip("-n", h.hosts.Hub.NS, "link", "set", h.hubEnd, state)
}

// Dial connects from inside h. The socket is made on an OS thread switched
// into h's namespace, so it belongs there for its whole life; the thread
// is thrown away afterwards rather than switched back.
func (h *Host) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	return DialIn("/run/netns/"+h.NS, network, addr, timeout)
}

// DialIn connects from inside the network namespace at nsPath (such as a
// container's /proc/PID/ns/net), as Host.Dial does.
func DialIn(nsPath, network, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the goroutine ends locked, so Go ends the thread
		// and no other goroutine ever runs in h's namespace.
		runtime.LockOSThread()
		f, err := os.Open(nsPath)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		c, err := net.DialTimeout(network, addr, timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// Listen opens a listener inside h, as Dial connects from it: the socket
// is made on a thread switched into h's namespace and stays there.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see Dial
		f, err := os.Open("/run/netns/" + h.NS)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", h.NS, err)}
			return
		}
		ln, err := net.Listen(network, addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// Run runs name inside h and fails the test with its output if it fails.
func (h *Host) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := h.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s %s: %v: %s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
