package server

import (
	"net"
	"net/url"
	"slices"
	"strings"
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

// withOwnRegistry adds kiln's own registry to the registries builders
// reach over plain HTTP when it is served that way on loopback (the
// default, http://127.0.0.1:7420), so a --save push and a FROM of a saved
// image work with no flags. It is decided before listening, from
// --public-url or the listen address. A port the kernel picks (":0"), an
// IPv6 literal (BuildKit's config cannot name one) or a non-loopback host
// is left to --insecure-registry.
func withOwnRegistry(insecure []string, publicURL, addr string) []string {
	base := publicURL
	if base == "" {
		base = "http://" + addr
	}
	if !strings.HasPrefix(base, "http://") {
		return insecure
	}
	h := registryHostFor(base)
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port = h, ""
	}
	if port == "0" || strings.ContainsAny(host, ":[]") || !isLoopback(host) || slices.Contains(insecure, h) {
		return insecure
	}
	return append(slices.Clone(insecure), h)
}

// isLoopback: "localhost" or a loopback IP literal.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
