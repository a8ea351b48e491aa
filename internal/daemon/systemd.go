package daemon

import (
	"fmt"
	"os"
)

// systemd notify messages (package sdnotify): READY=1 once every listener
// serves, RELOADING=1 … READY=1 around each reload, STOPPING=1 when a
// shutdown begins, and, from the new process of an upgrade, MAINPID= before
// the old process is told to let go, so that systemd follows the new pid
// and does not take the old one's exit for the service's end. A process
// that handed over sends nothing more: its STOPPING=1 or STATUS= would be
// read as the service's (every process may notify under NotifyAccess=all).
// Every message is a no-op without NOTIFY_SOCKET.

// serviceStatus is the STATUS= line: what systemctl status shows.
func (d *daemon) serviceStatus() string {
	d.mu.Lock()
	n := len(d.serving) + len(d.udpServing)
	d.mu.Unlock()
	if n == 1 {
		return "serving 1 service"
	}
	return fmt.Sprintf("serving %d services", n)
}

// notifyReady tells systemd that every listener serves: READY=1, or, in
// the new process of an upgrade, MAINPID=<this pid> and READY=1.
func (d *daemon) notifyReady(opts Options) {
	if opts.Inherited.IsUpgrade() {
		d.notified(opts.Notifier.MainPID(os.Getpid(), d.serviceStatus()))
		return
	}
	d.notified(opts.Notifier.Ready(d.serviceStatus()))
}

// notifyReloaded ends a reload: READY=1 (the running configuration serves
// either way) with what happened.
func (d *daemon) notifyReloaded(opts Options, err error) {
	status := d.serviceStatus()
	if err != nil {
		status = "reload failed, the previous configuration serves (" + status + "): " + err.Error()
	}
	d.notified(opts.Notifier.Ready(status))
}

// notified logs a message systemd did not get; the daemon carries on (a
// unit with a start timeout then fails the start, which says it too).
func (d *daemon) notified(err error) {
	if err != nil {
		d.log.Warn("systemd notify", "error", err)
	}
}
