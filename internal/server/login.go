package server

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/api/depot"
	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// mountLogin serves the device login (depot.cli.v1beta1.LoginService, its
// approval page and kiln.v1.LoginAdminService) and depot.cli.v1beta1's
// ProjectsService. Pending logins live in the store.
// The returned service's Close is for shutdown: it ends waiting logins.
func (s *Server) mountLogin(mux *http.ServeMux, st store.Store, authn *auth.Authenticator, projects *project.Service) *login.Service {
	logins := login.New(st, login.Config{}, s.cfg.Logger)
	opts := []connect.HandlerOption{s.apiInterceptors(authn), connect.WithReadMaxBytes(1 << 20)}
	depot.MountCLIv1beta1(mux,
		&depot.LoginService{Logins: logins, PublicURL: s.publicURL, Logger: s.cfg.Logger},
		&depot.CLIProjectsService{Projects: projects, Orgs: st, Logger: s.cfg.Logger},
		opts...)
	kilnapi.MountLoginAdmin(mux, &kilnapi.LoginAdminService{Logins: logins, Logger: s.cfg.Logger}, opts...)
	(&kilnapi.LoginPage{Logins: logins, Authn: authn, Logger: s.cfg.Logger}).Mount(mux)
	return logins
}

// publicURL is the base URL users reach the server at: --public-url, else
// http:// and the bound listen address.
func (s *Server) publicURL() string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	scheme := "http://"
	if s.cfg.TLS != TLSDefault {
		scheme = "https://"
	}
	if s.listener != nil {
		return scheme + s.listener.Addr().String()
	}
	return scheme + s.cfg.Addr
}

// checkPublicURL validates --public-url and drops a trailing slash.
func checkPublicURL(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--public-url %q: want http(s)://host[:port][/path], no query or credentials", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}
