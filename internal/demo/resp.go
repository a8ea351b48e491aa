// Package demo holds the embedded backend of `attache demo`: a tiny server
// speaking enough of the Redis protocol (PING, ECHO, SET, GET, DEL, QUIT) for
// redis-cli and the demo client to talk to it through an ambassador. It is a
// teaching aid, not a Redis: the tests that matter use a real redis-server.
package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Server is the demo key-value server.
type Server struct {
	mu   sync.Mutex
	data map[string]string
}

// Serve answers connections on ln until ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Go(func() {
			stopConn := context.AfterFunc(ctx, func() { c.Close() })
			defer stopConn()
			defer c.Close()
			s.serveConn(c)
		})
	}
}

func (s *Server) serveConn(c net.Conn) {
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	for {
		args, err := ReadCommand(r)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				fmt.Fprintf(w, "-ERR %s\r\n", err)
				w.Flush()
			}
			return
		}
		quit := s.exec(w, args)
		// Flush only when the client has nothing more queued, so
		// pipelined commands get one write.
		if r.Buffered() == 0 || quit {
			if w.Flush() != nil || quit {
				return
			}
		}
	}
}

func (s *Server) exec(w *bufio.Writer, args []string) (quit bool) {
	if len(args) == 0 {
		return false
	}
	switch cmd := strings.ToUpper(args[0]); {
	case cmd == "PING" && len(args) == 1:
		w.WriteString("+PONG\r\n")
	case cmd == "PING" && len(args) == 2, cmd == "ECHO" && len(args) == 2:
		writeBulk(w, args[1])
	case cmd == "SET" && len(args) == 3:
		s.mu.Lock()
		if s.data == nil {
			s.data = map[string]string{}
		}
		s.data[args[1]] = args[2]
		s.mu.Unlock()
		w.WriteString("+OK\r\n")
	case cmd == "GET" && len(args) == 2:
		s.mu.Lock()
		v, ok := s.data[args[1]]
		s.mu.Unlock()
		if !ok {
			w.WriteString("$-1\r\n")
		} else {
			writeBulk(w, v)
		}
	case cmd == "DEL" && len(args) >= 2:
		n := 0
		s.mu.Lock()
		for _, k := range args[1:] {
			if _, ok := s.data[k]; ok {
				delete(s.data, k)
				n++
			}
		}
		s.mu.Unlock()
		fmt.Fprintf(w, ":%d\r\n", n)
	case cmd == "QUIT":
		w.WriteString("+OK\r\n")
		return true
	default:
		fmt.Fprintf(w, "-ERR unknown command or wrong number of arguments for '%s'\r\n", args[0])
	}
	return false
}

func writeBulk(w *bufio.Writer, v string) {
	fmt.Fprintf(w, "$%d\r\n%s\r\n", len(v), v)
}

// ReadCommand reads one command: a RESP array of bulk strings, or an inline
// command line as typed into telnet.
func ReadCommand(r *bufio.Reader) ([]string, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return strings.Fields(line), nil
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("protocol error: bad array header %q", line)
	}
	args := make([]string, 0, n)
	for range n {
		h, err := readLine(r)
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimPrefix(h, "$"))
		if !strings.HasPrefix(h, "$") || err != nil || size < 0 || size > 1<<20 {
			return nil, fmt.Errorf("protocol error: bad bulk header %q", h)
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		args = append(args, string(buf[:size]))
	}
	return args, nil
}

// ReadReply reads one reply and renders it the way redis-cli does.
func ReadReply(r *bufio.Reader) (string, error) {
	line, err := readLine(r)
	if err != nil {
		return "", err
	}
	if line == "" {
		return "", errors.New("protocol error: empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "(error) " + line[1:], nil
	case '$':
		size, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("protocol error: bad bulk header %q", line)
		}
		if size < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return strconv.Quote(string(buf[:size])), nil
	}
	return "", fmt.Errorf("protocol error: unexpected reply %q", line)
}

// WriteCommand encodes args as a RESP array.
func WriteCommand(w io.Writer, args ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && line == "" {
			return "", io.EOF
		}
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}
