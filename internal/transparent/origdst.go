// Package transparent is what attache needs to serve connections that
// iptables redirected to it instead of connections addressed to it: reading
// the destination the client meant (OriginalDst), and the nat rules that
// redirect a consumer's traffic (Rules, Apply).
//
// A REDIRECT (or DNAT) rule rewrites the destination of a connection's
// packets; the kernel's connection tracking remembers the original, and
// hands it back to the socket that accepted the connection through
// getsockopt(SO_ORIGINAL_DST) for IPv4, IP6T_SO_ORIGINAL_DST for IPv6.
package transparent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/
// ip6_tables.h (the same number as SO_ORIGINAL_DST, at level SOL_IPV6);
// x/sys does not name it.
const ip6tSOOriginalDst = 80

// ErrNotTracked is OriginalDst's error when the kernel has no connection
// tracking entry for the connection: conntrack is not loaded, or nothing
// made it track this flow (no nat rule at all matched).
var ErrNotTracked = errors.New("no connection tracking entry (was the connection redirected by an iptables nat rule?)")

// OriginalDst is the destination the client of an accepted connection
// connected to, before a nat rule redirected it here. For a connection that
// was not redirected it is the connection's own local address (conntrack
// tracks it unchanged), which the caller must treat as "not redirected".
// An IPv4 client on a dual-stack socket is asked at the IPv4 level, since
// conntrack tracked an IPv4 flow; the address is returned unmapped.
func OriginalDst(c syscall.Conn, local net.Addr) (netip.AddrPort, error) {
	v6 := true
	if ta, ok := local.(*net.TCPAddr); ok {
		if ap := ta.AddrPort(); ap.Addr().Unmap().Is4() {
			v6 = false
		}
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var (
		ap   netip.AddrPort
		oerr error
	)
	if err := raw.Control(func(fd uintptr) { ap, oerr = originalDst(int(fd), v6) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return ap, oerr
}

// originalDst asks the kernel on fd. Both answers fit a sockaddr_in6
// buffer: the kernel writes a sockaddr_in (16 bytes) at the IPv4 level.
func originalDst(fd int, v6 bool) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	size := uint32(unsafe.Sizeof(sa))
	level, opt, name := unix.SOL_IP, unix.SO_ORIGINAL_DST, "SO_ORIGINAL_DST"
	if v6 {
		level, opt, name = unix.SOL_IPV6, ip6tSOOriginalDst, "IP6T_SO_ORIGINAL_DST"
	}
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		if errno == unix.ENOENT {
			return netip.AddrPort{}, fmt.Errorf("getsockopt %s: %w", name, ErrNotTracked)
		}
		return netip.AddrPort{}, fmt.Errorf("getsockopt %s: %w", name, errno)
	}
	// The port is in network byte order, at the same offset in both layouts.
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port := uint16(pb[0])<<8 | uint16(pb[1])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), nil
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("getsockopt %s: unexpected address family %d", name, sa.Family)
}
