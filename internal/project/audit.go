package project

import (
	"context"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
)

// auditToken records that p created or deleted token t. The event names
// the token by id and kind, never its secret or hash.
func (s *Service) auditToken(ctx context.Context, kind string, p auth.Principal, t auth.Token) {
	detail := map[string]string{"token_id": t.ID, "token_kind": string(t.Kind)}
	if t.Description != "" {
		detail["description"] = t.Description
	}
	if !t.ExpiresAt.IsZero() {
		detail["expires_at"] = t.ExpiresAt.UTC().Format("2006-01-02T15:04:05Z07:00")
	}
	s.Audit.Record(ctx, audit.Event{Kind: kind, OrgID: t.OrgID, ProjectID: t.ProjectID, Actor: p.TokenID, Detail: detail})
}
