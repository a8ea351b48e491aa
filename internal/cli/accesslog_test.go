package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/attache/attache/internal/daemon"
	"github.com/attache/attache/internal/testenv"
)

// TestAccessLogFollowsLogFlags: the buffered access log has the main
// logger's format and level: one tagged line at info (text and JSON), none
// at --log-level warn. The lines are all written by the time Main returns.
func TestAccessLogFollowsLogFlags(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	for _, tc := range []struct {
		args []string
		want string // "" for no access line
	}{
		{[]string{"--log-level", "info"}, `msg="connection closed" log=access service=`},
		{[]string{"--log-format", "json"}, `"msg":"connection closed","log":"access","service":`},
		{[]string{"--log-level", "warn"}, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ready := make(chan []daemon.Bound, 1)
			done := make(chan int, 1)
			var errb bytes.Buffer
			go func() {
				done <- Main(ctx, Env{Args: append(tc.args, "--forward", "127.0.0.1:0="+echo),
					Stdout: io.Discard, Stderr: &errb, Ready: func(b []daemon.Bound) { ready <- b }})
			}()
			var addr string
			select {
			case b := <-ready:
				addr = b[0].Addr.String()
			case code := <-done:
				t.Fatalf("exit %d before serving: %s", code, errb.String())
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("hi\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 3)); err != nil {
				t.Fatal(err)
			}
			c.Close()
			cancel()
			if code := <-done; code != ExitOK {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			got := strings.Count(errb.String(), "connection closed")
			switch {
			case tc.want == "" && got != 0:
				t.Fatalf("access line at %v:\n%s", tc.args, errb.String())
			case tc.want != "" && (got != 1 || !strings.Contains(errb.String(), tc.want)):
				t.Fatalf("want one line containing %s, got:\n%s", tc.want, errb.String())
			}
		})
	}
}
