package etcdclient

import (
	"context"
	"crypto/tls"
	"net"

	"google.golang.org/grpc/credentials"

	"github.com/attache/attache/internal/tlsclient"
)

// recorded is gRPC's TLS credentials with every client handshake's
// failure, and the server's alert after one, kept by a tlsclient.Recorder.
type recorded struct {
	credentials.TransportCredentials
	rec *tlsclient.Recorder
	// serverName, when set, is the name the server's certificate must
	// carry; gRPC would check the dialled host instead.
	serverName string
}

// recordingCreds is gRPC's TLS over conf, reporting to rec.
func recordingCreds(rec *tlsclient.Recorder, conf *tls.Config) credentials.TransportCredentials {
	return &recorded{TransportCredentials: credentials.NewTLS(conf), rec: rec, serverName: conf.ServerName}
}

func (r *recorded) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	addr := raw.RemoteAddr().String()
	if r.serverName != "" {
		// gRPC's TLS takes the server name from the authority it is given.
		authority = r.serverName
	}
	conn, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		r.rec.Note(addr, err)
		return nil, nil, err
	}
	return r.rec.Conn(conn, addr), info, nil
}

func (r *recorded) Clone() credentials.TransportCredentials {
	return &recorded{TransportCredentials: r.TransportCredentials.Clone(), rec: r.rec, serverName: r.serverName}
}
