// Command naiveproxy is the baseline a Go programmer writes first: accept,
// dial the backend, and run two io.Copy calls per connection, one in each
// direction. It exists only so bench/ can show what attache adds over the
// standard library. It has no timeouts, no limits and no half-close: when
// either direction ends, both sockets are closed.
//
//	naiveproxy 127.0.0.1:7000=127.0.0.1:6379 [LISTEN=BACKEND ...]
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: naiveproxy LISTEN=BACKEND [LISTEN=BACKEND ...]")
		os.Exit(2)
	}
	for _, arg := range os.Args[1:] {
		listen, backend, ok := strings.Cut(arg, "=")
		if !ok {
			fail("%q: want LISTEN=BACKEND", arg)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			fail("%v", err)
		}
		go serve(ln, backend)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "naiveproxy: "+format+"\n", args...)
	os.Exit(1)
}

func serve(ln net.Listener, backend string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			// EMFILE and friends: back off instead of spinning.
			fmt.Fprintf(os.Stderr, "naiveproxy: accept: %v\n", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go handle(c, backend)
	}
}

// handle owns c: it is the first of the connection's two goroutines.
func handle(c net.Conn, backend string) {
	b, err := net.Dial("tcp", backend)
	if err != nil {
		c.Close()
		return
	}
	go pipe(b, c)
	pipe(c, b)
}

func pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}
