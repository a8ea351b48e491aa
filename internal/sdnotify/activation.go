package sdnotify

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Environment variables of socket activation (sd_listen_fds(3)).
const (
	EnvListenFDs     = "LISTEN_FDS"
	EnvListenPID     = "LISTEN_PID"
	EnvListenFDNames = "LISTEN_FDNAMES"
)

// ActivationVars are the variables of socket activation. The caller unsets
// them (os.Unsetenv) once it has the sockets, so no child process, such as
// the new process of an upgrade, takes its own descriptors 3, 4… for
// sockets passed by systemd.
var ActivationVars = []string{EnvListenFDs, EnvListenPID, EnvListenFDNames}

// listenFDsStart is the first passed descriptor (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS against a corrupt value; systemd itself
// passes at most a few hundred.
const maxListenFDs = 4096

// Passed is one socket handed over by socket activation.
type Passed struct {
	// Name is its LISTEN_FDNAMES entry (the socket unit's
	// FileDescriptorName=, by default the unit's name), "" if none was given.
	Name string
	// FD is the descriptor number (3, 4, …), for messages.
	FD int
	// File is the descriptor, made close-on-exec. The caller owns it and
	// closes it. (Its Fd method would switch the shared socket to blocking
	// mode: use FD to name it.)
	File *os.File
}

// Label names the socket in messages: "fd 3 (attache.socket)".
func (p Passed) Label() string {
	if p.Name == "" {
		return fmt.Sprintf("fd %d", p.FD)
	}
	return fmt.Sprintf("fd %d (%s)", p.FD, p.Name)
}

// Activation returns the sockets passed to the process pid by socket
// activation, as described by LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES in
// environ. It returns nothing, and no error, when LISTEN_FDS is unset or
// LISTEN_PID names another process (the variables were inherited, meant
// for a parent). Malformed values are errors that name the variable.
func Activation(environ []string, pid int) ([]Passed, error) {
	fds, lpid := lookup(environ, EnvListenFDs), lookup(environ, EnvListenPID)
	if fds == "" {
		return nil, nil
	}
	if lpid == "" {
		return nil, fmt.Errorf("%s=%s is set but %s is not: both come from socket activation", EnvListenFDs, fds, EnvListenPID)
	}
	p, err := strconv.Atoi(lpid)
	if err != nil || p <= 0 {
		return nil, fmt.Errorf("%s=%q: want a process id", EnvListenPID, lpid)
	}
	if p != pid {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > maxListenFDs {
		return nil, fmt.Errorf("%s=%q: want a number of descriptors (0 to %d)", EnvListenFDs, fds, maxListenFDs)
	}
	var names []string
	if v := lookup(environ, EnvListenFDNames); v != "" { // set but empty: no names
		names = strings.Split(v, ":")
		if len(names) != n {
			return nil, fmt.Errorf("%s=%q names %d sockets, but %s=%d", EnvListenFDNames, v, len(names), EnvListenFDs, n)
		}
	}
	out := make([]Passed, n)
	for i := range n {
		fd := listenFDsStart + i
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			for _, q := range out[:i] {
				q.File.Close()
			}
			return nil, fmt.Errorf("%s=%d: fd %d: %w", EnvListenFDs, n, fd, err)
		}
		syscall.CloseOnExec(fd)
		name := ""
		if names != nil {
			name = names[i]
		}
		out[i] = Passed{Name: name, FD: fd, File: os.NewFile(uintptr(fd), "listen-fd-"+strconv.Itoa(fd))}
	}
	return out, nil
}
