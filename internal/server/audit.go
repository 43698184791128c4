package server

import (
	"context"
	"errors"
	"net/http"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
)

// mountAudit serves kiln.v1.AuditService (`kiln audit`).
func (s *Server) mountAudit(mux *http.ServeMux, authn *auth.Authenticator) {
	mux.Handle(kilnv1connect.NewAuditServiceHandler(&kilnapi.AuditService{Audit: s.audit, Logger: s.cfg.Logger},
		s.apiInterceptors(authn), connect.WithReadMaxBytes(1<<20)))
}

// auditDenied reports a refused Connect call (Unauthenticated or
// PermissionDenied, whether the token was refused or a handler refused the
// caller) through the authenticator's audit hook, which the server points
// at the audit log. ctx carries the principal when the token was valid.
//
// Recorded: the procedure (one of the server's own, never a client-chosen
// string: unknown paths do not reach an interceptor), the code, the error
// message the caller got, and the peer address. Never the token.
//
// Not recorded: NotFound answers, although kiln also uses them to hide
// other projects' resources: at this edge they are indistinguishable from
// real misses.
func auditDenied(ctx context.Context, authn *auth.Authenticator, procedure, peer string, err error) {
	if authn.Audit == nil || err == nil {
		return
	}
	code := connect.CodeOf(err)
	if code != connect.CodeUnauthenticated && code != connect.CodePermissionDenied {
		return
	}
	reason := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		reason = ce.Message()
	}
	attrs := []any{"procedure", procedure, "code", code.String(), "reason", reason, "peer", peer}
	if p, ok := auth.FromContext(ctx); ok {
		attrs = append(attrs, "org_id", p.OrgID, "actor", p.TokenID, "token_kind", p.Kind)
		if p.ProjectID != "" {
			attrs = append(attrs, "project_id", p.ProjectID)
		}
		if p.BuildID != "" {
			attrs = append(attrs, "build_id", p.BuildID)
		}
	}
	authn.Audit(ctx, audit.KindDenied, attrs...)
}
