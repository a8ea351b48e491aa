package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// startAttacheTransparent runs attache in transparent mode: the client
// still connects to the route's 127.0.0.1:L, an OUTPUT rule installed by
// `attache iptables --uid <this user> --apply` redirects that to attache's
// transparent listener, which reads the original destination and serves
// it as the service of port L (listening on 127.0.0.2:L, so that only the
// redirect reaches it from 127.0.0.1). attache's own dials go to the
// backends' ports, which are not redirected. The rules process is stopped
// (and removes its rules) when attache is, and by the supervisor at exit.
// Only the attache process is measured.
func startAttacheTransparent(h *harness, logName string, routes []route) ([]*child, error) {
	tAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	_, tPort, _ := strings.Cut(tAddr, ":")
	var b strings.Builder
	fmt.Fprintf(&b, "transparent:\n  listen: %s\nservices:\n", tAddr)
	var ports []string
	for i, r := range routes {
		be, err := r.single()
		if err != nil || r.udp {
			return nil, fmt.Errorf("attache-transparent: plain TCP routes only (route %s): %v", r.listen, err)
		}
		_, lport, _ := strings.Cut(r.listen, ":")
		ports = append(ports, lport)
		fmt.Fprintf(&b, "  - name: bench-%d\n    listen: 127.0.0.2:%s\n    backends: [%s]\n", i, lport, be)
	}
	cfg := filepath.Join(h.cfg.logDir, logName+".yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	c, err := h.sup.start(logName, exec.Command(h.cfg.attache, "-c", cfg, "--log-level", "warn", "--env-links=false"))
	if err != nil {
		return nil, err
	}
	rules, err := h.sup.start(logName+"-iptables", exec.Command(h.cfg.attache, "iptables", "--transparent", tPort,
		"--uid", strconv.Itoa(os.Getuid()), "--ports", strings.Join(ports, ","), "--chain", "ATBENCH"+tPort, "--apply"))
	if err != nil {
		h.sup.stop(c)
		return nil, err
	}
	go func() {
		<-c.done
		h.sup.stop(rules)
	}()
	return []*child{c}, nil
}
