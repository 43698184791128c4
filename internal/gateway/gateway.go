// Package gateway is how build clients reach builders: kiln's listener
// hands it every TLS connection whose server name (SNI) names a builder
// ("<project>-<arch>.builder.kiln"). The gateway presents that builder's
// server certificate, requires a client certificate from the builder's
// project CA, asks whether the build named in the certificate may use the
// builder now, and then splices the decrypted stream to the builder's unix
// socket, which nothing else can reach.
//
// Access is revocable: Revoke and RevokeProject close a build's (or a
// project's) connections at once, and every live connection is authorized
// again every Recheck, so a revocation the caller did not announce (a token
// deleted, a build ended by another path) still ends it within that bound.
//
// The package knows nothing of builds or stores: what a "live lease" is, is
// the Authorize function's business.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// ServerNameSuffix ends every builder's TLS server name.
const ServerNameSuffix = ".builder.kiln"

// Handles reports whether a TLS server name is a builder's, i.e. whether a
// connection asking for it belongs to the gateway.
func Handles(serverName string) bool {
	return strings.HasSuffix(strings.ToLower(serverName), ServerNameSuffix)
}

// Builders resolves a builder's server name.
type Builders interface {
	// Lookup returns the project of the builder named serverName and how
	// to reach its buildkitd (a unix socket on this machine, or a pod's
	// address with kiln's client certificate for it); ok is false for a
	// name no builder has.
	Lookup(serverName string) (projectID string, backend engine.Connection, ok bool)
	// Hold marks the builder named serverName in use while a connection
	// to it is open, so it is not stopped for idleness under a solve;
	// release ends the hold (once; later calls do nothing).
	Hold(serverName string) (release func())
}

// Certs issues what the gateway presents and trusts for a project.
type Certs interface {
	ProjectCA(projectID string) (certPEM []byte, err error)
	IssueServer(projectID, serverName string, ips []net.IP, ttl time.Duration) (certPEM, keyPEM []byte, err error)
}

// Authorizer decides whether build buildID may use project projectID's
// builders now. An error refuses (or, for a live connection, ends) access.
type Authorizer func(ctx context.Context, projectID, buildID string) error

// Config configures a Gateway. Builders, Certs and Authorize are required.
type Config struct {
	Builders  Builders
	Certs     Certs
	Authorize Authorizer
	// Recheck is how often live connections are authorized again; 0 → 15s.
	Recheck time.Duration
	// HandshakeTimeout bounds a client's TLS handshake; 0 → 10s.
	HandshakeTimeout time.Duration
	// OnSolve, if set, is told of every BuildKit Solve call a client
	// makes through the gateway: the build (from its certificate), the
	// builder's project and server name, the solve's ref, which the
	// builder's Control.Status streams, and the label the client gave its
	// steps (steps.LabelHeader; "" for none). It is called from the splice's
	// reader and must not block. The gateway learns it by a passive tap
	// on the decrypted client stream (tap.go); a stream the tap cannot
	// read (or past the taps' shared memory budget) is spliced all the
	// same and reported to no one, and so is a ref not of the form
	// BuildKit's clients give (1 to 64 of [a-z0-9]).
	OnSolve func(buildID, projectID, serverName, ref, label string)
	Logger  *slog.Logger // nil → discard
}

// clientCNPrefix starts the common name of per-build client certificates
// (build.Service issues "build:<build id>").
const clientCNPrefix = "build:"

const (
	serverCertTTL   = 24 * time.Hour
	serverCertRenew = time.Hour
)

// Gateway terminates builders' mutual TLS and splices to their sockets.
// All methods are safe for concurrent use.
type Gateway struct {
	cfg Config
	log *slog.Logger
	// tapMem is what the solve taps of all connections may hold together.
	tapMem *budget

	// mu guards certs, pools, conns and each conn's builder and spliced.
	mu    sync.Mutex
	certs map[string]serverCert     // server name → the certificate presented for it
	pools map[string]*x509.CertPool // project → its CA, the only issuer accepted
	// conns are the client connections past their handshake: being
	// authorized, or spliced. A connection is in it before Authorize is
	// asked, so a Revoke while the answer is pending closes it too.
	conns map[*conn]struct{}
}

// serverCert is a builder's server certificate and the project it is of.
type serverCert struct {
	*tls.Certificate
	projectID string
}

// conn is one client connection of a build.
type conn struct {
	projectID, buildID string
	client             net.Conn
	// builder is the builder's socket, set with spliced once the build is
	// authorized, under Gateway.mu and only while the conn is in conns: a
	// conn revoked before that never gets one (Serve closes the socket it
	// dialed), so close, called after the conn left conns, reads it safely.
	builder net.Conn
	// spliced: authorized and connected to the builder. Active, Conns and
	// the recheck count only these.
	spliced bool
	once    sync.Once
}

func (c *conn) close() {
	c.once.Do(func() {
		c.client.Close()
		if c.builder != nil {
			c.builder.Close()
		}
	})
}

// New returns a Gateway; Run starts its recheck loop.
func New(cfg Config) (*Gateway, error) {
	if cfg.Builders == nil || cfg.Certs == nil || cfg.Authorize == nil {
		return nil, fmt.Errorf("gateway: Builders, Certs and Authorize are required: %w", errdefs.ErrInvalid)
	}
	if cfg.Recheck <= 0 {
		cfg.Recheck = 15 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Gateway{cfg: cfg, log: log, tapMem: newBudget(tapBudget), certs: map[string]serverCert{}, pools: map[string]*x509.CertPool{}, conns: map[*conn]struct{}{}}, nil
}

// TLSConfig is the server configuration for a client asking for a
// builder's name: that builder's certificate, and a client certificate
// from its project's CA required. It fails for a name no builder has.
func (g *Gateway) TLSConfig(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	name := strings.ToLower(hello.ServerName)
	projectID, _, ok := g.cfg.Builders.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("gateway: no builder is named %q", name)
	}
	cert, pool, err := g.credentials(projectID, name)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// BuildKit's client speaks gRPC, which insists on ALPN h2.
		NextProtos: []string{"h2"},
	}, nil
}

// credentials returns the server certificate for name (issued by the
// project CA, reissued an hour before it expires) and the project's CA pool.
func (g *Gateway) credentials(projectID, name string) (*tls.Certificate, *x509.CertPool, error) {
	g.mu.Lock()
	cert, pool := g.certs[name].Certificate, g.pools[projectID]
	g.mu.Unlock()
	if cert != nil && pool != nil && time.Until(cert.Leaf.NotAfter) > serverCertRenew {
		return cert, pool, nil
	}
	if pool == nil {
		caPEM, err := g.cfg.Certs.ProjectCA(projectID)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: project CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, nil, fmt.Errorf("gateway: project %s: CA is not PEM", projectID)
		}
	}
	if cert == nil || time.Until(cert.Leaf.NotAfter) <= serverCertRenew {
		certPEM, keyPEM, err := g.cfg.Certs.IssueServer(projectID, name, nil, serverCertTTL)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: server certificate: %w", err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: server certificate: %w", err)
		}
		cert = &c // X509KeyPair fills Leaf
	}
	g.mu.Lock()
	g.certs[name], g.pools[projectID] = serverCert{cert, projectID}, pool
	g.mu.Unlock()
	return cert, pool, nil
}

// Serve completes the handshake on c (a server-side *tls.Conn whose
// configuration came from TLSConfig), authorizes the build named in the
// client certificate and splices c to the builder until either side
// closes or the access is revoked. It closes c.
func (g *Gateway) Serve(c *tls.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.HandshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		g.log.Info("builder connection refused", "remote", c.RemoteAddr().String(), "reason", err)
		c.Close()
		return
	}
	st := c.ConnectionState()
	name := strings.ToLower(st.ServerName)
	projectID, backend, ok := g.cfg.Builders.Lookup(name)
	if !ok || len(st.PeerCertificates) == 0 {
		c.Close()
		return
	}
	leaf := st.PeerCertificates[0]
	buildID, found := strings.CutPrefix(leaf.Subject.CommonName, clientCNPrefix)
	ous := leaf.Subject.OrganizationalUnit
	if !found || buildID == "" || len(ous) != 1 || ous[0] != projectID {
		g.log.Info("builder connection refused", "remote", c.RemoteAddr().String(), "builder", name, "reason", "not a per-build client certificate of the project")
		c.Close()
		return
	}
	// Registered before Authorize: a Revoke of the build from now on
	// closes this connection, even while the answer is on its way.
	cn := &conn{projectID: projectID, buildID: buildID, client: c}
	g.mu.Lock()
	g.conns[cn] = struct{}{}
	g.mu.Unlock()
	forget := func() {
		g.mu.Lock()
		delete(g.conns, cn)
		g.mu.Unlock()
		cn.close()
	}
	if err := g.cfg.Authorize(ctx, projectID, buildID); err != nil {
		g.log.Info("builder connection refused", "remote", c.RemoteAddr().String(), "builder", name, "build_id", buildID, "reason", err)
		forget()
		return
	}
	bc, err := engine.DialConn(ctx, backend)
	if err != nil {
		g.log.Warn("builder unreachable", "builder", name, "build_id", buildID, "err", err)
		forget()
		return
	}
	release := g.cfg.Builders.Hold(name)
	defer release()
	g.mu.Lock()
	_, live := g.conns[cn]
	if live {
		cn.builder, cn.spliced = bc, true
	}
	g.mu.Unlock()
	if !live {
		g.log.Info("builder connection refused", "remote", c.RemoteAddr().String(), "builder", name, "build_id", buildID, "reason", "revoked while being authorized")
		bc.Close()
		cn.close()
		return
	}
	var src io.Reader = cn.client
	if g.cfg.OnSolve != nil {
		t := newTap(g.tapMem, func(ref, label string) { g.cfg.OnSolve(buildID, projectID, name, ref, label) }, func(err error) {
			g.log.Debug("builder connection no longer tapped for solves", "builder", name, "build_id", buildID, "reason", err)
		})
		// The splice's reader may stop without a last read (its writer
		// failed): what the tap holds goes back to the budget here too.
		defer t.release()
		src = tapReader{r: cn.client, t: t}
	}
	g.splice(cn, src)
	g.mu.Lock()
	delete(g.conns, cn)
	g.mu.Unlock()
}

// splice copies both ways until one side ends, then closes both. A half
// close is passed on (gRPC does not use it, but a plain client might).
// fromClient is what is read of the client: cn.client, or a tap over it.
func (g *Gateway) splice(cn *conn, fromClient io.Reader) {
	done := make(chan struct{}, 2)
	pipe := func(dst net.Conn, src io.Reader) {
		_ = pump(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(cn.builder, fromClient)
	go pipe(cn.client, cn.builder)
	<-done
	cn.close()
	<-done
}

// Revoke closes every connection of the build, including one whose
// Authorize answer is still pending, and returns how many there were. New
// ones are refused by Authorize, not by Revoke.
func (g *Gateway) Revoke(buildID string) int {
	return g.closeWhere(func(c *conn) bool { return c.buildID == buildID })
}

// RevokeProject closes every connection to the project's builders and
// forgets the project's CA and its builders' certificates: it is called
// when the project is deleted (a later handshake for it, if any, loads
// and issues them again).
func (g *Gateway) RevokeProject(projectID string) int {
	g.mu.Lock()
	delete(g.pools, projectID)
	for name, c := range g.certs {
		if c.projectID == projectID {
			delete(g.certs, name)
		}
	}
	g.mu.Unlock()
	return g.closeWhere(func(c *conn) bool { return c.projectID == projectID })
}

func (g *Gateway) closeWhere(match func(*conn) bool) int {
	g.mu.Lock()
	var hit []*conn
	for c := range g.conns {
		if match(c) {
			hit = append(hit, c)
			// Gone at once, not when its splice notices: a later Revoke,
			// Active or Conns must not count it.
			delete(g.conns, c)
		}
	}
	g.mu.Unlock()
	for _, c := range hit {
		c.close()
	}
	return len(hit)
}

// Run authorizes live connections again every Recheck until ctx is done,
// closing those no longer allowed.
func (g *Gateway) Run(ctx context.Context) {
	t := time.NewTicker(g.cfg.Recheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.recheck(ctx)
	}
}

func (g *Gateway) recheck(ctx context.Context) {
	type key struct{ project, build string }
	g.mu.Lock()
	live := map[key]bool{}
	for c := range g.conns {
		if c.spliced {
			live[key{c.projectID, c.buildID}] = true
		}
	}
	g.mu.Unlock()
	for k := range live {
		err := g.cfg.Authorize(ctx, k.project, k.build)
		if err == nil || !revoked(err) || ctx.Err() != nil {
			continue // a store hiccup is not a revocation
		}
		if n := g.Revoke(k.build); n > 0 {
			g.log.Info("builder connections revoked", "project_id", k.project, "build_id", k.build, "connections", n, "reason", err)
		}
	}
}

// revoked reports whether an Authorize error says access is gone, as
// opposed to the answer being unknown for now.
func revoked(err error) bool {
	for _, kind := range []error{errdefs.ErrNotFound, errdefs.ErrPermission, errdefs.ErrUnauthenticated, errdefs.ErrFailedPrecondition, errdefs.ErrExpired, errdefs.ErrCanceled} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}

// Active reports whether any connection of build buildID is open: a
// client is talking to its builder (a solve may be in progress) even if
// the control plane has not heard from it lately.
func (g *Gateway) Active(buildID string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		if c.buildID == buildID && c.spliced {
			return true
		}
	}
	return false
}

// Conns reports how many spliced connections are open (for tests and
// status pages).
func (g *Gateway) Conns() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for c := range g.conns {
		if c.spliced {
			n++
		}
	}
	return n
}
