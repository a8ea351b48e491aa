package config

import (
	"fmt"
	"path/filepath"
	"strings"
)

// unixScheme starts a listen or backend address that is a Unix stream
// socket: unix:///run/app.sock (the same prefix as backend.UnixScheme).
const unixScheme = "unix://"

// maxUnixPath is the longest socket path the kernel accepts (sun_path is
// 108 bytes, the last one a NUL).
const maxUnixPath = 107

// ParseUnixAddr checks a Unix socket address, unix:///absolute/path, and
// returns it in canonical form (the path cleaned: no "//", "." or a
// trailing slash), which it accepts unchanged.
func ParseUnixAddr(s string) (string, error) {
	path, ok := strings.CutPrefix(s, unixScheme)
	if !ok {
		return "", fmt.Errorf("want unix:///absolute/path, got %q", s)
	}
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("want unix:///absolute/path (three slashes), got %q", s)
	}
	if err := checkText(path); err != nil {
		return "", fmt.Errorf("socket path: %w", err)
	}
	path = filepath.Clean(path)
	if path == "/" {
		return "", fmt.Errorf("want a socket file path after unix://, got %q", s)
	}
	if len(path) > maxUnixPath {
		return "", fmt.Errorf("socket path %q is %d bytes long; the kernel takes at most %d", path, len(path), maxUnixPath)
	}
	return unixScheme + path, nil
}

// UnixPath is the socket path of a unix:// address, and whether addr is one.
func UnixPath(addr string) (string, bool) {
	return strings.CutPrefix(addr, unixScheme)
}

// ParseBackendAddr checks a fixed backend address: host:port, or a Unix
// socket as unix:///path. It returns the canonical form.
func ParseBackendAddr(s string) (string, error) {
	if strings.HasPrefix(s, unixScheme) {
		return ParseUnixAddr(s)
	}
	return ParseHostPort(s)
}
