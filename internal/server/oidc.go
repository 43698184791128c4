package server

import (
	"context"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/project"
)

// setupOIDC gives the authenticator the OIDC verifier of cfg.OIDC (CI jobs
// authenticating with their provider's token against trust policies) and
// writes every event of its Audit hook to the log (trust-policy matches,
// OIDC denials, and whatever else reports through the hook). An Audit hook
// set before (the audit log) is kept and called after the log line.
func (s *Server) setupOIDC(authn *auth.Authenticator) error {
	v, err := oidc.NewVerifier(s.cfg.OIDC)
	if err != nil {
		return fmt.Errorf("OIDC: %w", err)
	}
	authn.OIDC = v
	logger, next := s.cfg.Logger, authn.Audit
	authn.Audit = func(ctx context.Context, event string, attrs ...any) {
		logger.InfoContext(ctx, event, attrs...)
		if next != nil {
			next(ctx, event, attrs...)
		}
	}
	return nil
}

// mountTrustPolicies serves kiln.v1.TrustPolicyService.
func (s *Server) mountTrustPolicies(mux *http.ServeMux, authn *auth.Authenticator, projects *project.Service) {
	opts := []connect.HandlerOption{connect.WithInterceptors(authInterceptor(authn, s.cfg.Logger)), connect.WithReadMaxBytes(1 << 20)}
	kilnapi.MountTrustPolicies(mux, &kilnapi.TrustPolicyService{Projects: projects, Logger: s.cfg.Logger}, opts...)
}
