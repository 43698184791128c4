package kiln

import (
	"context"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/project"
)

// ProjectNetworkService serves kiln.v1.ProjectNetworkService: a project's
// egress allow-list (`kiln projects update --egress-allow`).
type ProjectNetworkService struct {
	Projects *project.Service
	Logger   *slog.Logger
}

var _ kilnv1connect.ProjectNetworkServiceHandler = (*ProjectNetworkService)(nil)

// MountProjectNetwork registers kiln.v1.ProjectNetworkService on mux.
func MountProjectNetwork(mux *http.ServeMux, svc *ProjectNetworkService, opts ...connect.HandlerOption) {
	mux.Handle(kilnv1connect.NewProjectNetworkServiceHandler(svc, opts...))
}

func projectNetworkPB(p project.Project) *kilnv1.ProjectNetwork {
	return &kilnv1.ProjectNetwork{ProjectId: p.ID, EgressAllow: p.EgressAllow}
}

func (s *ProjectNetworkService) GetProjectNetwork(ctx context.Context, req *connect.Request[kilnv1.GetProjectNetworkRequest]) (*connect.Response[kilnv1.GetProjectNetworkResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	proj, err := s.Projects.EgressAllow(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&kilnv1.GetProjectNetworkResponse{Network: projectNetworkPB(proj)}), nil
}

func (s *ProjectNetworkService) SetEgressAllow(ctx context.Context, req *connect.Request[kilnv1.SetEgressAllowRequest]) (*connect.Response[kilnv1.SetEgressAllowResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	proj, err := s.Projects.SetEgressAllow(ctx, p, req.Msg.ProjectId, req.Msg.EgressAllow)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	s.Logger.InfoContext(ctx, "egress allow-list set", "project_id", proj.ID, "egress_allow", proj.EgressAllow)
	return connect.NewResponse(&kilnv1.SetEgressAllowResponse{Network: projectNetworkPB(proj)}), nil
}
