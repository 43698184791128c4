package project

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
)

// Organization owns projects and org-wide tokens.
type Organization struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// Project is the unit of isolation: its own builders, cache and tokens.
type Project struct {
	ID       string
	OrgID    string
	Name     string
	RegionID string
	Hardware int32
	KeepGB   int32 // cache size cap in GB; 0 = the server default
	KeepDays int32 // cache age cap in days; 0 = the server default
	// CustomerID is a platform's own id for the customer this project
	// builds for (source builds); unique in the organization, "" for none.
	CustomerID string
	// EgressAllow are the CIDRs (canonical strings: "10.9.0.0/16",
	// "fd00:9::/64") the operator lets this project's RUN steps reach
	// although kiln's egress policy blocks private ranges; nil for none.
	// Only SetProjectEgressAllow changes it: UpdateProject leaves it alone,
	// so a rename racing with a change of the list cannot undo it.
	EgressAllow []string
	CreatedAt   time.Time
}

// Scope places the project for authorization (auth.Principal's checks).
func (p Project) Scope() auth.Scope { return auth.Scope{OrgID: p.OrgID, ProjectID: p.ID} }

// Store is what the project service needs of kiln's store
// (internal/store implements it).
type Store interface {
	BootstrapStore

	GetOrganization(ctx context.Context, id string) (Organization, error)

	CreateProject(ctx context.Context, p Project) error
	GetProject(ctx context.Context, id string) (Project, error)
	ListProjects(ctx context.Context, orgID string) ([]Project, error)
	// GetOrCreateCustomerProject returns the organization's project for a
	// customer id, creating p (whose OrgID and CustomerID must be set) if
	// there is none. Concurrent calls for one customer create one project.
	GetOrCreateCustomerProject(ctx context.Context, p Project) (Project, bool, error)
	// UpdateProject writes p's name, region, hardware and cache policy
	// (not its customer id or egress allow-list).
	UpdateProject(ctx context.Context, p Project) error
	// SetProjectEgressAllow replaces the project's egress allow-list
	// (canonical CIDRs, validated by the caller); nil or empty clears it.
	SetProjectEgressAllow(ctx context.Context, id string, cidrs []string) error
	// DeleteProject removes the project with its tokens, builds, steps and
	// trust policies.
	DeleteProject(ctx context.Context, id string) error

	GetToken(ctx context.Context, id string) (auth.Token, error)
	// ListTokens lists the non-build tokens of a project ("" lists org tokens).
	ListTokens(ctx context.Context, orgID, projectID string) ([]auth.Token, error)
	UpdateToken(ctx context.Context, id, description string) error
	DeleteToken(ctx context.Context, id string) error

	// CreateTrustPolicy fails with ErrAlreadyExists for a second policy
	// with the same project, provider, owner and repo.
	CreateTrustPolicy(ctx context.Context, tp auth.TrustPolicy) error
	GetTrustPolicy(ctx context.Context, id string) (auth.TrustPolicy, error)
	// ListTrustPolicies lists one project's policies, oldest first.
	ListTrustPolicies(ctx context.Context, projectID string) ([]auth.TrustPolicy, error)
	DeleteTrustPolicy(ctx context.Context, id string) error
	// RevokeTrustPolicy deletes a policy and, with it, every token that
	// records it (what the CI jobs it admitted obtained; auth/life.go).
	RevokeTrustPolicy(ctx context.Context, id string) error
}

// BootstrapStore is what Bootstrap needs of kiln's store.
type BootstrapStore interface {
	CreateOrganization(ctx context.Context, o Organization) error
	ListOrganizations(ctx context.Context) ([]Organization, error)
	CreateToken(ctx context.Context, t auth.Token) error
}
