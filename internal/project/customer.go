package project

import (
	"context"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// ValidCustomerID checks a platform's customer id: 1-128 characters of
// letters, digits and . _ - : @.
func ValidCustomerID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("customer id must be 1-128 characters: %w", errdefs.ErrInvalid)
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' || r == ':' || r == '@'
		if !ok {
			return fmt.Errorf("customer id %q: only letters, digits and . _ - : @ are allowed: %w", clip(id), errdefs.ErrInvalid)
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// ForBuild returns the project a principal builds in, named by its id or
// by a customer id. An organization token gets the customer's project,
// created on first use (concurrent first uses create one); other tokens
// only reach projects they already may build in, so a customer's project
// token cannot name another customer. With neither id, a project token
// builds in its own project.
func (s *Service) ForBuild(ctx context.Context, p auth.Principal, projectID, customerID string) (Project, error) {
	if p.Kind == auth.TokenBuild {
		return Project{}, fmt.Errorf("build tokens cannot start builds: %w", errdefs.ErrPermission)
	}
	switch {
	case projectID != "" && customerID != "":
		return Project{}, fmt.Errorf("give a project id or a customer id, not both: %w", errdefs.ErrInvalid)
	case customerID != "":
		return s.customerProject(ctx, p, customerID)
	case projectID == "" && p.Kind == auth.TokenProject:
		projectID = p.ProjectID
	case projectID == "":
		return Project{}, fmt.Errorf("no project: give a project id or a customer id: %w", errdefs.ErrInvalid)
	}
	return s.Get(ctx, p, projectID)
}

func (s *Service) customerProject(ctx context.Context, p auth.Principal, customerID string) (Project, error) {
	if err := ValidCustomerID(customerID); err != nil {
		return Project{}, err
	}
	notFound := fmt.Errorf("customer %q: %w", customerID, errdefs.ErrNotFound)
	if !p.IsOrg() {
		// Project and OIDC principals reach their own projects only.
		ids := p.ProjectIDs
		if p.Kind == auth.TokenProject {
			ids = []string{p.ProjectID}
		}
		for _, id := range ids {
			proj, err := s.Store.GetProject(ctx, id)
			if err == nil && proj.CustomerID == customerID && p.CanBuild(proj) {
				return proj, nil
			}
		}
		return Project{}, notFound
	}
	proj, created, err := s.Store.GetOrCreateCustomerProject(ctx, Project{ID: NewID(), OrgID: p.OrgID,
		Name: "customer " + customerID, CustomerID: customerID, CreatedAt: time.Now().UTC()})
	if err != nil {
		return Project{}, err
	}
	if created {
		s.Audit.Record(ctx, audit.Event{Kind: audit.KindCustomerProjectCreated, OrgID: proj.OrgID, ProjectID: proj.ID, Actor: p.TokenID,
			Detail: map[string]string{"customer_id": customerID}})
	}
	return proj, nil
}
