package daemon

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// discovery.docker.tls in the file reaches an engine that requires a client
// certificate (the real engine behind socat's TLS): a connection to the
// service ends at the labelled container.
func TestDockerDiscoveryOverTLS(t *testing.T) {
	front := testenv.StartDockerTLS(t)
	nw := testenv.NewDockerNetwork(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	label := "tls-" + hex.EncodeToString(b[:])
	c := testenv.RunContainer(t, testenv.ContainerSpec{
		Labels: map[string]string{"attache.service": label, "attache.port": "7000"}, Network: nw.Name, Greet: true,
	})
	dir := front.CertPath
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  docker:
    host: tcp://%s
    network: %s
    tls: {ca: %s, cert: %s, key: %s, server_name: %s}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [docker://%s]
`, front.Addr, nw.Name, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"),
		testenv.DockerTLSName, label))

	var got string
	testenv.WaitFor(t, "the container's greeting through attache", func() bool {
		got = firstLine(addr)
		return got == c.Hostname()
	})
}

// firstLine reads the first line a connection to addr gets, "" on error.
func firstLine(addr string) string {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return ""
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return ""
	}
	return strings.TrimSpace(line)
}
