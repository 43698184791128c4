package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/internal/buildreq"
)

// Builders' own fetches.
//
// BuildKit's git source runs `git` in buildkitd's process, in the host's
// network namespace, not in a RUN step's: the egress policy of network.go
// does not see it. So each builder run gets a fetch proxy: an HTTP proxy
// on a loopback port of kiln's, named to buildkitd as ALL_PROXY. git
// (libcurl) sends every http:// and https:// fetch through it; Go programs
// ignore ALL_PROXY, so buildkitd's own registry traffic (image pulls and
// pushes, which include kiln's registry on loopback) is not affected.
//
// The proxy applies the steps' policy to the address it actually
// connects to (PrivateDestination, checked in the dialer after name
// resolution): loopback, private, link-local and reserved ranges and
// this host's own addresses are refused unless the project's egress
// allow-list opens them (loopback never). Names are resolved by the
// proxy, so a name that resolves to a public address at a check and to a
// private one at the fetch (DNS rebinding) gains nothing, and a redirect
// to a private address is refused when curl follows it through the proxy.
//
// A refused connection is answered 421 (Misdirected Request), on CONNECT
// and plain requests alike, so the git error it produces ("CONNECT tunnel
// failed, response 421", "The requested URL returned error: 421") is told
// apart from a git server's own 401 and 403 (engine.gitError; the status is buildreq.FetchRefusedStatus).
//
// RUN steps cannot reach the proxy: their networks reach no address of
// the host (KILN-I-…).

const (
	fetchDialTimeout   = 30 * time.Second
	fetchHeaderTimeout = 30 * time.Second
	// fetchMaxConns bounds one builder's open proxied connections: git
	// opens a few per fetch, a bake of many git contexts a few dozen.
	fetchMaxConns = 128
)

// fetchProxy is one builder run's proxy.
type fetchProxy struct {
	ln    net.Listener
	srv   *http.Server
	rp    *httputil.ReverseProxy
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	slots chan struct{}
	log   *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{} // hijacked CONNECT tunnels, closed by Close
}

// startFetchProxy listens on a loopback port and serves until Close.
// allow is asked at each connection for the project's egress allow-list
// (so a change applies at once); open lets every destination through
// (kiln serve --git-private-hosts).
func startFetchProxy(allow func() []netip.Prefix, open bool, log *slog.Logger) (*fetchProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("builder fetch proxy: %w", err)
	}
	p := &fetchProxy{ln: ln, slots: make(chan struct{}, fetchMaxConns), log: log, conns: map[net.Conn]struct{}{}}
	d := &net.Dialer{Timeout: fetchDialTimeout, Control: func(network, address string, _ syscall.RawConn) error {
		if open {
			return nil
		}
		return checkFetchDestination(address, allow())
	}}
	p.dial = d.DialContext
	tr := &http.Transport{
		Proxy:                 nil, // never another proxy: the check is on the real destination
		DialContext:           p.dial,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 5 * time.Minute, // git's server may pack a large repository first
		DisableCompression:    true,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.Out.URL = r.In.URL; r.Out.Host = r.In.Host },
		Transport:     tr,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.refuse(w, r.Host, err)
		},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: fetchHeaderTimeout, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// URL is the proxy's address as ALL_PROXY takes it.
func (p *fetchProxy) URL() string { return "http://" + p.ln.Addr().String() }

// Close stops the proxy and cuts every connection through it.
func (p *fetchProxy) Close() {
	_ = p.srv.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.rp.Transport.(*http.Transport).CloseIdleConnections()
}

func (p *fetchProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case p.slots <- struct{}{}:
		defer func() { <-p.slots }()
	default:
		http.Error(w, "kiln: too many fetches through this builder at once", http.StatusServiceUnavailable)
		return
	}
	if r.Method == http.MethodConnect {
		p.tunnel(w, r)
		return
	}
	// A proxy request names an absolute URL; anything else is not one.
	if !r.URL.IsAbs() || (r.URL.Scheme != "http" && r.URL.Scheme != "https") {
		http.Error(w, "kiln: this is a builder's fetch proxy; it takes proxy requests only", http.StatusBadRequest)
		return
	}
	r.Header.Del("Proxy-Authorization")
	p.rp.ServeHTTP(w, r)
}

// tunnel serves CONNECT host:port: https fetches, end to end encrypted.
func (p *fetchProxy) tunnel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), fetchDialTimeout)
	up, err := p.dial(ctx, "tcp", r.Host)
	cancel()
	if err != nil {
		p.refuse(w, r.Host, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		http.Error(w, "kiln: cannot tunnel", http.StatusInternalServerError)
		return
	}
	down, buf, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	p.track(down, up)
	defer p.untrack(down, up)
	if _, err := down.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		// What the client sent after its CONNECT, already buffered, first.
		_, _ = io.Copy(up, io.MultiReader(io.LimitReader(buf, int64(buf.Reader.Buffered())), down))
		closeWrite(up)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(down, up)
		closeWrite(down)
		done <- struct{}{}
	}()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

func (p *fetchProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	p.mu.Unlock()
}

func (p *fetchProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	for _, c := range cs {
		delete(p.conns, c)
		_ = c.Close()
	}
	p.mu.Unlock()
}

// refuse answers a failed or refused connection to host.
func (p *fetchProxy) refuse(w http.ResponseWriter, host string, err error) {
	var pe *privateDestinationError
	if errors.As(err, &pe) {
		p.log.Info("builder fetch refused", "host", host, "address", pe.addr)
		http.Error(w, "kiln: "+pe.Error(), buildreq.FetchRefusedStatus)
		return
	}
	http.Error(w, "kiln: "+host+": "+err.Error(), http.StatusBadGateway)
}

// privateDestinationError is a connection the policy refused.
type privateDestinationError struct{ addr netip.Addr }

func (e *privateDestinationError) Error() string {
	return e.addr.String() + " is a private address builds may not reach (loopback, private, link-local or this server's own)"
}

// checkFetchDestination is the dialer's check of the address it is about
// to connect to ("ip:port", after name resolution).
func checkFetchDestination(address string, allow []netip.Prefix) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		// Not an IP address: the dialer resolved nothing. Refuse rather
		// than guess.
		return fmt.Errorf("unexpected dial address %q", strings.TrimSpace(address))
	}
	if PrivateDestination(ap.Addr(), allow) {
		return &privateDestinationError{addr: ap.Addr().Unmap()}
	}
	return nil
}
