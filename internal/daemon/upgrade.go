package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/pidfile"
)

// Zero-downtime upgrade (SIGUSR2): the daemon starts the binary now
// installed at its path with the same arguments, and hands it duplicates
// of every listening socket, the admin API's included. Both processes
// share each socket (one accept queue in the kernel), so while they change
// places a connection is accepted by one or the other, never refused. Once
// the new process serves every listener it says so; this one then closes
// its copies of the sockets, answers 503 on /readyz to whoever still holds
// a connection to its admin API, drains its open connections for Grace,
// and exits 0. If the new process fails (bad configuration, crash, no word
// within the timeout) it is stopped and this one carries on as if nothing
// happened: an upgrade never takes the service down.
//
// Upgrades run on Run's loop, like reloads, so the set of listeners cannot
// change while it is handed over, and only one upgrade runs at a time.

// upgradeState is the daemon's side of upgrades.
type upgradeState struct {
	// successor is the pid of the process that took over, 0 before.
	successor atomic.Int64
	// accepting counts the accept loops started by serve.
	accepting sync.WaitGroup
}

// upgrade hands the listeners to a new process and reports whether it took
// over; Run then stops accepting and drains as on SIGTERM.
func (d *daemon) upgrade(opts Options, adminLn net.Listener) bool {
	socks, err := d.handoverSockets(opts, adminLn)
	defer func() {
		for _, s := range socks {
			s.File.Close() // the new process has its own copies now
		}
	}()
	if err != nil {
		d.log.Error("upgrade failed; this process keeps serving", "pid", os.Getpid(), "error", err)
		return false
	}
	d.log.Info("upgrade: starting the new process", "pid", os.Getpid(), "sockets", len(socks))
	u := listen.Upgrader{Timeout: opts.UpgradeTimeout}
	pid, err := u.Upgrade(d.ctx, socks)
	if err != nil {
		d.log.Error("upgrade failed; this process keeps serving", "pid", os.Getpid(), "error", err)
		// The failed process may have told systemd it was the main one.
		d.notified(opts.Notifier.MainPID(os.Getpid(), d.serviceStatus()))
		// The failed process may have written the pid file (and removed it
		// on its way out): name this process again.
		if opts.PIDFile != "" {
			if err := pidfile.Write(opts.PIDFile, os.Getpid()); err != nil {
				d.log.Error("upgrade: rewriting the pid file", "error", err)
			}
		}
		return false
	}
	if s, ok := adminLn.(*adminSocket); ok {
		s.handOver()
	}
	if lr := d.link; lr != nil && lr.ln != nil {
		lr.ln.Close() // its Serve returns nil; the new process accepts from now on
	}
	d.transp.close() // likewise
	d.successor.Store(int64(pid))
	d.open.Store(false)
	d.mu.Lock()
	for _, sv := range d.serving {
		sv.l.HandOver() // Run closes them next; Unix socket files stay for the new process
	}
	d.mu.Unlock()
	d.log.Info("upgrade: the new process serves; this one stops accepting and drains",
		"pid", os.Getpid(), "new_pid", pid)
	return true
}

// drainHandedOver lets the connections of a process that handed over
// finish, for up to grace, and only then cancels the serving context (and
// with it health checks and the link server), so that Run can wait for
// them. A SIGTERM cancels that context first, which also cuts connections
// still dialling their backend: after a hand-over nothing is in a hurry,
// and no connection may break.
func (d *daemon) drainHandedOver(grace time.Duration) {
	// Every accept loop has returned, so no connection sits between
	// accept and tracking, where Shutdown would refuse it.
	d.accepting.Wait()
	d.drainConnections(grace)
	d.stop()
}

// handoverSockets duplicates every listening socket, named the way the new
// process will ask for it: by its configured (not bound) address.
func (d *daemon) handoverSockets(opts Options, adminLn net.Listener) ([]listen.Socket, error) {
	d.mu.Lock()
	servs := make([]*served, 0, len(d.serving))
	for _, sv := range d.serving {
		servs = append(servs, sv)
	}
	d.mu.Unlock()
	slices.SortFunc(servs, func(a, b *served) int { return cmp.Compare(a.svc.Name, b.svc.Name) })

	var socks []listen.Socket
	fail := func(err error) ([]listen.Socket, error) {
		for _, s := range socks {
			s.File.Close()
		}
		return nil, err
	}
	for _, sv := range servs {
		f, err := listen.Dup(sv.l)
		if err != nil {
			return fail(fmt.Errorf("service %s (%s): %w", sv.svc.Name, sv.svc.Listen, err))
		}
		network, addr := listenNetwork(sv.svc.Listen), sv.svc.Listen
		if path, unix := config.UnixPath(sv.svc.Listen); unix {
			network, addr = "unix", path
		}
		socks = append(socks, listen.Socket{Kind: listen.KindService, Network: network, Addr: addr, File: f})
	}
	if lr := d.link; lr != nil && lr.ln != nil {
		sc, ok := lr.ln.(syscall.Conn)
		if !ok {
			return fail(fmt.Errorf("link server %s: not an operating system socket", lr.cfg.Listen))
		}
		f, err := listen.Dup(sc)
		if err != nil {
			return fail(fmt.Errorf("link server %s: %w", lr.cfg.Listen, err))
		}
		socks = append(socks, listen.Socket{Kind: kindLink, Network: listenNetwork(lr.cfg.Listen), Addr: lr.cfg.Listen, File: f})
	}
	if tr := d.transp; tr != nil {
		f, err := listen.Dup(tr.ln.(syscall.Conn))
		if err != nil {
			return fail(fmt.Errorf("transparent listener %s: %w", tr.cfg.Listen, err))
		}
		socks = append(socks, listen.Socket{Kind: kindTransparent, Network: listenNetwork(tr.cfg.Listen), Addr: tr.cfg.Listen, File: f})
	}
	if adminLn != nil {
		sc, ok := adminLn.(syscall.Conn) // *adminSocket
		if !ok {
			return fail(fmt.Errorf("admin API %s: not an operating system socket", opts.Admin))
		}
		f, err := listen.Dup(sc)
		if err != nil {
			return fail(fmt.Errorf("admin API %s: %w", opts.Admin, err))
		}
		socks = append(socks, listen.Socket{Kind: listen.KindAdmin, Network: "tcp", Addr: opts.Admin, File: f})
	}
	return socks, nil
}

// announceReady runs once every listener serves: it writes the pid file
// and, in a process started by an upgrade, tells the old process to let
// go. A pid file that cannot be written stops the daemon (Run returns the
// error) before any old process is told anything: a supervisor or
// `attache upgrade` reading a stale pid would signal the wrong process.
func (d *daemon) announceReady(opts Options) {
	if opts.PIDFile != "" {
		if err := pidfile.Write(opts.PIDFile, os.Getpid()); err != nil {
			d.mu.Lock()
			d.serveErr = errors.Join(d.serveErr, err)
			d.mu.Unlock()
			d.log.Error("cannot write the pid file; shutting down", "error", err)
			opts.Inherited.Close()
			d.stop()
			return
		}
	}
	d.notifyReady(opts) // an upgrade's MAINPID= before the old process lets go
	if !opts.Inherited.IsUpgrade() {
		_, _ = opts.Inherited.Ready() // socket activation: nothing to tell
		return
	}
	unused, err := opts.Inherited.Ready()
	for _, name := range unused {
		d.log.Warn("upgrade: a socket of the old process is not in this configuration; it closes when the old process has drained",
			"socket", name)
	}
	if err != nil {
		d.log.Error("upgrade: the old process did not hear that this one serves", "pid", os.Getpid(), "error", err)
		return
	}
	d.log.Info("upgrade: took over the listeners; the old process drains", "pid", os.Getpid(),
		"old_pid", opts.Inherited.Parent())
}

// releasePIDFile removes the pid file at exit, unless it names another
// process by now (the one that took over in an upgrade).
func (d *daemon) releasePIDFile(opts Options) {
	if opts.PIDFile == "" {
		return
	}
	if err := pidfile.RemoveIfOwn(opts.PIDFile, os.Getpid()); err != nil {
		d.log.Warn("removing the pid file", "error", err)
	}
}

// listenAdmin opens the admin API's socket, or takes the one inherited in
// an upgrade, wrapped for the next upgrade.
func listenAdmin(ctx context.Context, opts Options) (net.Listener, error) {
	ln, err := opts.Inherited.Listen(ctx, net.ListenConfig{}, listen.KindAdmin, "tcp", opts.Admin)
	if err != nil {
		return nil, err
	}
	return &adminSocket{Listener: ln, closed: make(chan struct{})}, nil
}

// adminQuiesce bounds how long an old process keeps answering the admin
// connections it accepted before the hand-over (a keep-alive client may
// hold one open, idle, for ever).
const adminQuiesce = 5 * time.Second

// retireAdmin stops the admin API of a process that handed over, once the
// connections it accepted are done (or adminQuiesce has passed).
func retireAdmin(ln net.Listener, stop func()) {
	if s, ok := ln.(*adminSocket); ok {
		s.awaitClosed(adminQuiesce)
	}
	stop()
}

// adminSocket is the admin API's listener, made to leave an upgrade without
// dropping a request. Go's http.Server closes, unanswered, a connection it
// accepted but whose request it reads only after Shutdown began: a health
// check would see EOF. So at a hand-over the old process closes its copy of
// the socket at once (the new process accepts everything from then on),
// answers the connections it had accepted until they close, and only then
// shuts the server down (retireAdmin).
type adminSocket struct {
	net.Listener
	handedOver atomic.Bool
	closed     chan struct{} // Close was called (the server's shutdown)
	closeOnce  sync.Once
	open       atomic.Int64 // accepted connections not closed yet
}

var _ syscall.Conn = (*adminSocket)(nil)

// Accept passes connections through, counted. After handOver it waits for
// the server's own Close instead of failing: http.Server.Serve would
// otherwise end (and log) on the closed socket.
func (s *adminSocket) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		if s.handedOver.Load() {
			<-s.closed
			return nil, net.ErrClosed
		}
		return nil, err
	}
	s.open.Add(1)
	return &adminConn{Conn: c, s: s}, nil
}

func (s *adminSocket) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	if s.handedOver.Load() {
		return nil // closed at the hand-over
	}
	return s.Listener.Close()
}

func (s *adminSocket) SyscallConn() (syscall.RawConn, error) {
	sc, ok := s.Listener.(syscall.Conn)
	if !ok {
		return nil, errors.New("admin API listener: not an operating system socket")
	}
	return sc.SyscallConn()
}

// handOver closes this process's copy of the socket.
func (s *adminSocket) handOver() {
	if s.handedOver.CompareAndSwap(false, true) {
		s.Listener.Close()
	}
}

// awaitClosed waits until every accepted connection has closed, at most d.
func (s *adminSocket) awaitClosed(d time.Duration) {
	deadline := time.Now().Add(d)
	for s.open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// adminConn counts itself out of its adminSocket when closed.
type adminConn struct {
	net.Conn
	s    *adminSocket
	once sync.Once
}

func (c *adminConn) Close() error {
	c.once.Do(func() { c.s.open.Add(-1) })
	return c.Conn.Close()
}
