package etcd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/attache/attache/internal/backend"
)

// maxTier bounds weight and priority. It is the range of a DNS SRV record's
// fields, so values from either source mean the same, and weighted policies
// can add weights up without overflowing.
const maxTier = 65535

// jsonValue is the JSON form of one endpoint. Unknown fields are refused: a
// misspelt "wieght" silently read as weight 1 would be worse than a skipped
// endpoint with a log line naming the key.
type jsonValue struct {
	Addr     string `json:"addr"`
	Weight   int    `json:"weight"`
	Priority int    `json:"priority"`
}

// ParseValue reads the value of one child key: either "host:port" or a JSON
// object {"addr":"host:port","weight":2,"priority":0}. Surrounding white
// space is ignored. The address is checked (see parseAddr) and returned in
// canonical form, so "[::0001]:080" and "[::1]:80" are the same endpoint.
func ParseValue(v string) (backend.Endpoint, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return backend.Endpoint{}, errors.New("empty value, want host:port or a JSON object")
	case strings.HasPrefix(v, "{"):
		return parseJSON(v)
	}
	addr, err := parseAddr(v)
	if err != nil {
		return backend.Endpoint{}, err
	}
	return backend.Endpoint{Addr: addr}, nil
}

func parseJSON(v string) (backend.Endpoint, error) {
	dec := json.NewDecoder(strings.NewReader(v))
	dec.DisallowUnknownFields()
	var jv jsonValue
	if err := dec.Decode(&jv); err != nil {
		return backend.Endpoint{}, fmt.Errorf("JSON endpoint: %w", err)
	}
	// Decode stops after the first value; anything but white space after it
	// ("{...}{...}" or "{...} junk") is a malformed value, not a second
	// endpoint.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return backend.Endpoint{}, errors.New("JSON endpoint: unexpected data after the object")
	}
	if jv.Addr == "" {
		return backend.Endpoint{}, errors.New(`JSON endpoint: "addr" is missing or empty`)
	}
	addr, err := parseAddr(jv.Addr)
	if err != nil {
		return backend.Endpoint{}, fmt.Errorf("JSON endpoint: addr: %w", err)
	}
	if jv.Weight < 0 || jv.Weight > maxTier {
		return backend.Endpoint{}, fmt.Errorf("JSON endpoint: weight %d out of range 0-%d", jv.Weight, maxTier)
	}
	if jv.Priority < 0 || jv.Priority > maxTier {
		return backend.Endpoint{}, fmt.Errorf("JSON endpoint: priority %d out of range 0-%d", jv.Priority, maxTier)
	}
	return backend.Endpoint{Addr: addr, Weight: jv.Weight, Priority: jv.Priority}, nil
}

// ParseList reads the value of a watched key that has no children: a
// comma-separated list of "host:port" entries (empty entries, as from a
// trailing comma, are ignored), or a single JSON object as ParseValue takes
// it. A malformed entry does not spoil the others: the good endpoints are
// returned together with one error per bad entry.
func ParseList(v string) ([]backend.Endpoint, []error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "{") {
		ep, err := parseJSON(v)
		if err != nil {
			return nil, []error{err}
		}
		return []backend.Endpoint{ep}, nil
	}
	var (
		eps  []backend.Endpoint
		errs []error
	)
	for i, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		addr, err := parseAddr(item)
		if err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", i+1, err))
			continue
		}
		eps = append(eps, backend.Endpoint{Addr: addr})
	}
	return eps, errs
}

// parseAddr checks host:port and returns it in canonical form. The host is
// an IP address (IPv6 in brackets, zone allowed) or a DNS name that is
// resolved at dial time; the port is a number from 1 to 65535.
func parseAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("address %q: want host:port (IPv6 as [addr]:port): %w", s, err)
	}
	p, err := parsePort(port)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", s, err)
	}
	if host == "" {
		return "", fmt.Errorf("address %q: empty host", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is6() && !strings.HasPrefix(s, "[") {
			// SplitHostPort cannot get here without brackets, but keep the
			// rule explicit rather than rely on that.
			return "", fmt.Errorf("address %q: IPv6 host must be in brackets", s)
		}
		if z := ip.Zone(); strings.ContainsFunc(z, func(r rune) bool { return r != '.' && notHostByte(r) }) {
			return "", fmt.Errorf("address %q: IPv6 zone %q: want an interface name", s, z)
		}
		return net.JoinHostPort(ip.String(), strconv.Itoa(p)), nil
	}
	if strings.HasPrefix(s, "[") {
		return "", fmt.Errorf("address %q: %q in brackets is not an IPv6 address", s, host)
	}
	if err := checkHostname(host); err != nil {
		return "", fmt.Errorf("address %q: %w", s, err)
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// parsePort accepts decimal digits only: strconv.Atoi would also take "+80"
// and "-0", which are typos rather than ports.
func parsePort(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty port")
	}
	if len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535", s)
	}
	p, _ := strconv.Atoi(s) // at most 5 digits, cannot fail
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %d out of range 1-65535", p)
	}
	return p, nil
}

// checkHostname accepts DNS names: dot-separated labels of letters, digits,
// '-' and '_' (service names like _etcd-server use it), each 1-63 bytes, at
// most 253 bytes in all, with an optional final dot. It is deliberately not
// stricter (labels may start with a digit or '-'): the resolver has the last
// word, this only keeps garbage such as spaces, slashes or control bytes out
// of the routing table.
func checkHostname(h string) error {
	name := strings.TrimSuffix(h, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("host %q: want an IP address or a DNS name of 1-253 bytes", h)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q: empty or over-long (>63 bytes) label", h)
		}
		if i := strings.IndexFunc(label, notHostByte); i >= 0 {
			return fmt.Errorf("host %q: character %q not allowed in a DNS name", h, label[i])
		}
	}
	return nil
}

func notHostByte(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
		return false
	}
	return true
}
