package build

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// A build a CI job started is bounded by the job (auth/life.go): it
// records the trust policies of its project that admitted the job
// (Build.PolicyIDs) and when the job's token expires (Build.Until). Its
// build token expires then, its client certificates no later, the gateway
// cuts its builder connections then (BuilderAccess), and the reaper
// cancels it; removing one of its policies ends it at once
// (EndAdmittedBy) and the store deletes its tokens.

// admittedBy is what a build p starts in project records: the policies of
// the project that admitted p (none for kiln's own tokens).
func (s *Service) admittedBy(ctx context.Context, p auth.Principal, projectID string) ([]string, error) {
	if !p.Bounded() {
		return nil, nil
	}
	if p.Expired(time.Now()) { // within the verifier's clock skew
		return nil, fmt.Errorf("the CI job's token expired at %s; get a fresh one: %w", p.ExpiresAt.UTC().Format(time.RFC3339), errdefs.ErrUnauthenticated)
	}
	tps, err := s.store.ListTrustPolicies(ctx, projectID)
	if err != nil {
		return nil, err
	}
	return p.PoliciesIn(tps)
}

// jobExpired is the error for a CI job's build after the job's token
// expired.
func jobExpired(b Build) error {
	return fmt.Errorf("build %q: the CI job's token that started it expired at %s; nothing a job obtains outlives its token (start a new build with a fresh token): %w",
		b.ID, b.Until.UTC().Format(time.RFC3339), errdefs.ErrExpired)
}

// jobAccess is BuilderAccess's check of a CI job's build: refused once the
// job's token expired or one of the policies that admitted it is gone.
func (s *Service) jobAccess(ctx context.Context, b Build) error {
	if !b.Until.IsZero() && !time.Now().Before(b.Until) {
		return jobExpired(b)
	}
	if len(b.PolicyIDs) == 0 {
		return nil
	}
	ok, err := s.store.TrustPoliciesExist(ctx, b.PolicyIDs)
	if err != nil {
		return fmt.Errorf("look up trust policies: %v: %w", err, errdefs.ErrUnavailable)
	}
	if !ok {
		return fmt.Errorf("build %q: the trust policy that admitted its CI job was removed: %w", b.ID, errdefs.ErrPermission)
	}
	return nil
}

// EndAdmittedBy cancels the queued and running builds of CI jobs that
// policyID admitted, after the policy was removed: their builder
// connections are cut and their leases released (the store deleted their
// tokens). A source build kiln's runner is running fails on its cut
// connection and its end changes nothing; a queued one is never started
// (StartSource).
func (s *Service) EndAdmittedBy(ctx context.Context, policyID string) error {
	const why = "canceled: the trust policy that admitted its CI job was removed"
	for _, st := range []Status{Queued, Running} {
		builds, err := s.store.ListBuildsByStatus(ctx, st)
		if err != nil {
			return err
		}
		for _, b := range builds {
			if !slices.Contains(b.PolicyIDs, policyID) {
				continue
			}
			if b.IsSource() {
				_, err = s.FinishSource(ctx, b.ID, Outcome{Result: Result{Status: Canceled, Error: why}})
			} else {
				_, err = s.end(ctx, b.ID, Result{Status: Canceled, Error: why})
			}
			if err != nil {
				return err
			}
			s.logger.InfoContext(ctx, "build canceled: its trust policy was removed", "build_id", b.ID, "project_id", b.ProjectID, "trust_policy_id", policyID)
		}
	}
	return nil
}
