package project

import (
	"context"
	"fmt"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Organization returns the caller's organization: every principal belongs
// to exactly one. Build tokens, which reach only their build, may not ask.
func (s *Service) Organization(ctx context.Context, p auth.Principal) (Organization, error) {
	if p.Kind == auth.TokenBuild {
		return Organization{}, fmt.Errorf("build tokens reach only their build: %w", errdefs.ErrPermission)
	}
	return s.Store.GetOrganization(ctx, p.OrgID)
}
