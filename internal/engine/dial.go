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
	u, err := url.Parse(c.Endpoint)
	if err != nil || c.Endpoint == "" {
		return nil, errdefs.Invalidf("builder endpoint %q: want tcp://host:port or unix:///path", c.Endpoint)
	}
	useTLS := c.CertPEM != "" || c.KeyPEM != "" || c.CACertPEM != ""

	var opts []client.ClientOpt
	switch u.Scheme {
	case "tcp":
		if u.Host == "" {
			return nil, errdefs.Invalidf("builder endpoint %q: missing host:port", c.Endpoint)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return nil, errdefs.InvalidWrapf(err, "builder endpoint %q", c.Endpoint)
		}
		if useTLS {
			cfg, err := tlsConfig(c, u.Hostname())
			if err != nil {
				return nil, err
			}
			addr := u.Host
			opts = append(opts, client.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				d := &tls.Dialer{Config: cfg}
				return d.DialContext(ctx, "tcp", addr)
			}))
		}
	case "unix":
		if u.Path == "" && u.Opaque == "" {
			return nil, errdefs.Invalidf("builder endpoint %q: missing socket path", c.Endpoint)
		}
		if useTLS {
			return nil, errdefs.Invalidf("builder endpoint %q: TLS credentials are not supported over a unix socket", c.Endpoint)
		}
	default:
		return nil, errdefs.Invalidf("builder endpoint %q: unsupported scheme %q (want tcp:// or unix://)", c.Endpoint, u.Scheme)
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
