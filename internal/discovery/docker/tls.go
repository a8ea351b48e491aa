package docker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/attache/attache/internal/tlsclient"
)

// The docker CLI's TLS variables, honoured when the configuration says
// nothing about TLS.
const (
	// EnvTLSVerify, when not empty, turns TLS on for tcp:// engines, with
	// the engine's certificate checked (any value, as the docker CLI
	// reads it).
	EnvTLSVerify = "DOCKER_TLS_VERIFY"
	// EnvTLS, when not empty, turns TLS on too. The docker CLI then skips
	// checking the engine's certificate; attache always checks it.
	EnvTLS = "DOCKER_TLS"
	// EnvCertPath is the directory of ca.pem, cert.pem and key.pem,
	// default ~/.docker.
	EnvCertPath = "DOCKER_CERT_PATH"
)

// engineTLS works out how host is reached: over TLS with conf when it is
// set; otherwise from the docker CLI's variables (getenv reads them). nil
// means plain HTTP. TLS is for tcp:// hosts: conf with another scheme is an
// error, while the variables are ignored for a unix socket (they often sit
// in an environment that also reaches a local engine).
func engineTLS(host string, conf *tlsclient.Files, getenv func(string) string) (*tlsclient.Files, error) {
	tcp := strings.HasPrefix(host, "tcp://")
	if conf != nil {
		if !tcp {
			return nil, fmt.Errorf("docker host %q: TLS is for tcp:// hosts", host)
		}
		return conf, nil
	}
	if !tcp || (getenv(EnvTLSVerify) == "" && getenv(EnvTLS) == "") {
		return nil, nil
	}
	dir := getenv(EnvCertPath)
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("%s is set and %s is not: the default ~/.docker: %w", EnvTLSVerify, EnvCertPath, err)
		}
		dir = filepath.Join(home, ".docker")
	}
	// As the docker CLI does, each file is used when it exists: without
	// ca.pem the system's CAs check the engine, without cert.pem and
	// key.pem no client certificate is sent.
	f := &tlsclient.Files{}
	for _, p := range []struct {
		name string
		to   *string
	}{{"ca.pem", &f.CA}, {"cert.pem", &f.Cert}, {"key.pem", &f.Key}} {
		path := filepath.Join(dir, p.name)
		_, err := os.Stat(path)
		switch {
		case err == nil:
			*p.to = path
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("docker TLS from %s: %w", EnvCertPath, err)
		}
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("docker TLS from %s=%s: cert.pem and key.pem go together, found only %s",
			EnvCertPath, dir, filepath.Base(f.Cert+f.Key))
	}
	return f, nil
}

// hostOrDefault is host, else $DOCKER_HOST, else the default socket.
func hostOrDefault(host string) string {
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = DefaultHost
	}
	return host
}

// dialEngine makes the client for host, with TLS from conf or else from
// the docker CLI's variables.
func dialEngine(host string, conf *tlsclient.Files) (*engine, error) {
	tlsFiles, err := engineTLS(host, conf, os.Getenv)
	if err != nil {
		return nil, err
	}
	return newEngine(host, tlsFiles)
}

// repeated tells a new failure to reach the engine from the same one
// again: an engine that stays away, or keeps refusing attache's
// certificate, is one warning, not one per retry; the retries go to debug.
type repeated struct{ last string }

// level is the level to log err at. ok says the connection worked before
// it failed: the next failure is news even if it reads the same. TLS
// failures are compared by what failed, since net/http words the same
// refusal in more than one way.
func (r *repeated) level(err error, ok bool) slog.Level {
	msg := err.Error()
	if te, isTLS := errors.AsType[*tlsclient.Error](err); isTLS {
		msg = te.What
	}
	if ok || msg != r.last {
		r.last = msg
		return slog.LevelWarn
	}
	return slog.LevelDebug
}
