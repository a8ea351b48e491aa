package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The link contenders measure the two-host path of issue 4 on one machine:
// a client-side relay in front of the consumer, a server-side relay in front
// of the backend, and a hop between them, each pair over TLS 1.3 with client
// certificates checked on both ends (or over plain TCP, the baseline).
// Every contender uses the same certificates, made by `attache certs`, and
// the measured processes are both relays.
var linkProxies = []proxyDef{
	{name: "attache-2hop", about: "two attache processes, plain TCP between them (--forward on both): the link path without TLS", start: startAttache2Hop},
	{name: "attache-link", about: "attache → mutual TLS 1.3 link, multiplexed: streams on pooled connections (attache://127.0.0.1:L/svc) → attache link server → backend", start: startAttacheLink("multiplexed")},
	{name: "attache-link-perconn", about: "attache → mutual TLS 1.3 link, a TLS connection per client connection (link.mode: per_connection, session resumption on) → attache link server → backend", start: startAttacheLink("per_connection")},
	{name: "socat-tls", about: "socat TCP4-LISTEN → OPENSSL:…,cert,cafile,verify=1 → socat OPENSSL-LISTEN:…,cert,cafile,verify=1 → TCP4 (a fork per connection on each side)", start: startSocatTLS},
	{name: "haproxy-tls", about: "haproxy → server … ssl crt … ca-file … verify required → haproxy bind … ssl crt … ca-file … verify required → backend; TLS 1.3 only", start: startHAProxyTLS},
}

func init() { proxies = append(proxies, linkProxies...) }

// pki is the benchmark's fleet: a CA, a client certificate and a server
// certificate (for 127.0.0.1, so socat's and HAProxy's checks pass), made
// once per run; the .pem files hold the certificate then the key, as socat
// and HAProxy take them.
type pki struct {
	dir                string
	ca                 string
	clientPEM, server  string
	serverPEM          string
	clientCrt, clientK string
	serverK            string
}

var (
	pkiOnce sync.Once
	pkiVal  *pki
	pkiErr  error
)

func benchPKI(h *harness) (*pki, error) {
	pkiOnce.Do(func() {
		dir := filepath.Join(h.cfg.logDir, "pki")
		_ = os.RemoveAll(dir)
		run := func(args ...string) error {
			out, err := exec.Command(h.cfg.attache, args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("attache %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return nil
		}
		if pkiErr = run("certs", "init", "--dir", dir); pkiErr != nil {
			return
		}
		if pkiErr = run("certs", "issue", "bench-client", "--dir", dir); pkiErr != nil {
			return
		}
		if pkiErr = run("certs", "issue", "bench-server", "--dir", dir, "--dns", "localhost", "--ip", "127.0.0.1"); pkiErr != nil {
			return
		}
		p := &pki{dir: dir, ca: filepath.Join(dir, "fleet-ca.crt"),
			clientCrt: filepath.Join(dir, "bench-client.crt"), clientK: filepath.Join(dir, "bench-client.key"),
			server: filepath.Join(dir, "bench-server.crt"), serverK: filepath.Join(dir, "bench-server.key"),
			clientPEM: filepath.Join(dir, "bench-client.pem"), serverPEM: filepath.Join(dir, "bench-server.pem")}
		for _, f := range [][3]string{{p.clientPEM, p.clientCrt, p.clientK}, {p.serverPEM, p.server, p.serverK}} {
			crt, err := os.ReadFile(f[1])
			if err != nil {
				pkiErr = err
				return
			}
			key, err := os.ReadFile(f[2])
			if err != nil {
				pkiErr = err
				return
			}
			if pkiErr = os.WriteFile(f[0], append(crt, key...), 0o600); pkiErr != nil {
				return
			}
		}
		pkiVal = p
	})
	return pkiVal, pkiErr
}

// pairRoutes gives each route's middle hop a free loopback address.
func pairRoutes(routes []route) (backends, mids []string, err error) {
	for _, r := range routes {
		be, err := r.single()
		if err != nil {
			return nil, nil, err
		}
		mid, err := freeLoopbackAddr()
		if err != nil {
			return nil, nil, err
		}
		backends, mids = append(backends, be), append(mids, mid)
	}
	return backends, mids, nil
}

// startPair starts the server side, waits until it accepts connections on
// every one of serverAddrs, then starts the client side; if the client side
// fails the server side is stopped. Without the wait, the harness (which
// probes the client side's routes only) could start measuring while the
// client side's dials were still refused: a client-side relay that closes
// a refused client connection passes an EOF probe.
func startPair(h *harness, serverAddrs []string, server, client func() ([]*child, error)) ([]*child, error) {
	s, err := server()
	if err != nil {
		return nil, err
	}
	for _, addr := range serverAddrs {
		// A bare connect, closed at once: TLS servers log it as a failed
		// handshake, which is all it is.
		if err := waitReady(context.Background(), addr, func(net.Conn) error { return nil }, s, 10*time.Second); err != nil {
			for _, p := range s {
				h.sup.stop(p)
			}
			return nil, fmt.Errorf("server side: %w", err)
		}
	}
	c, err := client()
	if err != nil {
		for _, p := range s {
			h.sup.stop(p)
		}
		return nil, err
	}
	return append(c, s...), nil
}

func startAttache2Hop(h *harness, logName string, routes []route) ([]*child, error) {
	backends, mids, err := pairRoutes(routes)
	if err != nil {
		return nil, err
	}
	var srvArgs, cliArgs []string
	for i, r := range routes {
		srvArgs = append(srvArgs, "--forward", mids[i]+"="+backends[i])
		cliArgs = append(cliArgs, "--forward", r.listen+"="+mids[i])
	}
	common := []string{"--log-level", "warn", "--env-links=false"}
	return startPair(h, mids, func() ([]*child, error) {
		c, err := h.sup.start(logName+"-server", exec.Command(h.cfg.attache, append(srvArgs, common...)...))
		return []*child{c}, err
	}, func() ([]*child, error) {
		c, err := h.sup.start(logName+"-client", exec.Command(h.cfg.attache, append(cliArgs, common...)...))
		return []*child{c}, err
	})
}

func startAttacheLink(mode string) func(h *harness, logName string, routes []route) ([]*child, error) {
	return func(h *harness, logName string, routes []route) ([]*child, error) {
		return startAttacheLinkMode(h, logName, routes, mode)
	}
}

func startAttacheLinkMode(h *harness, logName string, routes []route, mode string) ([]*child, error) {
	p, err := benchPKI(h)
	if err != nil {
		return nil, err
	}
	backends, mids, err := pairRoutes(routes)
	if err != nil {
		return nil, err
	}
	linkAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	var srv, cli strings.Builder
	fmt.Fprintf(&srv, "link:\n  listen: %s\n  cert: %s\n  key: %s\n  ca: %s\n  offer:\n", linkAddr, p.server, p.serverK, p.ca)
	for i := range routes {
		fmt.Fprintf(&srv, "    bench-%d: [bench-client]\n", i)
	}
	srv.WriteString("services:\n")
	fmt.Fprintf(&cli, "link:\n  cert: %s\n  key: %s\n  ca: %s\n  mode: %s\nservices:\n", p.clientCrt, p.clientK, p.ca, mode)
	for i, r := range routes {
		// The server side's services need a listener of their own; a
		// loopback port nobody uses.
		fmt.Fprintf(&srv, "  - name: bench-%d\n    listen: %s\n    backends: [%s]\n", i, mids[i], backends[i])
		fmt.Fprintf(&cli, "  - name: bench-%d\n    listen: %s\n    backends: [\"attache://%s/bench-%d\"]\n", i, r.listen, linkAddr, i)
	}
	start := func(side, cfg string) ([]*child, error) {
		file := filepath.Join(h.cfg.logDir, logName+"-"+side+".yaml")
		if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		c, err := h.sup.start(logName+"-"+side, exec.Command(h.cfg.attache, "-c", file, "--log-level", "warn", "--env-links=false"))
		return []*child{c}, err
	}
	return startPair(h, append([]string{linkAddr}, mids...), func() ([]*child, error) { return start("server", srv.String()) },
		func() ([]*child, error) { return start("client", cli.String()) })
}

func startSocatTLS(h *harness, logName string, routes []route) ([]*child, error) {
	p, err := benchPKI(h)
	if err != nil {
		return nil, err
	}
	backends, mids, err := pairRoutes(routes)
	if err != nil {
		return nil, err
	}
	var all []*child
	for i, r := range routes {
		_, mport, _ := strings.Cut(mids[i], ":")
		_, lport, _ := strings.Cut(r.listen, ":")
		pair, err := startPair(h, []string{mids[i]}, func() ([]*child, error) {
			c, err := h.sup.start(fmt.Sprintf("%s-server-%d", logName, i), exec.Command("socat", "-t", "100000000",
				"OPENSSL-LISTEN:"+mport+",bind=127.0.0.1,fork,reuseaddr,cert="+p.serverPEM+",cafile="+p.ca+",verify=1",
				"TCP4:"+backends[i]))
			return []*child{c}, err
		}, func() ([]*child, error) {
			c, err := h.sup.start(fmt.Sprintf("%s-client-%d", logName, i), exec.Command("socat", "-t", "100000000",
				"TCP4-LISTEN:"+lport+",bind=127.0.0.1,fork,reuseaddr",
				"OPENSSL:"+mids[i]+",cert="+p.clientPEM+",cafile="+p.ca+",verify=1"))
			return []*child{c}, err
		})
		if err != nil {
			for _, c := range all {
				h.sup.stop(c)
			}
			return nil, err
		}
		all = append(all, pair...)
	}
	return all, nil
}

func startHAProxyTLS(h *harness, logName string, routes []route) ([]*child, error) {
	p, err := benchPKI(h)
	if err != nil {
		return nil, err
	}
	backends, mids, err := pairRoutes(routes)
	if err != nil {
		return nil, err
	}
	var srv, cli strings.Builder
	for _, b := range []*strings.Builder{&srv, &cli} {
		b.WriteString("global\n    maxconn 8000\n    ssl-default-bind-options ssl-min-ver TLSv1.3\n    ssl-default-server-options ssl-min-ver TLSv1.3\n\n")
		b.WriteString("defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n")
	}
	for i, r := range routes {
		fmt.Fprintf(&srv, "\nfrontend f%d\n    bind %s ssl crt %s ca-file %s verify required\n    default_backend b%d\n", i, mids[i], p.serverPEM, p.ca, i)
		fmt.Fprintf(&srv, "\nbackend b%d\n    server s%d %s\n", i, i, backends[i])
		fmt.Fprintf(&cli, "\nfrontend f%d\n    bind %s\n    default_backend b%d\n", i, r.listen, i)
		fmt.Fprintf(&cli, "\nbackend b%d\n    server s%d %s ssl crt %s ca-file %s verify required\n", i, i, mids[i], p.clientPEM, p.ca)
	}
	start := func(side, cfg string) ([]*child, error) {
		file := filepath.Join(h.cfg.logDir, logName+"-"+side+".cfg")
		if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		c, err := h.sup.start(logName+"-"+side, exec.Command("haproxy", "-db", "-f", file))
		return []*child{c}, err
	}
	return startPair(h, mids, func() ([]*child, error) { return start("server", srv.String()) },
		func() ([]*child, error) { return start("client", cli.String()) })
}
