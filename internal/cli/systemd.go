package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/sdnotify"
)

// systemd reads what systemd passed in the environment: the notify socket
// (Type=notify units) and the sockets of socket activation, matched to the
// listeners of cfg (and the admin API). The activation variables are
// unset, and WATCHDOG_PID too, so the new process of an upgrade neither
// takes descriptors 3, 4… for systemd's nor thinks the watchdog is another
// process's. inherited is what an upgrade handed over (nil if none); when
// there are activated sockets they are returned in its place.
func systemd(ctx context.Context, e Env, log *slog.Logger, cfg *config.Config, admin string, inherited *listen.Inherited) (*sdnotify.Notifier, *listen.Inherited, error) {
	n, err := sdnotify.FromEnviron(e.Environ, os.Getpid())
	if err != nil {
		return nil, nil, err
	}
	if n.WatchdogInterval() > 0 {
		_ = os.Unsetenv(sdnotify.EnvWatchdogPID) // unset: every process of the unit may ping
	}
	passed, err := sdnotify.Activation(e.Environ, os.Getpid())
	for _, v := range sdnotify.ActivationVars {
		_ = os.Unsetenv(v)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(passed) == 0 {
		return n, inherited, nil
	}
	if inherited != nil {
		for _, p := range passed {
			p.File.Close()
		}
		return nil, nil, fmt.Errorf("socket activation: %d sockets passed (LISTEN_FDS) to a process started by an upgrade", len(passed))
	}
	labels := make([]string, len(passed))
	for i, p := range passed {
		labels[i] = p.Label()
	}
	activated, err := listen.Activated(ctx, passed, activationWants(cfg, admin))
	if err != nil {
		return nil, nil, err
	}
	log.Info("socket activation: serving the sockets systemd passed", "sockets", strings.Join(labels, ", "))
	return n, activated, nil
}

// activationWants lists every listener the daemon opens, as socket
// activation matches them.
func activationWants(cfg *config.Config, admin string) []listen.Want {
	var want []listen.Want
	for _, s := range cfg.Services {
		w := listen.Want{Name: s.Name, Network: "tcp", Addr: s.Listen}
		if path, ok := config.UnixPath(s.Listen); ok {
			w.Network, w.Addr = "unix", path
		} else if s.IsUDP() {
			w.Network = "udp"
		}
		want = append(want, w)
	}
	if admin != "" {
		want = append(want, listen.Want{Name: "admin", Network: "tcp", Addr: admin})
	}
	if cfg.Link.Listen != "" {
		want = append(want, listen.Want{Name: "link", Network: "tcp", Addr: cfg.Link.Listen})
	}
	if cfg.Transparent.Enabled() {
		want = append(want, listen.Want{Name: "transparent", Network: "tcp", Addr: cfg.Transparent.Listen})
	}
	return want
}
