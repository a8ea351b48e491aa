package cli

import (
	"fmt"

	"github.com/attache/attache/internal/config"
)

// udpColumns are a UDP service's LISTEN, HEALTH, IDLE and MAXCONN cells in
// `attache check`: the listen address marked /udp, its datagram check, the
// session idle timeout and the session table's bound.
func udpColumns(s config.Service) (listen, health, idle, limit string) {
	health = "off"
	switch {
	case s.HealthCheck != nil:
		health = fmt.Sprintf("udp-expect/%s", s.HealthCheck.Interval)
	case s.EjectTime > 0:
		health = "passive"
	}
	return s.Listen + "/udp", health, s.UDPIdleTimeout.String(), fmt.Sprintf("%d sessions", s.MaxSessions)
}
