// Package tlsclient holds the TLS settings attache dials a source of truth
// with (a Docker engine, etcd, Consul): the CA file the server's
// certificate is checked against, the client certificate the server may
// ask for, and the name the server's certificate must carry. It also puts
// a failed handshake into words an operator can act on: which side refused,
// and why (unknown authority, name mismatch, expired certificate).
//
// Typical usage:
//
//	conf, err := tlsclient.Files{CA: "ca.pem", Cert: "cert.pem", Key: "key.pem"}.Config()
//	if err != nil {
//		return err // a file is missing or unreadable, or the key does not match
//	}
//	resp, err := client.Do(req) // an http.Client whose transport dials with conf
//	if err != nil {
//		return fmt.Errorf("engine %s: %w", host, tlsclient.Explain(err))
//	}
//
// The CA file is read once, by Config; the client certificate and key are
// read again at every handshake, so a renewed certificate is used from the
// next connection on.
package tlsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Files names a client's TLS material. The zero value verifies the server
// against the system's CAs and sends no client certificate.
type Files struct {
	// CA is a PEM file of the authorities the server's certificate must be
	// signed by; "" means the system's.
	CA string
	// Cert and Key are the client certificate (a chain may follow it) and
	// its private key, sent when the server asks for one. Both or neither.
	Cert, Key string
	// ServerName is the name the server's certificate must be valid for;
	// "" means the host attache dials.
	ServerName string
}

// Config reads the files into a client TLS configuration. Every error names
// the file it is about.
func (f Files) Config() (*tls.Config, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("tls: a client certificate needs both cert and key, got cert %q and key %q", f.Cert, f.Key)
	}
	conf := &tls.Config{ServerName: f.ServerName, MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("tls: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: CA file %s: no PEM certificate in it", f.CA)
		}
		conf.RootCAs = pool
	}
	if f.Cert != "" {
		if _, err := f.clientCert(); err != nil {
			return nil, err
		}
		// Read at every handshake, so that a renewed certificate is sent
		// on the next connection without a restart. It is sent whatever
		// CAs the server names: a refusal then says which certificate
		// was refused, where not sending it would only say none came.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return f.clientCert() }
	}
	return conf, nil
}

func (f Files) clientCert() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: client certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	return &cert, nil
}

// DialFunc opens the connection TLS runs over, as net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial connects to addr with dial and does the TLS handshake with conf, its
// ServerName defaulting to addr's host; it suits http.Transport's
// DialTLSContext. The connection it returns reports the server's alert in
// place of the write error the alert causes: with TLS 1.3 a server refuses
// a client certificate after the client's side of the handshake is done,
// and then often resets the connection before the client's first request
// is written. The write fails, while the alert that says why waits, unread,
// in the socket.
func Dial(ctx context.Context, dial DialFunc, conf *tls.Config, network, addr string) (net.Conn, error) {
	raw, err := dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if conf.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		conf = conf.Clone()
		conf.ServerName = host
	}
	c := tls.Client(raw, conf)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return alertConn{c}, nil
}

// alertConn is a client TLS connection whose failed writes report the
// server's alert, when one came before the failure.
type alertConn struct{ *tls.Conn }

func (c alertConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		if alert := c.alert(); alert != nil {
			return n, alert
		}
	}
	return n, err
}

// alert reads what the server sent before the connection broke. After a
// failed write the connection is over, so the read returns at once; the
// deadline only bounds one that a failure of another kind left open.
func (c alertConn) alert() error {
	_ = c.Conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err := c.Conn.Read(make([]byte, 1))
	if isRemoteAlert(err) {
		return err
	}
	return nil
}

// isRemoteAlert reports whether err is an alert the server sent.
func isRemoteAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// Error is a TLS failure with what it means in words.
type Error struct {
	// What says what failed, such as "unknown authority: the server's
	// certificate is not signed by a CA in the CA file".
	What string
	Err  error
}

func (e *Error) Error() string { return "TLS: " + e.What + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// remoteAlerts are the alerts a server sends when it refuses the client's
// certificate, as crypto/tls spells them after "remote error: tls: ".
var remoteAlerts = []string{
	"bad certificate", "unknown certificate authority", "expired certificate", "revoked certificate", "unsupported certificate",
	"unknown certificate", "access denied",
}

// Explain returns err as an *Error saying what failed when it is a TLS
// failure it recognises, and err unchanged otherwise (nil stays nil).
func Explain(err error) error {
	if err == nil {
		return nil
	}
	if what := explain(err); what != "" {
		return &Error{What: what, Err: err}
	}
	return err
}

func explain(err error) string {
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return "unknown authority: the server's certificate is not signed by a CA in the CA file (or the system's, without one)"
	}
	var host x509.HostnameError
	if errors.As(err, &host) {
		return fmt.Sprintf("name mismatch: the server's certificate is not valid for %q (set the server name the certificate carries)", host.Host)
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		if invalid.Reason == x509.Expired {
			return "certificate expired: the server's certificate (or its CA) is expired or not yet valid"
		}
		return "invalid server certificate"
	}
	var header tls.RecordHeaderError
	if errors.As(err, &header) {
		return "not TLS: the server did not answer in TLS (a plain-text port?)"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		alert := strings.TrimPrefix(op.Err.Error(), "tls: ")
		if alert == "certificate required" {
			return "the server requires a client certificate and none is configured"
		}
		for _, a := range remoteAlerts {
			if alert == a {
				return fmt.Sprintf("the server refused the client certificate (%s)", alert)
			}
		}
		return fmt.Sprintf("the server ended the handshake (%s)", alert)
	}
	return ""
}
