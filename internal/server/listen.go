package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/retry"
)

// TLS modes of kiln serve's listener.
const (
	// TLSDefault serves plain HTTP (clients on loopback) and, on the same
	// port, TLS with a certificate from kiln's own CA: what builders use to
	// reach the registry, and what a client may use with SSL_CERT_FILE set to
	// DATA/pki/ca.crt.
	TLSDefault = ""
	// TLSAuto serves TLS only, with kiln's own certificate.
	TLSAuto = "auto"
	// TLSFiles serves TLS only, with the operator's certificate (TLSCert,
	// TLSKey); builders still reach the registry with kiln's own.
	TLSFiles = "files"
)

// peekTimeout bounds how long a new connection may take to send its first
// byte (which says TLS or plain), and TLS handshakes.
const peekTimeout = 10 * time.Second

// connMux sorts the connections of kiln's one listener. A connection whose
// first byte starts a TLS handshake is handshaken here: one asking for a
// builder's name goes to the builder gateway, any other to the HTTP server
// as a *tls.Conn (HTTP/2 or HTTP/1.1 by ALPN). A plain connection goes to
// the HTTP server (HTTP/1.1 or h2c) when plain HTTP is allowed, and is
// answered 400 otherwise. connMux is the net.Listener the HTTP server
// serves.
type connMux struct {
	ln         net.Listener
	tlsConfig  *tls.Config
	gw         *gateway.Gateway
	allowPlain bool

	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newConnMux(ln net.Listener, cfg *tls.Config, gw *gateway.Gateway, allowPlain bool) *connMux {
	m := &connMux{ln: ln, tlsConfig: cfg, gw: gw, allowPlain: allowPlain, conns: make(chan net.Conn), done: make(chan struct{})}
	go m.acceptLoop()
	return m
}

// acceptRetry waits out accept errors that pass (out of fds, a reset
// before accept): from 5 ms, doubling up to 1 s, for as long as they last.
var acceptRetry = retry.Policy{Attempts: -1, Delay: 5 * time.Millisecond, MaxDelay: time.Second}

// acceptLoop runs until the listener is closed (Close).
func (m *connMux) acceptLoop() {
	policy := acceptRetry
	policy.Retryable = func(err error) bool {
		select {
		case <-m.done:
			return false
		default:
		}
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err)
	}
	for {
		c, err := retry.Value(context.Background(), policy, func(context.Context) (net.Conn, error) { return m.ln.Accept() })
		if err != nil {
			m.Close() // a no-op when Close is what ended Accept
			return
		}
		go m.sort(c)
	}
}

// isTemporary: accept errors worth retrying (out of fds, a reset before
// accept).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// sort reads the first byte of c and hands c to whoever speaks its protocol.
func (m *connMux) sort(c net.Conn) {
	br := bufio.NewReaderSize(c, 512)
	_ = c.SetReadDeadline(time.Now().Add(peekTimeout))
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, r: br}
	if first[0] != 0x16 { // not a TLS handshake record
		if !m.allowPlain {
			_ = c.SetWriteDeadline(time.Now().Add(peekTimeout))
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" +
				"this kiln server speaks TLS only: use https:// (trust DATA/pki/ca.crt with SSL_CERT_FILE when kiln made the certificate)\n"))
			c.Close()
			return
		}
		m.deliver(pc)
		return
	}
	tc := tls.Server(pc, m.tlsConfig)
	_ = c.SetDeadline(time.Now().Add(peekTimeout))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	if gateway.Handles(tc.ConnectionState().ServerName) {
		m.gw.Serve(tc)
		return
	}
	m.deliver(tc)
}

func (m *connMux) deliver(c net.Conn) {
	select {
	case m.conns <- c:
	case <-m.done:
		c.Close()
	}
}

// Accept returns the next connection for the HTTP server.
func (m *connMux) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections already handed out are the HTTP
// server's and the gateway's to close.
func (m *connMux) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		err = m.ln.Close()
	})
	return err
}

func (m *connMux) Addr() net.Addr { return m.ln.Addr() }

// peekedConn is a connection whose first bytes were read ahead.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// serverTLS is the TLS configuration of the listener: a builder's name is
// the gateway's (its certificate, client certificates required); anything
// else gets the control plane's certificate.
func serverTLS(gw *gateway.Gateway, cert tls.Certificate) *tls.Config {
	api := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if gateway.Handles(hello.ServerName) {
				return gw.TLSConfig(hello)
			}
			return api, nil
		},
	}
}

// controlPlaneCert is the certificate kiln serves for the API and registry
// when the operator gave none: from kiln's root CA, for localhost, the
// loopback addresses, the listen address (every local address when
// listening on all of them) and the hosts of urls: the public and the
// advertised URL.
func controlPlaneCert(ca *pki.Authority, addr net.Addr, urls ...string) (tls.Certificate, error) {
	names := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	add := func(host string) {
		if host == "" {
			return
		}
		if ip := net.ParseIP(host); ip != nil {
			if ip.IsUnspecified() {
				if addrs, err := net.InterfaceAddrs(); err == nil {
					for _, a := range addrs {
						if n, ok := a.(*net.IPNet); ok {
							ips = append(ips, n.IP)
						}
					}
				}
				return
			}
			ips = append(ips, ip)
			return
		}
		names = append(names, host)
	}
	if ta, ok := addr.(*net.TCPAddr); ok {
		add(ta.IP.String())
	}
	for _, raw := range urls {
		if u, err := url.Parse(raw); err == nil && raw != "" {
			add(u.Hostname())
		}
	}
	certPEM, keyPEM, err := ca.IssueControlPlane(names, ips, 365*24*time.Hour)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// loadTLSFiles reads the operator's certificate and key.
func loadTLSFiles(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, fmt.Errorf("--tls-cert and --tls-key go together: %w", errdefs.ErrInvalid)
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("TLS certificate %s: %v: %w", certFile, err, errdefs.ErrInvalid)
	}
	return c, nil
}
