package transparent

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// With TPROXY (Spec.TProxy) nothing is rewritten: the packets keep their
// destination, and the kernel delivers them to a listening socket that
// set IP_TRANSPARENT (IPV6_TRANSPARENT), which may accept connections to
// addresses that are not its own. The original destination is then the
// accepted connection's own local address (TProxyDst), and no connection
// tracking entry is needed.

// TProxyControl is a net.ListenConfig Control that marks the listening
// socket transparent, chained after next (which may be nil). It needs
// CAP_NET_ADMIN; without it the listen fails with the reason.
func TProxyControl(next func(network, address string, c syscall.RawConn) error) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if next != nil {
			if err := next(network, address, c); err != nil {
				return err
			}
		}
		// One flag of the socket: on an IPv6 socket, dual-stack ones
		// included, IPV6_TRANSPARENT sets it for its IPv4 connections too.
		level, opt, name := unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
		if network == "tcp6" {
			level, opt, name = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			if e := unix.SetsockoptInt(int(fd), level, opt, 1); e != nil {
				serr = fmt.Errorf("setsockopt %s (TPROXY needs CAP_NET_ADMIN): %w", name, e)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// TProxyDst is the original destination of a connection a transparent
// (TPROXY) listener accepted: its local address, unmapped.
func TProxyDst(local net.Addr) (netip.AddrPort, error) {
	ta, ok := local.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: want a TCP connection, got %T", local)
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
