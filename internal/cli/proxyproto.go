package cli

import "github.com/attache/attache/internal/config"

// listenOf is the LISTEN column of `attache check`: the address, and
// whether it reads PROXY protocol headers.
func listenOf(s config.Service) string {
	switch a := s.AcceptProxy; {
	case a == nil:
		return s.Listen
	case a.Required:
		return s.Listen + " (accept_proxy)"
	}
	return s.Listen + " (accept_proxy optional)"
}

// backendOf is one entry of the BACKENDS column: a fixed backend shows
// the PROXY protocol version it is sent, its own or its service's.
func backendOf(s config.Service, b config.Backend) string {
	if b.Discover == nil && b.SendProxy == 0 && s.SendProxy > 0 {
		b.SendProxy = s.SendProxy
	}
	return b.String()
}
