package server

import (
	"net/http"

	"connectrpc.com/connect"

	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
)

// mountProjectNetwork serves kiln.v1.ProjectNetworkService: the
// operator's per-project egress allow-list.
func (s *Server) mountProjectNetwork(mux *http.ServeMux, authn *auth.Authenticator, projects *project.Service) {
	kilnapi.MountProjectNetwork(mux, &kilnapi.ProjectNetworkService{Projects: projects, Logger: s.cfg.Logger},
		s.apiInterceptors(authn), connect.WithReadMaxBytes(64<<10))
}
