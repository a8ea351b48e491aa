package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
)

// DockerTLSName is the DNS name in the certificate of DockerTLS's engine
// (with the address 127.0.0.1).
const DockerTLSName = "docker-engine.test"

// DockerTLS is the real engine's API served on a loopback TCP port over
// TLS that requires a client certificate, as dockerd --tlsverify serves
// it: socat terminates TLS (with OpenSSL) in front of the engine's unix
// socket, since this machine's dockerd listens on its socket only.
type DockerTLS struct {
	// Addr is the 127.0.0.1:port the engine is served on.
	Addr string
	// PKI is the CA that signed the engine's certificate and, until
	// Restart says otherwise, the one client certificates must come from.
	PKI *PKI
	// CertPath is a DOCKER_CERT_PATH directory for a client the engine
	// accepts: ca.pem (PKI's CA), cert.pem and key.pem.
	CertPath string

	certFile, keyFile string
	cmd               *exec.Cmd  // the running socat, nil when stopped
	exited            chan error // its Wait's result
}

// StartDockerTLS makes the certificates and starts socat; it stops it when
// the test ends.
func StartDockerTLS(t testing.TB) *DockerTLS {
	t.Helper()
	DockerAvailable(t)
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatalf("socat is needed for the Docker TLS tests (scripts/deps.sh installs it): %v", err)
	}
	d := &DockerTLS{PKI: NewPKI(t, "docker")}
	d.certFile, d.keyFile = d.PKI.Issue(t, certs.Request{Name: DockerTLSName, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	d.CertPath = d.PKI.CertPath(t, "attache-client")
	d.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t, "127.0.0.1")))
	t.Cleanup(d.stop)
	d.start(t, d.PKI.CAFile)
	return d
}

// CertPath writes a DOCKER_CERT_PATH directory for a client certificate
// named name, signed by p's CA, and returns it: cert.pem, key.pem, and
// ca.pem holding p's CA.
func (p *PKI) CertPath(t testing.TB, name string) string {
	t.Helper()
	cert, key := p.Issue(t, certs.Request{Name: name})
	dir := t.TempDir()
	for from, to := range map[string]string{p.CAFile: "ca.pem", cert: "cert.pem", key: "key.pem"} {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, to), data)
	}
	return dir
}

// Restart stops socat, ending every connection through it, and starts it
// again on the same port, now accepting client certificates signed by the
// CA in clientCA (as an engine whose CA was replaced).
func (d *DockerTLS) Restart(t testing.TB, clientCA string) {
	t.Helper()
	d.stop()
	d.start(t, clientCA)
}

func (d *DockerTLS) start(t testing.TB, clientCA string) {
	t.Helper()
	listen := fmt.Sprintf("OPENSSL-LISTEN:%s,bind=127.0.0.1,reuseaddr,fork,cert=%s,key=%s,cafile=%s,verify=1",
		portOf(d.Addr), d.certFile, d.keyFile, clientCA)
	cmd := exec.Command("socat", listen, "UNIX-CONNECT:"+DockerSocket(t))
	// Its own process group: stop ends the forked children, which hold
	// the connections, with the listener.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start socat: %v", err)
	}
	d.cmd, d.exited = cmd, make(chan error, 1)
	go func() { d.exited <- cmd.Wait() }()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case err := <-d.exited:
			d.cmd = nil
			t.Fatalf("socat exited before it listened on %s: %v\n%s", d.Addr, err, out)
		default:
		}
		c, err := net.DialTimeout("tcp", d.Addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("socat does not listen on %s after a minute: %v\n%s", d.Addr, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills socat's process group (the listener and the children serving
// connections) and waits for the listener to exit.
func (d *DockerTLS) stop() {
	if d.cmd == nil {
		return
	}
	if err := syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = d.cmd.Process.Kill()
	}
	<-d.exited
	d.cmd = nil
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}
