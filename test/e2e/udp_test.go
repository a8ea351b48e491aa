package e2e

import (
	"net"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestUDPLinkVariable: the binary reads ECHO_PORT_<p>_TCP and
// ECHO_PORT_<p>_UDP for one port and serves both, each to its own backend;
// a datagram goes through and its reply comes back.
func TestUDPLinkVariable(t *testing.T) {
	t.Parallel()
	tcpBackend := echoServer(t)
	udpBackend := testenv.StartUDPEcho(t, "127.0.0.1:0", "udp:")
	port := itoa(testenv.FreeTCPUDPPort(t))
	p := startAttache(t, []string{
		"ECHO_PORT_" + port + "_TCP=tcp://" + tcpBackend,
		"ECHO_PORT_" + port + "_UDP=udp://" + udpBackend.Addr,
	})
	p.listenAddrs(t, 2)
	p.waitLog(t, regexp.MustCompile(`msg=forwarding service=echo-`+port+`-udp .*protocol=udp`), startTimeout)

	c := dial(t, "127.0.0.1:"+port)
	roundTrip(t, c, "over TCP\n")
	c.Close() // or SIGTERM would wait out the grace period for it

	u, err := net.Dial("udp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	buf := make([]byte, 64)
	var got string
	for range 20 { // UDP may lose a datagram on a busy machine: resend
		if _, err := u.Write([]byte("over UDP")); err != nil {
			t.Fatal(err)
		}
		_ = u.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := u.Read(buf); err == nil {
			got = string(buf[:n])
			break
		}
	}
	if got != "udp:over UDP" {
		t.Fatalf("UDP reply %q, want %q", got, "udp:over UDP")
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, exitTimeout); code != 0 {
		t.Fatalf("exit code: got %d, want 0", code)
	}
}
