package sdnotify

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestActivationEnviron(t *testing.T) {
	pid := os.Getpid()
	me := strconv.Itoa(pid)
	tests := []struct {
		name string
		env  []string
		err  string
	}{
		{name: "unset", env: []string{"PATH=/bin"}},
		{name: "for another process", env: []string{"LISTEN_FDS=2", "LISTEN_PID=1"}},
		{name: "no pid", env: []string{"LISTEN_FDS=2"}, err: "LISTEN_FDS=2 is set but LISTEN_PID is not"},
		{name: "bad pid", env: []string{"LISTEN_FDS=2", "LISTEN_PID=me"}, err: `LISTEN_PID="me": want a process id`},
		{name: "bad count", env: []string{"LISTEN_FDS=two", "LISTEN_PID=" + me}, err: `LISTEN_FDS="two": want a number`},
		{name: "names mismatch", env: []string{"LISTEN_FDS=2", "LISTEN_PID=" + me, "LISTEN_FDNAMES=a:b:c"},
			err: `LISTEN_FDNAMES="a:b:c" names 3 sockets, but LISTEN_FDS=2`},
		{name: "zero", env: []string{"LISTEN_FDS=0", "LISTEN_PID=" + me}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Activation(tt.env, pid)
			if tt.err == "" {
				if err != nil || len(got) != 0 {
					t.Fatalf("Activation(%q) = %v, %v; want nothing", tt.env, got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Activation(%q) error %v, want one containing %q", tt.env, err, tt.err)
			}
		})
	}
}

// TestActivationPassedSockets passes a real TCP listener and a real UDP
// socket to a child process as descriptors 3 and 4, with LISTEN_PID set to
// the child's own pid the way systemd does (a shell sets it to $$, then
// execs the test binary, which keeps the pid and the descriptors).
func TestActivationPassedSockets(t *testing.T) {
	if os.Getenv("SDNOTIFY_ACTIVATION_CHILD") == "1" {
		activationChild()
		return
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	lnFile, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lnFile.Close()
	pcFile, err := pc.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer pcFile.Close()

	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run='^TestActivationPassedSockets$' -test.count=1`, os.Args[0])
	cmd.Env = append(os.Environ(), "SDNOTIFY_ACTIVATION_CHILD=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:dns")
	cmd.ExtraFiles = []*os.File{lnFile, pcFile}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, want := range []string{
		"fd 3 (web) listener " + ln.Addr().String() + " cloexec=true",
		"fd 4 (dns) packet " + pc.LocalAddr().String() + " cloexec=true",
	} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("child's output lacks %q:\n%s", want, out)
		}
	}
}

// activationChild prints what Activation found, one line a socket.
func activationChild() {
	passed, err := Activation(os.Environ(), os.Getpid())
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for _, p := range passed {
		flags, err := unix.FcntlInt(uintptr(p.FD), unix.F_GETFD, 0)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		cloexec := flags&unix.FD_CLOEXEC != 0
		if ln, err := net.FileListener(p.File); err == nil {
			fmt.Printf("%s listener %s cloexec=%v\n", p.Label(), ln.Addr(), cloexec)
			continue
		}
		if pc, err := net.FilePacketConn(p.File); err == nil {
			fmt.Printf("%s packet %s cloexec=%v\n", p.Label(), pc.LocalAddr(), cloexec)
			continue
		}
		fmt.Printf("%s: neither a listener nor a packet socket\n", p.Label())
	}
}
