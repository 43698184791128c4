package kiln

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// TrustPolicyService serves kiln.v1.TrustPolicyService: trust policies of
// all four providers (`kiln trust-policies`).
type TrustPolicyService struct {
	Projects *project.Service
	Logger   *slog.Logger
}

var _ kilnv1connect.TrustPolicyServiceHandler = (*TrustPolicyService)(nil)

// MountTrustPolicies registers kiln.v1.TrustPolicyService on mux.
func MountTrustPolicies(mux *http.ServeMux, svc *TrustPolicyService, opts ...connect.HandlerOption) {
	mux.Handle(kilnv1connect.NewTrustPolicyServiceHandler(svc, opts...))
}

// TrustPolicyPB converts a stored policy.
func TrustPolicyPB(tp auth.TrustPolicy) *kilnv1.TrustPolicy {
	out := &kilnv1.TrustPolicy{TrustPolicyId: tp.ID, ProjectId: tp.ProjectID, CreatedAt: timestamppb.New(tp.CreatedAt),
		Role: kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_BUILD}
	switch tp.Provider {
	case auth.ProviderGitHub:
		out.Provider = &kilnv1.TrustPolicy_Github{Github: &kilnv1.TrustPolicy_GitHub{RepositoryOwner: tp.Owner, Repository: tp.Repo,
			RepositoryId: tp.RepoID, RepositoryOwnerId: tp.OwnerID}}
	case auth.ProviderCircleCI:
		out.Provider = &kilnv1.TrustPolicy_Circleci{Circleci: &kilnv1.TrustPolicy_CircleCI{OrganizationUuid: tp.Owner, ProjectUuid: tp.Repo}}
	case auth.ProviderBuildkite:
		out.Provider = &kilnv1.TrustPolicy_Buildkite_{Buildkite: &kilnv1.TrustPolicy_Buildkite{OrganizationSlug: tp.Owner, PipelineSlug: tp.Repo}}
	case auth.ProviderGitLab:
		out.Provider = &kilnv1.TrustPolicy_Gitlab{Gitlab: &kilnv1.TrustPolicy_GitLab{NamespacePath: tp.Owner, ProjectPath: tp.Repo,
			ProjectId: tp.RepoID, NamespaceId: tp.OwnerID}}
	}
	if c := (kilnv1.TrustPolicy_Conditions{Ref: tp.Ref, RefType: tp.RefType, Event: tp.Event, Environment: tp.Environment,
		Workflow: tp.Workflow}); c.Ref+c.RefType+c.Event+c.Environment+c.Workflow != "" {
		out.Conditions = &c
	}
	if tp.Role == auth.RoleProject {
		out.Role = kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_PROJECT
	}
	return out
}

// trustRole is the stored form of a request's role.
func trustRole(r kilnv1.TrustPolicyRole) (string, error) {
	switch r {
	case kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_UNSPECIFIED, kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_BUILD:
		return "", nil
	case kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_PROJECT:
		return auth.RoleProject, nil
	}
	return "", fmt.Errorf("unknown trust policy role %d: want BUILD or PROJECT: %w", r, errdefs.ErrInvalid)
}

func (s *TrustPolicyService) ListTrustPolicies(ctx context.Context, req *connect.Request[kilnv1.ListTrustPoliciesRequest]) (*connect.Response[kilnv1.ListTrustPoliciesResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	tps, err := s.Projects.ListTrustPolicies(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	out := &kilnv1.ListTrustPoliciesResponse{}
	for _, tp := range tps {
		out.TrustPolicies = append(out.TrustPolicies, TrustPolicyPB(tp))
	}
	return connect.NewResponse(out), nil
}

func (s *TrustPolicyService) AddTrustPolicy(ctx context.Context, req *connect.Request[kilnv1.AddTrustPolicyRequest]) (*connect.Response[kilnv1.AddTrustPolicyResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	var in auth.TrustPolicy
	switch pr := req.Msg.Provider.(type) {
	case *kilnv1.AddTrustPolicyRequest_Github:
		in = auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: pr.Github.GetRepositoryOwner(), Repo: pr.Github.GetRepository(),
			RepoID: pr.Github.GetRepositoryId(), OwnerID: pr.Github.GetRepositoryOwnerId()}
	case *kilnv1.AddTrustPolicyRequest_Circleci:
		in = auth.TrustPolicy{Provider: auth.ProviderCircleCI, Owner: pr.Circleci.GetOrganizationUuid(), Repo: pr.Circleci.GetProjectUuid()}
	case *kilnv1.AddTrustPolicyRequest_Buildkite:
		in = auth.TrustPolicy{Provider: auth.ProviderBuildkite, Owner: pr.Buildkite.GetOrganizationSlug(), Repo: pr.Buildkite.GetPipelineSlug()}
	case *kilnv1.AddTrustPolicyRequest_Gitlab:
		in = auth.TrustPolicy{Provider: auth.ProviderGitLab, Owner: pr.Gitlab.GetNamespacePath(), Repo: pr.Gitlab.GetProjectPath(),
			RepoID: pr.Gitlab.GetProjectId(), OwnerID: pr.Gitlab.GetNamespaceId()}
	default:
		return nil, depot.ToConnect(ctx, s.Logger, fmt.Errorf("a trust policy needs one of github, circleci, buildkite or gitlab: %w", errdefs.ErrInvalid))
	}
	if c := req.Msg.Conditions; c != nil {
		in.Ref, in.RefType, in.Event, in.Environment, in.Workflow = c.Ref, c.RefType, c.Event, c.Environment, c.Workflow
	}
	if in.Role, err = trustRole(req.Msg.Role); err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	tp, err := s.Projects.AddTrustPolicy(ctx, p, req.Msg.ProjectId, in)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	s.Logger.InfoContext(ctx, "trust policy added", "project_id", tp.ProjectID, "trust_policy_id", tp.ID, "provider", tp.Provider, "owner", tp.Owner, "repo", tp.Repo,
		"repo_id", tp.RepoID, "owner_id", tp.OwnerID, "ref", tp.Ref, "ref_type", tp.RefType, "event", tp.Event,
		"environment", tp.Environment, "workflow", tp.Workflow, "role", tp.Role)
	return connect.NewResponse(&kilnv1.AddTrustPolicyResponse{TrustPolicy: TrustPolicyPB(tp)}), nil
}

func (s *TrustPolicyService) RemoveTrustPolicy(ctx context.Context, req *connect.Request[kilnv1.RemoveTrustPolicyRequest]) (*connect.Response[kilnv1.RemoveTrustPolicyResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Projects.RemoveTrustPolicy(ctx, p, req.Msg.ProjectId, req.Msg.TrustPolicyId); err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	s.Logger.InfoContext(ctx, "trust policy removed", "project_id", req.Msg.ProjectId, "trust_policy_id", req.Msg.TrustPolicyId)
	return connect.NewResponse(&kilnv1.RemoveTrustPolicyResponse{}), nil
}
