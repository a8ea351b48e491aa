// Command echoserver is the only process in the test image that testenv
// builds for Docker tests (see testenv.EchoImage). It listens on every TCP
// port named on its command line (7000 when none is), writes back whatever
// it reads and half-closes when the client does.
//
// With -greet it first writes the container's hostname and a newline, so a
// test that dials an address discovery reported can tell which container
// answered: Docker sets the hostname to the first 12 hex digits of the
// container ID.
//
// It is built with CGO_ENABLED=0 so it runs in an image FROM scratch, and it
// exits on SIGTERM itself: as PID 1 in a container a signal it does not
// handle would be ignored, and `docker stop` would wait for its timeout.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	greet := flag.Bool("greet", false, "write the hostname and a newline to each new connection before echoing")
	flag.Parse()
	ports := flag.Args()
	if len(ports) == 0 {
		ports = []string{"7000"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	hello := ""
	if *greet {
		host, err := os.Hostname()
		if err != nil {
			fmt.Fprintf(os.Stderr, "echoserver: hostname: %v\n", err)
			os.Exit(1)
		}
		hello = host + "\n"
	}
	for _, p := range ports {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			fmt.Fprintf(os.Stderr, "echoserver: port %q: want a number from 1 to 65535\n", p)
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", ":"+p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "echoserver: listen on port %s: %v\n", p, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "echoserver: listening on %s\n", ln.Addr())
		go accept(ln, hello)
	}
	<-ctx.Done()
	// Open connections die with the process; nothing to drain in a test image.
}

func accept(ln net.Listener, hello string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "echoserver: accept on %s: %v\n", ln.Addr(), err)
			return
		}
		go echo(c, hello)
	}
}

func echo(c net.Conn, hello string) {
	defer c.Close()
	if hello != "" {
		if _, err := io.WriteString(c, hello); err != nil {
			return
		}
	}
	_, _ = io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
