package store

import (
	"context"

	"github.com/kiln-dev/kiln/internal/auth"
)

// TrustPolicies is the part of the Store that keeps trust policies.
type TrustPolicies interface {
	// CreateTrustPolicy fails with ErrAlreadyExists for a second policy
	// with the same project, provider, owner and repo.
	CreateTrustPolicy(ctx context.Context, tp auth.TrustPolicy) error
	GetTrustPolicy(ctx context.Context, id string) (auth.TrustPolicy, error)
	// ListTrustPolicies lists one project's policies, oldest first.
	ListTrustPolicies(ctx context.Context, projectID string) ([]auth.TrustPolicy, error)
	// MatchTrustPolicies lists the policies of every project and
	// organization for provider whose Owner equals owner ignoring ASCII
	// case, oldest first. The caller compares Repo.
	MatchTrustPolicies(ctx context.Context, provider, owner string) ([]auth.TrustPolicy, error)
	DeleteTrustPolicy(ctx context.Context, id string) error
}
