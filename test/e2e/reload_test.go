package e2e

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// nameServer answers every connection with name and closes.
func nameServer(t *testing.T, name string) string {
	return serveTCP(t, func(c *net.TCPConn) { _, _ = io.WriteString(c, name) })
}

func reachName(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestSIGHUPReloadsTheFile edits the config file under a running attache:
// SIGHUP applies a good file, and a broken one is refused with the old
// configuration still serving.
func TestSIGHUPReloadsTheFile(t *testing.T) {
	t.Parallel()
	one, two := nameServer(t, "one"), nameServer(t, "two")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	file := filepath.Join(t.TempDir(), "attache.yaml")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("services:\n  - name: svc\n    listen: " + listen + "\n    backends: [" + one + "]\n")
	p := startAttache(t, nil, "-c", file)
	p.listenAddrs(t, 1)
	if got := reachName(t, listen); got != "one" {
		t.Fatalf("before reload: %q", got)
	}

	write("services:\n  - name: svc\n    listen: " + listen + "\n    backends: [" + two + "]\n")
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, regexp.MustCompile(`msg=reloaded`), 10*time.Second)
	if got := reachName(t, listen); got != "two" {
		t.Fatalf("after reload: %q, want two", got)
	}

	write("services:\n  - name: svc\n    listn: " + listen + "\n")
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, regexp.MustCompile(`reload failed.*listn: unknown key`), 10*time.Second)
	if got := reachName(t, listen); got != "two" {
		t.Fatalf("after a failed reload: %q, want the old route (two)", got)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}
