package link

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are the link's counters, kept as atomics and read by the metrics
// collector at scrape time. A nil *Stats counts nothing.
type Stats struct {
	// Handshakes completed and authorised: by side (server, client) and
	// whether the session was resumed.
	serverFull, serverResumed atomic.Int64
	clientFull, clientResumed atomic.Int64
	// DialErrors are client dials that failed (connect, handshake or a
	// refusal by the server).
	dialErrors atomic.Int64
	refused    map[string]*atomic.Int64
	reloads    atomic.Int64
	reloadErrs atomic.Int64
	// Multiplexed links, by side (client, server): sessions (pooled TLS
	// connections) open and opened, streams open and opened.
	sessions, sessionsOpened [2]atomic.Int64
	streams, streamsOpened   [2]atomic.Int64
}

// Sides of a link, as the metrics' side label names them.
const (
	sideClient = 0
	sideServer = 1
)

var sideNames = [2]string{"client", "server"}

func (s *Stats) sessionOpened(side int) {
	if s != nil {
		s.sessions[side].Add(1)
		s.sessionsOpened[side].Add(1)
	}
}

func (s *Stats) sessionClosed(side int) {
	if s != nil {
		s.sessions[side].Add(-1)
	}
}

func (s *Stats) streamOpened(side int) {
	if s != nil {
		s.streams[side].Add(1)
		s.streamsOpened[side].Add(1)
	}
}

func (s *Stats) streamClosed(side int) {
	if s != nil {
		s.streams[side].Add(-1)
	}
}

// Sessions is how many multiplexed sessions are open on side ("client" or
// "server") and how many were opened.
func (s *Stats) Sessions(side string) (open, opened int64) {
	i := sideIndex(side)
	return s.sessions[i].Load(), s.sessionsOpened[i].Load()
}

// Streams is how many multiplexed streams are open on side and how many
// were opened.
func (s *Stats) Streams(side string) (open, opened int64) {
	i := sideIndex(side)
	return s.streams[i].Load(), s.streamsOpened[i].Load()
}

func sideIndex(side string) int {
	if side == "server" {
		return sideServer
	}
	return sideClient
}

// NewStats makes a Stats with every refusal reason at 0.
func NewStats() *Stats {
	s := &Stats{refused: map[string]*atomic.Int64{}}
	for _, r := range Reasons {
		s.refused[r] = new(atomic.Int64)
	}
	return s
}

func (s *Stats) refuse(reason string) {
	if s == nil {
		return
	}
	if c := s.refused[reason]; c != nil {
		c.Add(1)
	}
}

// Refused is how many connections the server refused for reason.
func (s *Stats) Refused(reason string) int64 {
	if s == nil || s.refused[reason] == nil {
		return 0
	}
	return s.refused[reason].Load()
}

// ServerHandshakes is how many streams the server authorised, and how many
// of those resumed a session.
func (s *Stats) ServerHandshakes() (total, resumed int64) {
	r := s.serverResumed.Load()
	return s.serverFull.Load() + r, r
}

// ClientHandshakes is how many dials succeeded, and how many of those
// resumed a session.
func (s *Stats) ClientHandshakes() (total, resumed int64) {
	r := s.clientResumed.Load()
	return s.clientFull.Load() + r, r
}

// DialErrors is how many client dials failed.
func (s *Stats) DialErrors() int64 { return s.dialErrors.Load() }

// Reloads is how many certificate reloads succeeded and failed.
func (s *Stats) Reloads() (ok, failed int64) { return s.reloads.Load(), s.reloadErrs.Load() }

func (s *Stats) handshake(server, resumed bool) {
	if s == nil {
		return
	}
	switch {
	case server && resumed:
		s.serverResumed.Add(1)
	case server:
		s.serverFull.Add(1)
	case resumed:
		s.clientResumed.Add(1)
	default:
		s.clientFull.Add(1)
	}
}

func (s *Stats) dialError() {
	if s != nil {
		s.dialErrors.Add(1)
	}
}

func (s *Stats) reload(ok bool) {
	if s == nil {
		return
	}
	if ok {
		s.reloads.Add(1)
	} else {
		s.reloadErrs.Add(1)
	}
}

var (
	descHandshakes = prometheus.NewDesc("attache_link_handshakes_total",
		"Link TLS connections set up: side server (authorised incoming) or client (successful dials), resumed true when the TLS session was resumed. A multiplexed link counts one per pooled connection, a per-connection link one per stream.",
		[]string{"side", "resumed"}, nil)
	descRefused = prometheus.NewDesc("attache_link_refused_total",
		"Incoming link connections the server refused, by reason.", []string{"reason"}, nil)
	descDialErrors = prometheus.NewDesc("attache_link_dial_errors_total",
		"Link dials that failed: connect, handshake, or refused by the link server.", nil, nil)
	descReloads = prometheus.NewDesc("attache_link_certificate_reloads_total",
		"Reloads of the link certificate files after they changed on disk, by result.", []string{"result"}, nil)
	descSessions = prometheus.NewDesc("attache_link_sessions",
		"Multiplexed link connections (pooled mutual-TLS connections carrying streams) open, by side.", []string{"side"}, nil)
	descSessionsOpened = prometheus.NewDesc("attache_link_sessions_opened_total",
		"Multiplexed link connections opened, by side.", []string{"side"}, nil)
	descStreams = prometheus.NewDesc("attache_link_streams",
		"Streams open on multiplexed link connections, by side.", []string{"side"}, nil)
	descStreamsOpened = prometheus.NewDesc("attache_link_streams_opened_total",
		"Streams set up on multiplexed link connections (client: dials answered OK; server: streams authorised), by side.", []string{"side"}, nil)
	descExpiry = prometheus.NewDesc("attache_link_certificate_expiry_timestamp_seconds",
		"When the link certificate in use expires, in seconds since the epoch.", nil, nil)
)

// Register adds the link's metrics to reg, read from s and id at scrape
// time. id may be nil (no expiry gauge then).
func Register(reg prometheus.Registerer, s *Stats, id *Identity) error {
	return reg.Register(collector{s, id})
}

type collector struct {
	s  *Stats
	id *Identity
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHandshakes, descRefused, descDialErrors, descReloads, descExpiry,
		descSessions, descSessionsOpened, descStreams, descStreamsOpened} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	s := c.s
	counter(descHandshakes, s.serverFull.Load(), "server", "false")
	counter(descHandshakes, s.serverResumed.Load(), "server", "true")
	counter(descHandshakes, s.clientFull.Load(), "client", "false")
	counter(descHandshakes, s.clientResumed.Load(), "client", "true")
	for _, r := range Reasons {
		counter(descRefused, s.refused[r].Load(), r)
	}
	counter(descDialErrors, s.dialErrors.Load())
	counter(descReloads, s.reloads.Load(), "success")
	counter(descReloads, s.reloadErrs.Load(), "failure")
	for i, side := range sideNames {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(s.sessions[i].Load()), side)
		counter(descSessionsOpened, s.sessionsOpened[i].Load(), side)
		ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(s.streams[i].Load()), side)
		counter(descStreamsOpened, s.streamsOpened[i].Load(), side)
	}
	if c.id != nil {
		ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, float64(c.id.NotAfter().Unix()))
	}
}
