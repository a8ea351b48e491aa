// Command attache is an ambassador proxy: it forwards TCP connections from
// local ports to wherever the real services live. See the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/attache/attache/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// The first signal starts a graceful stop; a second one gets the
	// default action and ends the process at once.
	context.AfterFunc(ctx, stop)
	hup := make(chan os.Signal, 1) // SIGHUP reloads the configuration
	signal.Notify(hup, syscall.SIGHUP)
	code := cli.Main(ctx, cli.Stdio(os.Args[1:], hup))
	stop()
	os.Exit(code)
}
