package listen

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/sdnotify"
)

// Socket activation: systemd (or systemd-socket-activate) binds the ports
// and passes the listening sockets as descriptors 3, 4, … (see package
// sdnotify). Each passed socket goes to the configured listener it was made
// for, found by the name systemd gives it (LISTEN_FDNAMES, the socket
// unit's FileDescriptorName=) when that is a listener's name, else by its
// local address. A configured listener without a passed socket is opened
// as usual; a passed socket that no listener wants is an error, since a
// port that systemd holds open and nobody serves would take connections
// that never get an answer.

// Want is a listener the configuration asks for, as socket activation
// matches it.
type Want struct {
	// Name is the service's name, or "admin", "link", "transparent": a
	// passed socket of that name goes to this listener whatever its
	// address.
	Name string
	// Network is "tcp", "udp" or "unix".
	Network string
	// Addr is the configured address (host:port), or a Unix socket's path.
	Addr string
}

// key is how an activated socket is found again: by network family and
// configured address ("tcp 127.0.0.1:6379").
func (w Want) key() string { return w.Network + " " + w.Addr }

// Activated matches the sockets passed by socket activation to the wanted
// listeners and returns them ready to be taken (Take, Listen and
// TakePacket find them by configured address). It takes ownership of every
// passed file: on error, all are closed. ctx bounds resolving a listener's
// host name.
func Activated(ctx context.Context, passed []sdnotify.Passed, want []Want) (*Inherited, error) {
	in := &Inherited{sockets: map[string][]net.Listener{}, activated: map[string]any{}}
	fail := func(err error) (*Inherited, error) {
		for _, p := range passed {
			p.File.Close()
		}
		in.closeAll()
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	for i, p := range passed {
		sock, network, local, err := adoptPassed(p)
		if err != nil {
			return fail(err)
		}
		w, ok := matchWant(ctx, p.Name, network, local, want, in.activated)
		if !ok {
			closeAny(sock)
			return fail(fmt.Errorf("%s, a %s socket on %s, matches no configured listener (configured: %s); remove it from the socket unit or configure a listener on that address",
				p.Label(), strings.ToUpper(network), local, describe(want)))
		}
		in.activated[w.key()] = sock
		p.File.Close() // the listener holds a duplicate of its own
		passed[i].File = nil
	}
	return in, nil
}

// adoptPassed turns one passed descriptor into a listener (stream) or a
// packet connection (UDP), and says which network and address it has.
func adoptPassed(p sdnotify.Passed) (sock any, network string, local net.Addr, err error) {
	typ, err := unix.GetsockoptInt(p.FD, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, "", nil, fmt.Errorf("%s is not a socket: %w", p.Label(), err)
	}
	switch typ {
	case unix.SOCK_STREAM:
		if v, err := unix.GetsockoptInt(p.FD, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v == 0 {
			return nil, "", nil, fmt.Errorf("%s is a stream socket that is not listening (the socket unit needs Accept=no)", p.Label())
		}
		ln, err := net.FileListener(p.File)
		if err != nil {
			return nil, "", nil, fmt.Errorf("%s: %w", p.Label(), err)
		}
		switch ln.(type) {
		case *net.TCPListener:
			return ln, "tcp", ln.Addr(), nil
		case *net.UnixListener:
			return ln, "unix", ln.Addr(), nil
		}
		ln.Close()
		return nil, "", nil, fmt.Errorf("%s: a %T, want TCP or Unix", p.Label(), ln)
	case unix.SOCK_DGRAM:
		pc, err := net.FilePacketConn(p.File)
		if err != nil {
			return nil, "", nil, fmt.Errorf("%s: %w", p.Label(), err)
		}
		if _, ok := pc.(*net.UDPConn); !ok {
			pc.Close()
			return nil, "", nil, fmt.Errorf("%s: a datagram socket on %s, want UDP", p.Label(), pc.LocalAddr())
		}
		return pc, "udp", pc.LocalAddr(), nil
	}
	return nil, "", nil, fmt.Errorf("%s: socket type %d, want a listening stream socket or a UDP socket", p.Label(), typ)
}

// matchWant finds the listener a passed socket is for: by name first, then
// by address, skipping listeners already given a socket.
func matchWant(ctx context.Context, name, network string, local net.Addr, want []Want, taken map[string]any) (Want, bool) {
	free := func(w Want) bool {
		_, ok := taken[w.key()]
		return w.Network == network && !ok
	}
	for _, w := range want {
		if name != "" && w.Name == name && free(w) {
			return w, true
		}
	}
	for _, w := range want {
		if free(w) && addrMatches(ctx, local, w.Addr) {
			return w, true
		}
	}
	return Want{}, false
}

// addrMatches reports whether a bound address is the configured one: the
// same Unix path, or the same port and IP. An empty or unspecified host
// matches any unspecified address (systemd's ListenStream=PORT binds [::],
// which serves IPv4 too); a host name matches any of its addresses.
func addrMatches(ctx context.Context, local net.Addr, configured string) bool {
	var ip net.IP
	var port int
	switch a := local.(type) {
	case *net.UnixAddr:
		return a.Name == configured
	case *net.TCPAddr:
		ip, port = a.IP, a.Port
	case *net.UDPAddr:
		ip, port = a.IP, a.Port
	default:
		return false
	}
	host, portText, err := net.SplitHostPort(configured)
	if err != nil {
		return false
	}
	if p, err := strconv.Atoi(portText); err != nil || p != port {
		return false
	}
	got, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	got = got.Unmap()
	if host == "" {
		return got.IsUnspecified()
	}
	if want, err := netip.ParseAddr(host); err == nil {
		want = want.Unmap()
		return want == got || (want.IsUnspecified() && got.IsUnspecified())
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.Unmap() == got {
			return true
		}
	}
	return false
}

func describe(want []Want) string {
	if len(want) == 0 {
		return "none"
	}
	parts := make([]string, len(want))
	for i, w := range want {
		parts[i] = fmt.Sprintf("%s %s %s", w.Name, w.Network, w.Addr)
	}
	return strings.Join(parts, ", ")
}

func closeAny(sock any) {
	if c, ok := sock.(interface{ Close() error }); ok {
		_ = c.Close()
	}
}

// takeActivated returns the activated socket for a configured address, or
// nil. network is as given to Listen ("tcp4", "tcp6", "tcp", "unix", "udp"
// …). in.mu is held.
func (in *Inherited) takeActivated(network, addr string) any {
	k := Want{Network: strings.TrimRight(network, "46"), Addr: addr}.key()
	sock, ok := in.activated[k]
	if !ok {
		return nil
	}
	delete(in.activated, k)
	return sock
}

// TakePacket returns the UDP socket passed by socket activation for a
// configured address, or nil if there is none (or in is nil). Upgrades do
// not hand UDP sockets over (the new process binds beside the old one), so
// only activation has any.
func (in *Inherited) TakePacket(network, addr string) net.PacketConn {
	if in == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	pc, _ := in.takeActivated(network, addr).(net.PacketConn)
	return pc
}

// IsUpgrade reports whether the sockets came from an old process in an
// upgrade (as opposed to socket activation, or nothing when in is nil).
func (in *Inherited) IsUpgrade() bool {
	return in != nil && in.activated == nil
}

// closeActivated closes the activated sockets nobody took and returns their
// names. in.mu is held.
func (in *Inherited) closeActivated() []string {
	var names []string
	for k, sock := range in.activated {
		closeAny(sock)
		names = append(names, "activated "+k)
	}
	clear(in.activated)
	return names
}
