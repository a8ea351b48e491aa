package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
	"github.com/attache/attache/internal/loophint"
)

// Finding a backend is the same on both engines: the route's policy picks
// (balance.Choose, with panic mode when passive health is on), a failed
// dial ejects its backend and spends the connection's retry budget
// (backend.DialBudget), and the same counters and log lines follow. Only
// the dial itself differs: a handler goroutine's dial below, or an event
// loop's non-blocking connect (pair.dialNext in loopaccept.go), which hands
// the connection and its budget to a handler when it cannot go on alone.

// errNoBackend is returned when no backend was usable for the whole retry
// budget (none discovered, or every one down or ejected).
var errNoBackend = errors.New("no usable backend")

// dialBudget returns c's retry budget, set from r when first asked for:
// Retries further dials, all within RetryTimeout of the connection's
// start.
func (c *conn) dialBudget(r *Route) *backend.DialBudget {
	if !c.budgetSet {
		c.budget = backend.DialBudget{Retries: r.Retries, Deadline: c.start.Add(r.retryTimeout())}
		c.budgetSet = true
	}
	return &c.budget
}

// choose asks r's policy for c's next backend (see balance.Choose).
func (c *conn) choose(r *Route) *backend.Backend {
	return balance.Choose(r.policy(), r.Backends, c.clientAddr(), r.Passive, c.dialBudget(r).Attempts())
}

// dialWorked counts a dial to b, begun at start, that connected.
func (p *Proxy) dialWorked(c *conn, r *Route, b *backend.Backend, start time.Time) {
	b.CountDial(true)
	c.listener.Stats.DialDuration.Observe(time.Since(start))
	if r.Passive {
		b.ReportSuccess()
	}
	if c.dialBudget(r).Attempts() > 0 {
		c.listener.Stats.Retried.Add(1)
	}
}

// dialFailed counts a failed dial to b, gives b back (it was counted
// against b since it was chosen), ejects it when passive health is on, and
// reports whether c's budget allows another dial.
func (p *Proxy) dialFailed(ctx context.Context, c *conn, r *Route, b *backend.Backend, err error) bool {
	b.Release()
	b.CountDial(false)
	budget := c.dialBudget(r)
	budget.Failed(b.Addr, unwrapOpError(err))
	c.listener.Stats.DialErrors.Add(1)
	if r.Passive && ctx.Err() == nil {
		b.ReportFailure(time.Now())
	}
	p.logger().Debug("dial failed", "service", r.Service, "backend", b.Addr, "attempt", budget.Attempts(), "error", err)
	return budget.Again(ctx, time.Now())
}

// unreachable counts and logs a connection closed because no backend
// answered within its budget.
func (p *Proxy) unreachable(c *conn, err error) {
	c.listener.Stats.Failed.Add(1)
	p.logger().Warn("no backend reachable; closing client connection",
		"service", c.route.Service, "client", c.clientName(), "error", err)
}

// dial asks the route's policy for a backend and dials it. A failed dial
// ejects that backend (passive health, when on) and tries the next pick, up
// to Retries more times, before the client sees anything. When the policy
// has nothing to offer, it waits for the listener's route to gain a usable
// backend (discovery catching up, a check passing) until RetryTimeout, which
// bounds the whole search.
func (p *Proxy) dial(ctx context.Context, c *conn, r *Route) (halfConn, *backend.Backend, error) {
	d := r.dialer(p.Resolver)
	budget := c.dialBudget(r)
	for {
		b := c.choose(r)
		if b == nil {
			if !waitForBackend(ctx, budget.Deadline) {
				c.listener.Stats.NoBackend.Add(1)
				if budget.Attempts() == 0 {
					return nil, nil, fmt.Errorf("%w among %d backends after %s", errNoBackend, r.Backends.Len(), r.retryTimeout())
				}
				return nil, nil, fmt.Errorf("%w; %w", budget.Err(), errNoBackend)
			}
			// Pick up a route swapped in meanwhile (new backends, new
			// health), keeping this connection's own settings.
			if nr := c.listener.route.Load(); nr != r && nr.Service == r.Service {
				r = &Route{Service: r.Service, Backends: nr.Backends, Policy: nr.policy(), Retries: r.Retries,
					RetryTimeout: r.RetryTimeout, Passive: r.Passive, ConnectTimeout: r.ConnectTimeout,
					SendProxy: nr.SendProxy, SendProxyFor: nr.SendProxyFor, Dial: nr.Dial}
			}
			continue
		}
		// Count the connection against the backend from the moment it is
		// chosen, not once the dial succeeds: least_conn must see the
		// connections being dialled, or a burst of clients arriving
		// together all land on the same backend.
		b.Acquire()
		dialStart := time.Now()
		bc, err := p.dialOne(ctx, c, r, d, b)
		if err == nil {
			p.dialWorked(c, r, b, dialStart)
			return bc, b, nil
		}
		if !p.dialFailed(ctx, c, r, b, err) {
			return nil, nil, budget.Err()
		}
	}
}

// dialOne dials b for c: with a socket c's event loop watches when there
// is one and the backend is plain TCP, else with the route's dialer; then
// it writes the PROXY header the route asks for, before the client's
// bytes can go.
func (p *Proxy) dialOne(ctx context.Context, c *conn, r *Route, d *net.Dialer, b *backend.Backend) (halfConn, error) {
	network, address := backend.DialArgs(b.Addr)
	var bc net.Conn
	var err error
	lp := p.loopFor(c)
	if lp != nil && network == "tcp" && r.Dial == nil {
		var rs *rawSock
		if rs, err = p.rawDial(ctx, lp, r, address); err == nil {
			bc = rs
		}
	} else {
		var early []byte
		if c.early != nil && r.Dial != nil && r.SendProxyVersion(b.Addr) == 0 {
			early = (*c.early)[:c.earlyN]
		}
		dctx := ctx
		if lp != nil && r.DialLoopStreams {
			// A link stream: on a session this loop reads.
			dctx = loophint.With(ctx, lp.index)
		}
		bc, err = r.dialBackend(dctx, d, network, address, early)
		if err == nil && early != nil {
			c.earlySent = true
		}
	}
	if err != nil {
		return nil, err
	}
	if v := r.SendProxyVersion(b.Addr); v != 0 {
		if err := sendProxyHeader(bc, v, c); err != nil {
			bc.Close()
			return nil, err
		}
	}
	return bc.(halfConn), nil
}

// waitForBackend sleeps a little before the next Pick, unless the deadline
// has passed or ctx is done; it reports whether to try again.
func waitForBackend(ctx context.Context, deadline time.Time) bool {
	rest := time.Until(deadline)
	if rest <= 0 {
		return false
	}
	t := time.NewTimer(min(rest, 25*time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
