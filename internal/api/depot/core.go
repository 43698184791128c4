package depot

import (
	"context"
	"log/slog"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/project"
)

// ProjectService serves depot.core.v1.ProjectService.
type ProjectService struct {
	Projects *project.Service
	Logger   *slog.Logger
}

func projectPB(p project.Project) *corev1.Project {
	return &corev1.Project{
		ProjectId:      p.ID,
		OrganizationId: p.OrgID,
		Name:           p.Name,
		RegionId:       p.RegionID,
		CreatedAt:      timestamppb.New(p.CreatedAt),
		CachePolicy:    &corev1.CachePolicy{KeepGb: p.KeepGB, KeepDays: p.KeepDays},
		Hardware:       corev1.Hardware(p.Hardware),
	}
}

func applyPolicy(p *project.Project, cp *corev1.CachePolicy) {
	if cp == nil {
		return
	}
	p.KeepGB, p.KeepDays = cp.KeepGb, cp.KeepDays
	if cp.KeepBytes != nil && cp.KeepGb == 0 {
		p.KeepGB = int32((*cp.KeepBytes + (1<<30 - 1)) >> 30)
	}
}

func (s *ProjectService) err(ctx context.Context, err error) error {
	return ToConnect(ctx, s.Logger, err)
}

func (s *ProjectService) ListProjects(ctx context.Context, req *connect.Request[corev1.ListProjectsRequest]) (*connect.Response[corev1.ListProjectsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	projects, err := s.Projects.List(ctx, p)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &corev1.ListProjectsResponse{}
	for _, proj := range projects {
		if req.Msg.RegionId != nil && *req.Msg.RegionId != "" && proj.RegionID != *req.Msg.RegionId {
			continue
		}
		out.Projects = append(out.Projects, projectPB(proj))
	}
	return connect.NewResponse(out), nil
}

func (s *ProjectService) GetProject(ctx context.Context, req *connect.Request[corev1.GetProjectRequest]) (*connect.Response[corev1.GetProjectResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	proj, err := s.Projects.Get(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.GetProjectResponse{Project: projectPB(proj)}), nil
}

func (s *ProjectService) CreateProject(ctx context.Context, req *connect.Request[corev1.CreateProjectRequest]) (*connect.Response[corev1.CreateProjectResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	in := project.Project{Name: req.Msg.Name, OrgID: req.Msg.GetOrganizationId(), RegionID: req.Msg.RegionId, Hardware: int32(req.Msg.GetHardware())}
	applyPolicy(&in, req.Msg.CachePolicy)
	proj, err := s.Projects.Create(ctx, p, in)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.CreateProjectResponse{Project: projectPB(proj)}), nil
}

func (s *ProjectService) UpdateProject(ctx context.Context, req *connect.Request[corev1.UpdateProjectRequest]) (*connect.Response[corev1.UpdateProjectResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	proj, err := s.Projects.Update(ctx, p, m.ProjectId, func(proj *project.Project) {
		if m.Name != nil {
			proj.Name = *m.Name
		}
		if m.RegionId != nil {
			proj.RegionID = *m.RegionId
		}
		if m.Hardware != nil {
			proj.Hardware = int32(*m.Hardware)
		}
		applyPolicy(proj, m.CachePolicy)
	})
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.UpdateProjectResponse{Project: projectPB(proj)}), nil
}

func (s *ProjectService) DeleteProject(ctx context.Context, req *connect.Request[corev1.DeleteProjectRequest]) (*connect.Response[corev1.DeleteProjectResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Projects.Delete(ctx, p, req.Msg.ProjectId); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.DeleteProjectResponse{}), nil
}

func (s *ProjectService) ResetProject(ctx context.Context, req *connect.Request[corev1.ResetProjectRequest]) (*connect.Response[corev1.ResetProjectResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.Projects.ResetCache(ctx, p, req.Msg.ProjectId); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.ResetProjectResponse{}), nil
}

func (s *ProjectService) ListTokens(ctx context.Context, req *connect.Request[corev1.ListTokensRequest]) (*connect.Response[corev1.ListTokensResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	toks, err := s.Projects.ListTokens(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &corev1.ListTokensResponse{}
	for _, t := range toks {
		out.Tokens = append(out.Tokens, &corev1.ListTokensResponse_Token{TokenId: t.ID, Description: t.Description})
	}
	return connect.NewResponse(out), nil
}

func (s *ProjectService) CreateToken(ctx context.Context, req *connect.Request[corev1.CreateTokenRequest]) (*connect.Response[corev1.CreateTokenResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	t, secret, err := s.Projects.CreateToken(ctx, p, req.Msg.ProjectId, req.Msg.Description, 0)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.CreateTokenResponse{TokenId: t.ID, Secret: secret}), nil
}

func (s *ProjectService) UpdateToken(ctx context.Context, req *connect.Request[corev1.UpdateTokenRequest]) (*connect.Response[corev1.UpdateTokenResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Projects.UpdateToken(ctx, p, req.Msg.TokenId, req.Msg.Description); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.UpdateTokenResponse{}), nil
}

func (s *ProjectService) DeleteToken(ctx context.Context, req *connect.Request[corev1.DeleteTokenRequest]) (*connect.Response[corev1.DeleteTokenResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Projects.DeleteToken(ctx, p, req.Msg.TokenId); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&corev1.DeleteTokenResponse{}), nil
}

// pageBefore decodes a page token: the created_at (unix ms) of the last
// build of the previous page.
func pageBefore(tok string) time.Time {
	var ms int64
	for _, c := range tok {
		if c < '0' || c > '9' || ms > 1<<50 {
			return time.Time{}
		}
		ms = ms*10 + int64(c-'0')
	}
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}
