package server

import (
	"net/http"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
)

// mountTokens serves kiln.v1.TokenService (`kiln tokens`): token kinds and
// expiry beyond Depot's CreateToken.
func (s *Server) mountTokens(mux *http.ServeMux, authn *auth.Authenticator, projects *project.Service) {
	mux.Handle(kilnv1connect.NewTokenServiceHandler(&kilnapi.TokenService{Projects: projects, Logger: s.cfg.Logger},
		s.apiInterceptors(authn), connect.WithReadMaxBytes(1<<20)))
}
