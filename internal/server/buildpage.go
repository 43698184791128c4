package server

import (
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/auth"
)

// buildURL is a build's URL, <public URL>/builds/<id>, which CreateBuild
// and GetBuild answer as build_url and the depot CLI prints. With no
// --public-url it is the listener's address, a wildcard bind read as
// 127.0.0.1 (as registryHostFor does).
func (s *Server) buildURL(id string) string {
	return reachableBase(s.publicURL()) + "/builds/" + url.PathEscape(id)
}

// reachableBase is base with an unspecified host (0.0.0.0, ::) replaced by
// 127.0.0.1, and no trailing slash.
func reachableBase(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return strings.TrimSuffix(base, "/")
	}
	port := u.Port()
	if ip := net.ParseIP(u.Hostname()); u.Hostname() == "" || (ip != nil && ip.IsUnspecified()) {
		u.Host = "127.0.0.1"
		if port != "" {
			u.Host = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return strings.TrimSuffix(u.String(), "/")
}

// mountBuildPage serves GET /builds/{id} (depot.BuildPage): JSON with the
// API's tokens, and html, the dashboard's page, to a browser.
func (s *Server) mountBuildPage(mux *http.ServeMux, authn *auth.Authenticator, html http.Handler) {
	mux.Handle("GET /builds/{id}", &depot.BuildPage{Builds: s.builds, Authn: authn, Logger: s.cfg.Logger, HTML: html})
}
