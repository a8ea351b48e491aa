package link

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/certs"
)

// Files are the three PEM files a host's link identity is read from.
type Files struct {
	// Cert is this host's certificate (a chain may follow it), Key its
	// private key.
	Cert, Key string
	// CA holds the certificates of the authorities whose signature a peer
	// must carry; during a CA rotation it holds both.
	CA string
}

// DefaultWatchInterval is how often Watch looks at the files.
const DefaultWatchInterval = 5 * time.Second

// Identity is this host's certificate and the CA pool peers are checked
// against, reloaded when the files change on disk. Handshakes read the
// current material once each, so a reload never touches an open connection:
// it only changes what the next handshakes use. A reload that fails (a file
// half-written, a key that does not match, a certificate the CA did not
// sign) keeps the previous material and logs why.
type Identity struct {
	files Files
	log   *slog.Logger
	stats *Stats

	cur atomic.Pointer[material]
	// gen counts the reloads that swapped material in: pooled link
	// connections set up under an older one retire.
	gen atomic.Uint64

	mu     sync.Mutex // serialises reloads
	stamps [3]stamp   // of the files as last read
	failed [32]byte   // hash of the contents that last failed, not to log it again
}

type material struct {
	cert *tls.Certificate // Leaf set
	pool *x509.CertPool
	sum  [32]byte // of the three files' contents
}

// stamp is what Watch compares to notice a change without reading a file.
type stamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// NewIdentity reads the files; any problem is an error naming the file.
// stats, when not nil, counts reloads.
func NewIdentity(f Files, log *slog.Logger, stats *Stats) (*Identity, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id := &Identity{files: f, log: log, stats: stats}
	m, stamps, err := id.read()
	if err != nil {
		return nil, err
	}
	id.cur.Store(m)
	id.gen.Add(1)
	id.stamps = stamps
	id.warnExpiry(m)
	return id, nil
}

// Stats are the counters the identity reports reloads to.
func (id *Identity) Stats() *Stats { return id.stats }

// Files are the paths the identity is read from.
func (id *Identity) Files() Files { return id.files }

// Generation changes each time a reload puts new material in use.
func (id *Identity) Generation() uint64 { return id.gen.Load() }

// Certificate is the current certificate, for a handshake.
func (id *Identity) Certificate() *tls.Certificate { return id.cur.Load().cert }

// Pool is the current CA pool.
func (id *Identity) Pool() *x509.CertPool { return id.cur.Load().pool }

// NotAfter is when the current certificate expires.
func (id *Identity) NotAfter() time.Time { return id.cur.Load().cert.Leaf.NotAfter }

// Names are the current certificate's names (CN and DNS SANs).
func (id *Identity) Names() []string { return certs.Names(id.cur.Load().cert.Leaf) }

func (id *Identity) read() (*material, [3]stamp, error) {
	var stamps [3]stamp
	paths := [3]string{id.files.Cert, id.files.Key, id.files.CA}
	what := [3]string{"certificate", "key", "CA"}
	var data [3][]byte
	h := sha256.New()
	for i, p := range paths {
		if p == "" {
			return nil, stamps, fmt.Errorf("link %s: no file given", what[i])
		}
		st, err := statFile(p)
		if err != nil {
			return nil, stamps, fmt.Errorf("link %s: %w", what[i], err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, stamps, fmt.Errorf("link %s: %w", what[i], err)
		}
		stamps[i], data[i] = st, b
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	m := &material{}
	copy(m.sum[:], h.Sum(nil))
	cert, err := tls.X509KeyPair(data[0], data[1])
	if err != nil {
		return m, stamps, fmt.Errorf("link certificate %s and key %s: %w", paths[0], paths[1], err)
	}
	cas, err := certs.ParseCerts(data[2])
	if err != nil {
		return m, stamps, fmt.Errorf("link CA %s: %w", paths[2], err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	// A certificate the CA did not sign would be refused by every peer:
	// say so now, naming the files, rather than in every peer's log.
	// Expiry is left to warnExpiry: an expired certificate is replaced by
	// writing a new one, which the running process then picks up.
	_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired && signedBy(cert.Leaf, cas) {
		err = nil
	}
	if err != nil {
		return m, stamps, fmt.Errorf("link certificate %s is not signed by the CA in %s: %w", paths[0], paths[2], err)
	}
	m.cert, m.pool = &cert, pool
	return m, stamps, nil
}

func (id *Identity) warnExpiry(m *material) {
	leaf := m.cert.Leaf
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		id.log.Error("link certificate has expired: peers will refuse this host until it is replaced",
			"file", id.files.Cert, "not_after", leaf.NotAfter)
	case now.Before(leaf.NotBefore):
		id.log.Error("link certificate is not valid yet: peers will refuse this host",
			"file", id.files.Cert, "not_before", leaf.NotBefore)
	case leaf.NotAfter.Sub(now) < 14*24*time.Hour:
		id.log.Warn("link certificate expires soon", "file", id.files.Cert, "not_after", leaf.NotAfter)
	}
}

// Reload reads the files again if they changed since the last read (by
// modification time, size or inode) and swaps the material in if their
// contents differ and are valid. It reports whether new material is in
// use. A failure keeps the previous material; the same broken contents are
// logged once.
func (id *Identity) Reload() (bool, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if !id.changed() {
		return false, nil
	}
	m, stamps, err := id.read()
	cur := id.cur.Load()
	if m != nil && m.sum == cur.sum {
		id.stamps = stamps // touched, not changed
		return false, nil
	}
	if err != nil {
		if m == nil || m.sum != id.failed {
			if m != nil {
				id.failed = m.sum
			}
			id.log.Error("link certificate reload failed; the previous certificate stays in use", "error", err)
			id.stats.reload(false)
		}
		return false, err
	}
	id.cur.Store(m)
	id.gen.Add(1)
	id.stamps = stamps
	id.failed = [32]byte{}
	id.stats.reload(true)
	id.log.Info("link certificate reloaded", "file", id.files.Cert, "names", certs.Names(m.cert.Leaf),
		"not_after", m.cert.Leaf.NotAfter)
	id.warnExpiry(m)
	return true, nil
}

func (id *Identity) changed() bool {
	for i, p := range [3]string{id.files.Cert, id.files.Key, id.files.CA} {
		st, err := statFile(p)
		if err != nil || st != id.stamps[i] {
			return true
		}
	}
	return false
}

// Watch reloads the files every interval (0: DefaultWatchInterval) until
// ctx is done. Polling rather than inotify: it works the same for files
// replaced by rename, Kubernetes secret symlink swaps and bind mounts.
func (id *Identity) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = id.Reload() // logged inside
		}
	}
}

var errNotRegular = errors.New("not a regular file")

// signedBy reports whether one of cas signed c, whatever the dates.
func signedBy(c *x509.Certificate, cas []*x509.Certificate) bool {
	for _, ca := range cas {
		if c.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}
