package backend

import "strings"

// UnixScheme starts a backend or listen address that is a Unix stream
// socket rather than host:port: unix:///run/app.sock.
const UnixScheme = "unix://"

// DialArgs is the network and address to dial for a backend address:
// ("unix", "/run/app.sock") for unix:///run/app.sock, else ("tcp", addr).
func DialArgs(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, UnixScheme); ok {
		return "unix", path
	}
	return "tcp", addr
}
