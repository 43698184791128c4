package depot

import (
	"context"
	"fmt"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Trust policies of depot.core.v1.ProjectService. Depot's schema knows
// GitHub, CircleCI and Buildkite; GitLab policies (kiln's addition, managed
// through kiln.v1.TrustPolicyService) are left out of these lists because
// Depot clients could not represent them.

// trustPolicyPB converts a policy; ok is false for providers Depot's
// schema lacks.
func trustPolicyPB(tp auth.TrustPolicy) (*corev1.TrustPolicy, bool) {
	out := &corev1.TrustPolicy{TrustPolicyId: tp.ID}
	switch tp.Provider {
	case auth.ProviderGitHub:
		out.Provider = &corev1.TrustPolicy_Github{Github: &corev1.TrustPolicy_GitHub{RepositoryOwner: tp.Owner, Repository: tp.Repo}}
	case auth.ProviderCircleCI:
		out.Provider = &corev1.TrustPolicy_Circleci{Circleci: &corev1.TrustPolicy_CircleCI{OrganizationUuid: tp.Owner, ProjectUuid: tp.Repo}}
	case auth.ProviderBuildkite:
		out.Provider = &corev1.TrustPolicy_Buildkite_{Buildkite: &corev1.TrustPolicy_Buildkite{OrganizationSlug: tp.Owner, PipelineSlug: tp.Repo}}
	default:
		return nil, false
	}
	return out, true
}

func (s *ProjectService) ListTrustPolicies(ctx context.Context, req *connect.Request[corev1.ListTrustPoliciesRequest]) (*connect.Response[corev1.ListTrustPoliciesResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	tps, err := s.Projects.ListTrustPolicies(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &corev1.ListTrustPoliciesResponse{}
	for _, tp := range tps {
		if pb, ok := trustPolicyPB(tp); ok {
			out.TrustPolicies = append(out.TrustPolicies, pb)
		}
	}
	return connect.NewResponse(out), nil
}

func (s *ProjectService) AddTrustPolicy(ctx context.Context, req *connect.Request[corev1.AddTrustPolicyRequest]) (*connect.Response[corev1.AddTrustPolicyResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	var in auth.TrustPolicy
	switch pr := req.Msg.Provider.(type) {
	case *corev1.AddTrustPolicyRequest_Github:
		in = auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: pr.Github.GetRepositoryOwner(), Repo: pr.Github.GetRepository()}
	case *corev1.AddTrustPolicyRequest_Circleci:
		in = auth.TrustPolicy{Provider: auth.ProviderCircleCI, Owner: pr.Circleci.GetOrganizationUuid(), Repo: pr.Circleci.GetProjectUuid()}
	case *corev1.AddTrustPolicyRequest_Buildkite:
		in = auth.TrustPolicy{Provider: auth.ProviderBuildkite, Owner: pr.Buildkite.GetOrganizationSlug(), Repo: pr.Buildkite.GetPipelineSlug()}
	default:
		return nil, s.err(ctx, fmt.Errorf("a trust policy needs one of github, circleci or buildkite: %w", errdefs.ErrInvalid))
	}
	tp, err := s.Projects.AddTrustPolicy(ctx, p, req.Msg.ProjectId, in)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	pb, _ := trustPolicyPB(tp)
	s.Logger.InfoContext(ctx, "trust policy added", "project_id", tp.ProjectID, "trust_policy_id", tp.ID, "provider", tp.Provider, "owner", tp.Owner, "repo", tp.Repo)
	return connect.NewResponse(&corev1.AddTrustPolicyResponse{TrustPolicy: pb}), nil
}

func (s *ProjectService) RemoveTrustPolicy(ctx context.Context, req *connect.Request[corev1.RemoveTrustPolicyRequest]) (*connect.Response[corev1.RemoveTrustPolicyResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Projects.RemoveTrustPolicy(ctx, p, req.Msg.ProjectId, req.Msg.TrustPolicyId); err != nil {
		return nil, s.err(ctx, err)
	}
	s.Logger.InfoContext(ctx, "trust policy removed", "project_id", req.Msg.ProjectId, "trust_policy_id", req.Msg.TrustPolicyId)
	return connect.NewResponse(&corev1.RemoveTrustPolicyResponse{}), nil
}
