package server

import (
	"net"
	"net/url"
	"strings"

	"github.com/kiln-dev/kiln/internal/builder"
)

// registryHost is kiln's registry as clients and builders reach it (see
// registryHostFor), for --save references and GetPullInfo.
func (s *Server) registryHost() string { return registryHostFor(s.publicURL()) }

// registryHostFor is host[:port] of a base URL: the registry answers at
// /v2/ on the same listener, so a path in --public-url does not apply to
// it. A server bound to every interface (":7420", "0.0.0.0:7420") with no
// --public-url is reached at 127.0.0.1.
func registryHostFor(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return ""
	}
	host, port := u.Hostname(), u.Port()
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	if port == "" {
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, port)
}

// ownRegistry is kiln's registry as builders reach it: over TLS, trusting
// kiln's root CA (the certificate kiln made for itself) and, with the
// operator's certificate, that file's chain and the system's roots. A port
// the kernel has not picked yet (":0" before Listen) or a bracketed IPv6
// literal (BuildKit's config cannot name one) leaves it unconfigured.
func (s *Server) ownRegistry() builder.OwnRegistry {
	h := s.registryHost()
	if h == "" || strings.HasSuffix(h, ":0") || strings.ContainsAny(h, "[]") {
		return builder.OwnRegistry{}
	}
	cas := []string{s.ca.RootPath()}
	if s.cfg.TLS == TLSFiles {
		cas = append(cas, s.cfg.TLSCert)
	}
	return builder.OwnRegistry{Host: h, CAFiles: cas}
}

// gatewayAddr is this replica's builder gateway as clients reach it: its
// own listener, at its advertised URL's host and port (the public URL's
// without one).
func (s *Server) gatewayAddr() string { return gatewayAddrOf(s.advertiseURL()) }

// gatewayAddrOf is the gateway address at a base URL's host and port (its
// scheme's default port when it names none); "" if it has no host.
func gatewayAddrOf(base string) string {
	h := registryHostFor(base)
	if h == "" {
		return ""
	}
	if _, _, err := net.SplitHostPort(h); err != nil { // no port in the URL
		port := "80"
		if strings.HasPrefix(base, "https://") {
			port = "443"
		}
		h = net.JoinHostPort(strings.Trim(h, "[]"), port)
	}
	return "tcp://" + h
}
