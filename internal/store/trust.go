package store

import (
	"context"
	"time"
)

// Trust-policy providers: the CI systems whose OIDC tokens kiln accepts.
const (
	ProviderGitHub    = "github"
	ProviderCircleCI  = "circleci"
	ProviderBuildkite = "buildkite"
	ProviderGitLab    = "gitlab"
)

// TrustPolicy lets CI jobs of one repository or pipeline build in one
// project with their provider's OIDC token instead of a stored secret.
// Owner and Repo are the two claims matched, per provider:
//
//	provider   Owner (claim)                       Repo (claim)
//	github     repository_owner                    repository: "repo" or "owner/repo"
//	circleci   oidc.circleci.com/org-id (UUID)     oidc.circleci.com/project-id (UUID)
//	buildkite  organization_slug                   pipeline_slug
//	gitlab     namespace_path ("group/sub")        project_path ("group/sub/project")
//
// Values are kept as the administrator entered them (validated by
// internal/project); matching is case-insensitive.
type TrustPolicy struct {
	ID        string
	ProjectID string
	OrgID     string
	Provider  string
	Owner     string
	Repo      string
	CreatedAt time.Time
}

// TrustPolicies is the part of the Store that keeps trust policies.
type TrustPolicies interface {
	// CreateTrustPolicy fails with ErrAlreadyExists for a second policy
	// with the same project, provider, owner and repo.
	CreateTrustPolicy(ctx context.Context, tp TrustPolicy) error
	GetTrustPolicy(ctx context.Context, id string) (TrustPolicy, error)
	// ListTrustPolicies lists one project's policies, oldest first.
	ListTrustPolicies(ctx context.Context, projectID string) ([]TrustPolicy, error)
	// MatchTrustPolicies lists the policies of every project and
	// organization for provider whose Owner equals owner ignoring ASCII
	// case, oldest first. The caller compares Repo.
	MatchTrustPolicies(ctx context.Context, provider, owner string) ([]TrustPolicy, error)
	DeleteTrustPolicy(ctx context.Context, id string) error
}
