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
	usr2 := make(chan os.Signal, 1) // SIGUSR2 hands the listeners to a new process
	signal.Notify(usr2, syscall.SIGUSR2)
	env := cli.Stdio(os.Args[1:], hup)
	env.Upgrade = usr2
	code := cli.Main(ctx, env)
	stop()
	os.Exit(code)
}
