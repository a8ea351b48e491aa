package cli

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/daemon"
	"github.com/attache/attache/internal/demo"
)

func demoCommand(e Env) *cobra.Command {
	var (
		stay   bool
		listen string
	)
	c := &cobra.Command{
		Use:   "demo [--stay] [--listen HOST:PORT]",
		Short: "run a live demo: an embedded backend behind an ambassador",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitWith(runDemo(cmd.Context(), e, stay, listen))
		},
	}
	c.Flags().BoolVar(&stay, "stay", false, "keep the demo running until Ctrl-C")
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "ambassador listen `ADDRESS` (HOST:PORT)")
	return c
}

// runDemo starts the embedded key-value backend, an ambassador in front of
// it, and sends a few commands through the ambassador, printing each one.
// With --stay it keeps both running so redis-cli can be pointed at it.
func runDemo(ctx context.Context, e Env, stay bool, listen string) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	backendLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache demo: backend: %v\n", err)
		return ExitRuntime
	}
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	srv := &demo.Server{}
	wg.Go(func() { _ = srv.Serve(ctx, backendLn) })

	cfg, err := config.Load(config.Sources{Forwards: []string{listen + "=" + backendLn.Addr().String()}})
	if err != nil {
		printErrors(e.Stderr, err)
		return ExitUsage
	}
	cfg.Services[0].Name = "demo"
	ready := make(chan []daemon.Bound, 1)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, daemon.Options{Grace: time.Second, Ready: func(b []daemon.Bound) { ready <- b }})
	}()
	var amb string
	select {
	case b := <-ready:
		amb = b[0].Addr.String()
	case err := <-done:
		fmt.Fprintf(e.Stderr, "attache demo: %v\n", err)
		return ExitRuntime
	}
	fmt.Fprintf(e.Stdout, "backend    (embedded key-value server) on %s\n", backendLn.Addr())
	fmt.Fprintf(e.Stdout, "ambassador (attache)                   on %s -> %s\n\n", amb, backendLn.Addr())
	if err := talk(e, amb); err != nil {
		fmt.Fprintf(e.Stderr, "attache demo: %v\n", err)
		cancel()
		<-done
		return ExitRuntime
	}
	if stay {
		_, port, _ := net.SplitHostPort(amb)
		fmt.Fprintf(e.Stdout, "\nStill running; try: redis-cli -p %s ping   (Ctrl-C to stop)\n", port)
		<-ctx.Done()
	}
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintf(e.Stderr, "attache demo: %v\n", err)
		return ExitRuntime
	}
	return ExitOK
}

func talk(e Env, amb string) error {
	c, err := net.DialTimeout("tcp", amb, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial the ambassador: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	for _, cmd := range [][]string{{"PING"}, {"SET", "greeting", "hello through the ambassador"}, {"GET", "greeting"}} {
		if err := demo.WriteCommand(c, cmd...); err != nil {
			return err
		}
		reply, err := demo.ReadReply(r)
		if err != nil {
			return fmt.Errorf("reading the reply to %s: %w", cmd[0], err)
		}
		fmt.Fprintf(e.Stdout, "client -> ambassador -> backend: %-45s reply: %s\n", strings.Join(cmd, " "), reply)
	}
	return nil
}
