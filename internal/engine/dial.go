package engine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/moby/buildkit/client"
)

// Connection is what kiln's GetBuildKitConnection answers: where a builder
// listens and the credentials to reach it.
type Connection struct {
	// Endpoint is "tcp://host:port" or "unix:///path/to/socket".
	Endpoint string
	// ServerName is the name to verify the builder's certificate against;
	// "" means the endpoint's host.
	ServerName string
	// CertPEM and KeyPEM are the client certificate and key for mTLS.
	CertPEM, KeyPEM string
	// CACertPEM is the CA the builder's certificate must chain to.
	CACertPEM string
}

// dialCheckTimeout bounds the round trip Dial makes to check the builder
// answers.
const dialCheckTimeout = 30 * time.Second

// Dial connects a BuildKit client to a builder. tcp:// endpoints use mTLS
// when CertPEM and CACertPEM are set (all in memory) and plain gRPC
// otherwise; unix:// endpoints are plain. Dial makes one round trip
// (ListWorkers) so an unreachable builder is reported here, wrapped as
// errdefs.ErrUnavailable. The caller closes the client.
func Dial(ctx context.Context, c Connection) (*client.Client, error) {
	target, err := parseTarget(c)
	if err != nil {
		return nil, err
	}
	var opts []client.ClientOpt
	if target.tls != nil {
		opts = append(opts, client.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return target.dial(ctx)
		}))
	}
	bk, err := client.New(ctx, c.Endpoint, opts...)
	if err != nil {
		return nil, errdefs.Wrapf(errdefs.ErrUnavailable, err, "connecting to builder %s", c.Endpoint)
	}
	checkCtx, cancel := context.WithTimeout(ctx, dialCheckTimeout)
	defer cancel()
	if _, err := bk.ListWorkers(checkCtx); err != nil {
		_ = bk.Close()
		return nil, errdefs.Wrapf(errdefs.ErrUnavailable, err, "connecting to builder %s", c.Endpoint)
	}
	return bk, nil
}

// DialConn opens a raw connection to the builder c names: the stream a
// BuildKit client speaks gRPC on, over TLS for a tcp:// endpoint with
// credentials. The builder gateway splices its clients' streams onto it.
// A builder that cannot be reached is errdefs.ErrUnavailable.
func DialConn(ctx context.Context, c Connection) (net.Conn, error) {
	target, err := parseTarget(c)
	if err != nil {
		return nil, err
	}
	conn, err := target.dial(ctx)
	if err != nil {
		return nil, errdefs.Wrapf(errdefs.ErrUnavailable, err, "connecting to builder %s", c.Endpoint)
	}
	return conn, nil
}

// target is a checked Connection: where to dial, and how.
type target struct {
	network, addr string
	tls           *tls.Config // nil: plain
}

func (t target) dial(ctx context.Context) (net.Conn, error) {
	if t.tls != nil {
		d := &tls.Dialer{Config: t.tls}
		return d.DialContext(ctx, t.network, t.addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, t.network, t.addr)
}

// parseTarget checks c: a tcp:// endpoint with a host and port (mTLS when
// CertPEM and CACertPEM are set, plain gRPC otherwise), or a unix://
// socket (always plain).
func parseTarget(c Connection) (target, error) {
	u, err := url.Parse(c.Endpoint)
	if err != nil || c.Endpoint == "" {
		return target{}, errdefs.Invalidf("builder endpoint %q: want tcp://host:port or unix:///path", c.Endpoint)
	}
	useTLS := c.CertPEM != "" || c.KeyPEM != "" || c.CACertPEM != ""
	switch u.Scheme {
	case "tcp":
		if u.Host == "" {
			return target{}, errdefs.Invalidf("builder endpoint %q: missing host:port", c.Endpoint)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return target{}, errdefs.InvalidWrapf(err, "builder endpoint %q", c.Endpoint)
		}
		t := target{network: "tcp", addr: u.Host}
		if useTLS {
			if t.tls, err = tlsConfig(c, u.Hostname()); err != nil {
				return target{}, err
			}
		}
		return t, nil
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return target{}, errdefs.Invalidf("builder endpoint %q: missing socket path", c.Endpoint)
		}
		if useTLS {
			return target{}, errdefs.Invalidf("builder endpoint %q: TLS credentials are not supported over a unix socket", c.Endpoint)
		}
		return target{network: "unix", addr: path}, nil
	}
	return target{}, errdefs.Invalidf("builder endpoint %q: unsupported scheme %q (want tcp:// or unix://)", c.Endpoint, u.Scheme)
}

// tlsConfig builds the client TLS configuration from in-memory PEM.
func tlsConfig(c Connection, host string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: c.ServerName,
		// gRPC servers with TLS insist on ALPN h2.
		NextProtos: []string{"h2"},
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if c.CACertPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(c.CACertPEM)) {
			return nil, errdefs.Invalidf("builder connection: CA certificate is not valid PEM")
		}
		cfg.RootCAs = pool
	}
	switch {
	case c.CertPEM != "" && c.KeyPEM != "":
		cert, err := tls.X509KeyPair([]byte(c.CertPEM), []byte(c.KeyPEM))
		if err != nil {
			return nil, errdefs.InvalidWrapf(err, "builder connection: client certificate")
		}
		cfg.Certificates = []tls.Certificate{cert}
	case c.CertPEM != "" || c.KeyPEM != "":
		return nil, errdefs.Invalidf("builder connection: client certificate and key must be given together")
	}
	return cfg, nil
}
